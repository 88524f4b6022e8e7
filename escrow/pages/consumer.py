"""The consumer's own pages (mobile-first, 简体中文 by default): cards, what of them is protected, services to confirm
or dispute, the history, refunds and closure statements.

Each page shows what the API answers: it calls the API's own handlers with the signed-in consumer, so a figure
on a page and in the API can't differ.
"""

import re
import secrets
from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.response import Redirect, Template
from pydantic import ValidationError
from sqlalchemy import text

from escrow.auth.guards import requires
from escrow.auth.tokens import Unauthenticated
from escrow.cards import endpoints as card_api
from escrow.closures import endpoints as closure_api
from escrow.closures.schemas import TakeoverAnswer
from escrow.complaints import endpoints as complaint_api
from escrow.complaints.schemas import ComplaintFiling
from escrow.consumers import endpoints as consumer_api
from escrow.consumers.schemas import ConsumerTokenRequest, SignInCodeRequest
from escrow.consumptions import endpoints as consumption_api
from escrow.consumptions.schemas import Dispute
from escrow.deps import DbSession, KeyringDep, PrincipalDep, SettingsDep
from escrow.errors import EscrowError, FieldInvalid, pydantic_field_errors
from escrow.kit.money import Money
from escrow.kit.params import ID_MAX_LENGTH, ID_PATTERN, path_id
from escrow.models.complaint import COMPLAINT_CATEGORIES
from escrow.pages import i18n
from escrow.pages.session import session_cookie, sign_out
from escrow.refunds import endpoints as refund_api
from escrow.refunds.schemas import RefundRequest

CONSUMER = [requires("consumer")]
PAGE = {"include_in_schema": False, "guards": CONSUMER}
FORM = {**PAGE, "opt": {"page_form": True}}


MAX_FIELD = 500


async def read_form(request: Request, ids: tuple[str, ...] = ()) -> dict[str, str]:
    """A form's fields as text, checked as the API's edge checks JSON: no NUL (PostgreSQL text can't hold it), at
    most MAX_FIELD characters, and the fields named in ``ids`` shaped as our ids."""
    values = {name: str(value).strip() for name, value in (await request.form()).items()}
    for name, value in values.items():
        if "\x00" in value:
            raise FieldInvalid(name, "must not contain the NUL character", rule="no_nul")
        if len(value) > MAX_FIELD:
            raise FieldInvalid(name, f"must be at most {MAX_FIELD} characters", rule="string_too_long")
    for name in ids:
        if not re.fullmatch(ID_PATTERN, values.get(name, "")) or len(values[name]) > ID_MAX_LENGTH:
            raise FieldInvalid(name, "is not an id (such as card_01J…)", rule="pattern")
    return values


def context(request: Request, **values: Any) -> dict[str, Any]:
    lang = i18n.language(request)
    return {
        "t": i18n.words(lang),
        "status_of": i18n.status_words(lang),
        "lang": lang,
        "other_lang": "en" if lang == "zh" else "zh",
        "form_key": secrets.token_urlsafe(18),  # this rendering's Idempotency-Key: a resubmission is a replay
        **values,
    }


async def _names(db_session: Any, card_ids: list[str]) -> dict[str, tuple[str, str]]:
    rows = await db_session.execute(
        text(
            "SELECT c.id, m.name AS merchant, p.name AS plan FROM cards c JOIN merchants m ON m.id = c.merchant_id"
            " JOIN plans p ON p.id = c.plan_id WHERE c.id = ANY(:ids)"
        ),
        {"ids": card_ids},
    )
    return {row.id: (row.merchant, row.plan) for row in rows}


SESSION_SECONDS = 30 * 24 * 3600  # a consumer stays signed in on the phone for a month, or until signing out


@get("/app/sign-in", include_in_schema=False)
async def sign_in_page(request: Request) -> Template:
    return Template("consumer/sign_in.html", context=context(request))


@post("/app/sign-in/code", include_in_schema=False, status_code=200, opt={"page_form": True})
async def send_code_page(
    request: Request, db_session: DbSession, settings: SettingsDep, keyring: KeyringDep
) -> Template:
    """Sends the code by SMS, exactly as POST /v1/consumer-codes does (same limits, same answer for any phone)."""
    form = await read_form(request)
    phone = str(form.get("phone") or "")
    await consumer_api.send_sign_in_code.fn(
        data=SignInCodeRequest(phone=phone), request=request, db_session=db_session, settings=settings, keyring=keyring
    )
    return Template("consumer/enter_code.html", context=context(request, phone=phone))


@post(
    "/app/sign-in",
    include_in_schema=False,
    status_code=200,
    # like POST /v1/consumer-tokens: the single-use code is the guard, and the answer (a session) is never stored
    opt={"idempotent": False, "auth_attempt": True, "page_form": True},
)
async def sign_in(request: Request, db_session: DbSession, settings: SettingsDep, keyring: KeyringDep) -> Response:
    form = await read_form(request)
    try:
        issued = await consumer_api.sign_in_consumer.fn(
            data=ConsumerTokenRequest(phone=str(form.get("phone") or ""), code=str(form.get("code") or "")),
            request=request,
            db_session=db_session,
            settings=settings,
            keyring=keyring,
        )
    except Unauthenticated as exc:  # a wrong code is said on the form, not answered with the sign-in page again
        raise FieldInvalid("code", exc.detail, rule=exc.code) from exc
    response = Response(content="", status_code=200, headers={"HX-Redirect": "/app/cards"})
    response.set_cookie(session_cookie(keyring, issued.token, max_age=SESSION_SECONDS))
    return response


@get("/app", include_in_schema=False)
async def home() -> Redirect:
    return Redirect("/app/cards")


@get("/app/cards", **PAGE)
async def cards_page(request: Request, db_session: DbSession, principal: PrincipalDep) -> Template:
    page = await card_api.my_cards.fn(db_session=db_session, principal=principal, status=None, cursor=None, limit=200)
    details = [
        await card_api.get_card.fn(card_id=card.id, db_session=db_session, principal=principal) for card in page.items
    ]
    names = await _names(db_session, [c.id for c in details])
    return Template("consumer/cards.html", context=context(request, cards=details, names=names))


@get("/app/cards/{card_id:str}", **PAGE)
async def card_page(
    request: Request, card_id: Annotated[str, path_id("card")], db_session: DbSession, principal: PrincipalDep
) -> Template:
    card = await card_api.get_card.fn(card_id=card_id, db_session=db_session, principal=principal)
    history = await card_api.card_history.fn(
        card_id=card_id, db_session=db_session, principal=principal, cursor=None, limit=50
    )
    refunds = [r for r in await _my_refunds(db_session, request, principal) if r.card_id == card_id]
    names = await _names(db_session, [card_id])
    takeover = await _takeover_offer(db_session, card.merchant_id, card_id)
    return Template(
        "consumer/card.html",
        context=context(request, card=card, history=history.items, refunds=refunds, names=names, takeover=takeover),
    )


async def _takeover_offer(db_session: Any, merchant_id: str, card_id: str) -> Any:
    """The takeover proposed for the card's closing merchant, open until its deadline, with any answer given."""
    row = await db_session.execute(
        text(
            "SELECT c.takeover_deadline AS deadline, s.name AS successor, d.decision"
            " FROM closures c JOIN merchants s ON s.id = c.successor_merchant_id"
            " LEFT JOIN takeover_decisions d ON d.closure_id = c.id AND d.card_id = :card"
            " WHERE c.merchant_id = :merchant AND c.status IN ('announced', 'frozen') AND c.takeover_deadline > now()"
        ),
        {"merchant": merchant_id, "card": card_id},
    )
    return row.first()


@post("/app/cards/{card_id:str}/takeover", status_code=200, **FORM)
async def answer_takeover_page(
    request: Request, card_id: Annotated[str, path_id("card")], db_session: DbSession, principal: PrincipalDep
) -> Response:
    form = await read_form(request)
    await closure_api.answer_takeover.fn(
        card_id=card_id,
        data=TakeoverAnswer(decision=str(form.get("decision") or "")),
        db_session=db_session,
        principal=principal,
    )
    return Response(content="", status_code=200, headers={"HX-Redirect": f"/app/cards/{card_id}"})


async def _my_refunds(db_session: Any, request: Request, principal: Any) -> list[Any]:
    return await refund_api.list_refunds.fn(
        db_session=db_session,
        settings=request.app.state.settings,
        principal=principal,
        status=None,
        overdue=False,
        limit=200,
    )


@get("/app/cards/{card_id:str}/presence", **PAGE)
async def presence_panel(
    request: Request,
    card_id: Annotated[str, path_id("card")],
    db_session: DbSession,
    principal: PrincipalDep,
    settings: SettingsDep,
    keyring: KeyringDep,
) -> Template:
    """The card's presence code and its QR, refreshed by the page every half minute."""
    code = await card_api.presence_code.fn(
        card_id=card_id, db_session=db_session, principal=principal, settings=settings, keyring=keyring
    )
    return Template("consumer/presence.html", context=context(request, code=code, card_id=card_id))


@post("/app/services/{consumption_id:str}/confirm", status_code=200, **FORM)
async def confirm_service(
    request: Request,
    consumption_id: Annotated[str, path_id("consumption")],
    db_session: DbSession,
    principal: PrincipalDep,
) -> Template:
    done = await consumption_api.confirm_consumption.fn(
        consumption_id=consumption_id, db_session=db_session, principal=principal
    )
    return Template("consumer/service_done.html", context=context(request, service=done))


@post("/app/services/{consumption_id:str}/dispute", status_code=200, **FORM)
async def dispute_service(
    request: Request,
    consumption_id: Annotated[str, path_id("consumption")],
    db_session: DbSession,
    principal: PrincipalDep,
) -> Template:
    form = await read_form(request)
    reason = str(form.get("reason") or "").strip() or "—"
    done = await consumption_api.dispute_consumption.fn(
        consumption_id=consumption_id,
        data=Dispute(reason=reason[:500]),
        db_session=db_session,
        principal=principal,
    )
    return Template("consumer/service_done.html", context=context(request, service=done))


@get("/app/cards/{card_id:str}/refund", **PAGE)
async def refund_page(
    request: Request,
    card_id: Annotated[str, path_id("card")],
    db_session: DbSession,
    principal: PrincipalDep,
    settings: SettingsDep,
) -> Template:
    quote = await refund_api.refund_quote.fn(
        card_id=card_id, db_session=db_session, principal=principal, settings=settings, cause="consumer"
    )
    names = await _names(db_session, [card_id])
    return Template("consumer/refund.html", context=context(request, quote=quote, card_id=card_id, names=names))


@post("/app/cards/{card_id:str}/refund", status_code=200, **FORM)
async def request_refund_page(
    request: Request,
    card_id: Annotated[str, path_id("card")],
    db_session: DbSession,
    principal: PrincipalDep,
    settings: SettingsDep,
) -> Response:
    form = await read_form(request)
    try:
        expected = int(str(form.get("expected_amount", "")))
    except ValueError:
        raise HTTPException(status_code=422, detail="expected_amount") from None
    await refund_api.request_refund.fn(
        card_id=card_id,
        data=RefundRequest(cause="consumer", expected_amount=Money(amount=expected)),
        db_session=db_session,
        principal=principal,
        settings=settings,
    )
    return Response(content="", status_code=200, headers={"HX-Redirect": f"/app/cards/{card_id}"})


@get("/app/closures", **PAGE)
async def closures_page(request: Request, db_session: DbSession, principal: PrincipalDep) -> Template:
    statements = await closure_api.my_statements.fn(db_session=db_session, principal=principal)
    return Template("consumer/closures.html", context=context(request, statements=statements))


async def _my_merchants(db_session: Any, consumer_id: str) -> list[Any]:
    """The merchants the consumer holds or held a card with: those it may complain about."""
    rows = await db_session.execute(
        text(
            "SELECT DISTINCT m.id, m.name FROM cards c JOIN merchants m ON m.id = c.merchant_id"
            " WHERE c.consumer_id = :consumer ORDER BY m.name, m.id"
        ),
        {"consumer": consumer_id},
    )
    return list(rows)


@get("/app/complaints", **PAGE)
async def complaints_page(request: Request, db_session: DbSession, principal: PrincipalDep) -> Template:
    """The complaint form (merchants the consumer had cards with) and the consumer's complaints, each step shown."""
    page = await complaint_api.list_complaints.fn(
        db_session=db_session,
        principal=principal,
        in_state=None,
        merchant_id=None,
        overdue=False,
        cursor=None,
        limit=200,
    )
    merchants = await _my_merchants(db_session, principal.id)
    cards = (
        await card_api.my_cards.fn(db_session=db_session, principal=principal, status=None, cursor=None, limit=200)
    ).items
    names = await _names(db_session, [c.id for c in cards])
    return Template(
        "consumer/complaints.html",
        context=context(
            request,
            complaints=list(reversed(page.items)),
            merchants=merchants,
            merchant_names={m.id: m.name for m in merchants},
            cards=cards,
            names=names,
            categories=COMPLAINT_CATEGORIES,
        ),
    )


@post("/app/complaints", status_code=200, **FORM)
async def file_complaint_page(
    request: Request, db_session: DbSession, principal: PrincipalDep, settings: SettingsDep
) -> Response:
    form = await read_form(request, ids=("merchant_id",))
    card_id = form.get("card_id") or None
    if card_id is not None:
        await read_form(request, ids=("card_id",))
    await complaint_api.file_complaint.fn(
        data=ComplaintFiling(
            merchant_id=form["merchant_id"],
            card_id=card_id,
            category=form.get("category") or "",  # type: ignore[arg-type]  # the model refuses what is not one
            text=form.get("text") or "",
        ),
        db_session=db_session,
        principal=principal,
        settings=settings,
    )
    return Response(content="", status_code=200, headers={"HX-Redirect": "/app/complaints"})


@post("/app/sign-out", status_code=200, **FORM)
async def consumer_sign_out(db_session: DbSession, principal: PrincipalDep) -> Response:
    return await sign_out(db_session, principal, "/app/sign-in")


def unauthenticated(request: Request, _: Unauthenticated) -> Response:
    """Not signed in (or the session's token was revoked): to the sign-in page of the pages asked for."""
    path = request.url.path
    target = next((f"{p}/sign-in" for p in ("/counter", "/desk") if path == p or path.startswith(p + "/")), None)
    target = target or "/app/sign-in"
    if request.headers.get("hx-request"):
        return Response(content="", status_code=200, headers={"HX-Redirect": target})
    return Redirect(target)


def invalid(request: Request, exc: ValidationError) -> Template:
    """A form field the API's model refuses, shown like any refusal."""
    errors = pydantic_field_errors(exc)
    return refused(request, FieldInvalid(errors[0]["field"], errors[0]["message"], rule=errors[0]["rule"]))


def refused(request: Request, exc: EscrowError) -> Template:
    """A refusal shown on the page, in a sentence; a whole page when one was asked. Its status stays the refusal's
    (so the unit of work rolls the request back, as for the API); the pages' htmx swaps 4xx answers too."""
    full = not request.headers.get("hx-request")
    return Template("refused.html", context=context(request, problem=exc, full=full), status_code=exc.status)


ROUTES = [
    sign_in_page,
    send_code_page,
    sign_in,
    home,
    cards_page,
    card_page,
    presence_panel,
    answer_takeover_page,
    confirm_service,
    dispute_service,
    refund_page,
    request_refund_page,
    closures_page,
    complaints_page,
    file_complaint_page,
    consumer_sign_out,
]
