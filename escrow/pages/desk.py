"""The regulator's desk at /desk: the overview (prepaid value outstanding, protected and unprotected, by category and
by region; live warnings by level; overdue refunds; open reconciliation breaks; closures in progress), the warnings
queue with its acknowledge / resolve / escalate buttons, a merchant's figures over time as server-drawn SVG charts,
and the complaints queue.

The regulator signs in with its API token once, as a merchant does at the counter; the page session holds a token
of its own, issued for the desk and revoked on signing out, so the pasted token is never kept. Lists and actions
call the API's own handlers; the value outstanding and the monthly figures are set-based statements
(escrow/risk/desk.py).
"""

from typing import Annotated, Any, Literal

from litestar import Request, Response, get, post
from litestar.params import FromPath, QueryParameter
from litestar.response import Template

from escrow.auth.guards import requires
from escrow.closures import endpoints as closure_api
from escrow.complaints import endpoints as complaint_api
from escrow.deps import DbSession, KeyringDep, PrincipalDep, SettingsDep
from escrow.kit.clock import utcnow
from escrow.kit.pagination import MAX_LIMIT
from escrow.kit.params import path_id
from escrow.merchants import endpoints as merchant_api
from escrow.pages import charts
from escrow.pages.consumer import context, read_form
from escrow.pages.session import sign_in_with_token, sign_out
from escrow.reconciliation import endpoints as reconciliation_api
from escrow.refunds import endpoints as refund_api
from escrow.risk import desk as figures
from escrow.risk import endpoints as warning_api
from escrow.risk.schemas import WarningAction, WarningState

REGULATOR = [requires("regulator")]
PAGE = {"include_in_schema": False, "guards": REGULATOR}
FORM = {**PAGE, "opt": {"page_form": True}}
SESSION_SECONDS = 8 * 3600  # a desk session lasts an office day
LIVE = ("open", "acknowledged", "escalated")


def _yuan(fen: int) -> str:
    from escrow.pages import yuan

    return yuan(fen)


@get("/desk/sign-in", include_in_schema=False)
async def desk_sign_in_page(request: Request) -> Template:
    return Template("desk/sign_in.html", context=context(request))


@post(
    "/desk/sign-in",
    include_in_schema=False,
    status_code=200,
    # the token in the body makes it a guessable attempt; the answer carries a session, so it isn't stored
    opt={"idempotent": False, "auth_attempt": True},
)
async def desk_sign_in(request: Request, db_session: DbSession, keyring: KeyringDep) -> Response:
    form = await read_form(request)
    return await sign_in_with_token(
        db_session,
        keyring,
        form.get("token", ""),
        "regulator",
        name="desk session",
        home="/desk",
        max_age=SESSION_SECONDS,
    )


@get("/desk", **PAGE)
async def overview_page(
    request: Request, db_session: DbSession, principal: PrincipalDep, settings: SettingsDep
) -> Template:
    table = await figures.outstanding(db_session)
    counted = await figures.counts(db_session)
    summary = await warning_api.warnings_summary.fn(db_session=db_session)
    by_level: dict[str, int] = {"alert": 0, "attention": 0}
    by_kind: dict[str, int] = {}
    for row in summary:
        by_level[row.level] = by_level.get(row.level, 0) + row.warnings
        by_kind[row.kind] = by_kind.get(row.kind, 0) + row.warnings
    overdue = await refund_api.list_refunds.fn(
        db_session=db_session, principal=principal, settings=settings, status=None, overdue=True, limit=MAX_LIMIT
    )
    breaks = await reconciliation_api.list_breaks.fn(
        db_session=db_session,
        principal=principal,
        break_state="open",
        kind=None,
        escrow_account_id=None,
        cursor=None,
        limit=20,
    )
    closures = [
        c
        for c in await closure_api.list_closures.fn(db_session=db_session, principal=principal)
        if c.status != "settled"
    ]
    return Template(
        "desk/overview.html",
        context=context(
            request,
            section="overview",
            table=table,
            counted=counted,
            by_level=by_level,
            by_kind=sorted(by_kind.items()),
            overdue=overdue,
            overdue_more=len(overdue) >= MAX_LIMIT,
            breaks=breaks.items,
            closures=closures,
        ),
    )


WarningStateQuery = Annotated[WarningState | None, QueryParameter(name="state")]


@get("/desk/warnings", **PAGE)
async def warnings_page(
    request: Request, db_session: DbSession, principal: PrincipalDep, warning_state: WarningStateQuery = None
) -> Template:
    listed = await warning_api.list_warnings.fn(
        db_session=db_session,
        principal=principal,
        kind=None,
        warning_state=warning_state,
        region=None,
        category=None,
        merchant_id=None,
        limit=MAX_LIMIT,
    )
    if warning_state is None:
        listed = [w for w in listed if w.state in LIVE]  # the queue: what still needs the regulator
    return Template(
        "desk/warnings.html",
        context=context(
            request,
            section="warnings",
            warnings=listed,
            state=warning_state,
            live=LIVE,
            names=await figures.merchant_names(db_session, [w.merchant_id for w in listed]),
        ),
    )


_ACTIONS = {
    "acknowledge": warning_api.acknowledge_warning,
    "resolve": warning_api.resolve_warning,
    "escalate": warning_api.escalate_warning,
}


async def _warning_action(request: Request, db_session: Any, principal: Any, warning_id: str, action: str) -> Template:
    form = await read_form(request)
    handler = _ACTIONS[action]
    warning = await handler.fn(
        warning_id=warning_id,
        data=WarningAction(note=str(form.get("note") or "")),
        db_session=db_session,
        principal=principal,
    )
    names = await figures.merchant_names(db_session, [warning.merchant_id])
    return Template("desk/warning_row.html", context=context(request, w=warning, live=LIVE, names=names))


@post("/desk/warnings/{warning_id:str}/{action:str}", status_code=200, **FORM)
async def warning_step(
    request: Request,
    warning_id: Annotated[str, path_id("warning")],
    action: FromPath[Literal["acknowledge", "resolve", "escalate"]],
    db_session: DbSession,
    principal: PrincipalDep,
) -> Template:
    """A step of a warning's lifecycle, taken from the queue."""
    return await _warning_action(request, db_session, principal, warning_id, action)


@get("/desk/merchants/{merchant_id:str}", **PAGE)
async def merchant_page(
    request: Request,
    merchant_id: Annotated[str, path_id("merchant")],
    db_session: DbSession,
    principal: PrincipalDep,
    settings: SettingsDep,
) -> Template:
    merchant = await merchant_api.get_merchant.fn(merchant_id=merchant_id, db_session=db_session, principal=principal)
    months = await figures.merchant_months(db_session, merchant.id, now=utcnow(), timezone=settings.business_timezone)
    warnings = await warning_api.list_warnings.fn(
        db_session=db_session,
        principal=principal,
        kind=None,
        warning_state=None,
        region=None,
        category=None,
        merchant_id=merchant.id,
        limit=50,
    )
    t = context(request)["t"]
    labels = [m.month.strftime("%m") for m in months]  # the caption says the year-months; bars stay legible
    drawn = [  # (key, caption, svg)
        ("sales", t["desk_sales"], charts.bar_chart(t["desk_sales"], labels, [m.sales for m in months], fmt=_yuan)),
        ("services", t["desk_services"], charts.bar_chart(t["desk_services"], labels, [m.services for m in months])),
        ("refunds", t["desk_refunds"], charts.bar_chart(t["desk_refunds"], labels, [m.refunds for m in months])),
        ("disputes", t["desk_disputes"], charts.bar_chart(t["desk_disputes"], labels, [m.disputes for m in months])),
        (
            "custody",
            t["desk_custody"],
            charts.line_chart(t["desk_custody"], labels, [m.custody for m in months], fmt=_yuan),
        ),
    ]
    return Template(
        "desk/merchant.html",
        context=context(
            request,
            section="merchant",
            merchant=merchant,
            months=months,
            charts=drawn,
            warnings=warnings,
            live=LIVE,
            names={merchant.id: merchant.name},
        ),
    )


@get("/desk/complaints", **PAGE)
async def complaints_page(request: Request, db_session: DbSession, principal: PrincipalDep) -> Template:
    page = await complaint_api.list_complaints.fn(
        db_session=db_session,
        principal=principal,
        in_state=None,
        merchant_id=None,
        overdue=False,
        cursor=None,
        limit=MAX_LIMIT,
    )
    waiting = [c for c in page.items if c.state != "mediated"]
    names = await figures.merchant_names(db_session, sorted({c.merchant_id for c in waiting}))
    return Template(
        "desk/complaints.html", context=context(request, section="complaints", complaints=waiting, names=names)
    )


@post("/desk/sign-out", status_code=200, **FORM)
async def desk_sign_out(db_session: DbSession, principal: PrincipalDep) -> Response:
    return await sign_out(db_session, principal, "/desk/sign-in")  # the desk session's own token


ROUTES = [
    desk_sign_in_page,
    desk_sign_in,
    overview_page,
    warnings_page,
    warning_step,
    merchant_page,
    complaints_page,
    desk_sign_out,
]
