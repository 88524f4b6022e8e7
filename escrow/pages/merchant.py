"""The merchant's counter page: sell a card to a phone number and show where the consumer pays, record a service
(with the consumer's presence code, or without, as pending), today's services, what awaits confirmation, the
payable balance and the payouts.

A merchant signs in with its API token once; the page session holds a token of its own, issued for the counter
and revoked on signing out, so the pasted token is never kept.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

from litestar import Request, Response, get, post
from litestar.response import Template

from escrow.auth.guards import requires
from escrow.cards import endpoints as card_api
from escrow.cards.schemas import CardSale
from escrow.consumers import endpoints as consumer_api
from escrow.consumers.schemas import ConsumerRegister
from escrow.consumptions import endpoints as consumption_api
from escrow.consumptions.schemas import ConsumptionCreate
from escrow.deps import DbSession, KeyringDep, PrincipalDep, SettingsDep
from escrow.errors import FieldInvalid
from escrow.escrow_accounts import endpoints as account_api
from escrow.kit.clock import business_date
from escrow.pages.consumer import context, read_form
from escrow.pages.session import sign_in_with_token, sign_out
from escrow.payouts import endpoints as payout_api
from escrow.plans import endpoints as plan_api

MERCHANT = [requires("merchant")]
PAGE = {"include_in_schema": False, "guards": MERCHANT}
FORM = {**PAGE, "opt": {"page_form": True}}
SESSION_SECONDS = 12 * 3600  # a counter session lasts a working day


@get("/counter/sign-in", include_in_schema=False)
async def counter_sign_in_page(request: Request) -> Template:
    return Template("merchant/sign_in.html", context=context(request))


@post(
    "/counter/sign-in",
    include_in_schema=False,
    status_code=200,
    # the token in the body makes it a guessable attempt; the answer carries a session, so it isn't stored
    opt={"idempotent": False, "auth_attempt": True},
)
async def counter_sign_in(request: Request, db_session: DbSession, keyring: KeyringDep) -> Response:
    form = await read_form(request)
    return await sign_in_with_token(
        db_session,
        keyring,
        form.get("token", ""),
        "merchant",
        name="counter session",
        home="/counter",
        max_age=SESSION_SECONDS,
    )


async def _counter_context(request: Request, db_session: Any, principal: Any, **values: Any) -> dict[str, Any]:
    settings = request.app.state.settings
    today = business_date(datetime.now(UTC), settings.business_timezone)
    services = await consumption_api.list_consumptions.fn(
        db_session=db_session, principal=principal, status=None, card_id=None, limit=200
    )
    todays = [s for s in services if business_date(s.recorded_at, settings.business_timezone) == today]
    pending = [s for s in services if s.status == "pending_confirmation"]
    accounts = await account_api.list_escrow_accounts.fn(db_session=db_session, principal=principal)
    payable = 0
    for account in accounts:
        if account.status in ("active", "frozen"):
            totals = await card_api.escrow_account_totals.fn(
                escrow_account_id=account.id, db_session=db_session, principal=principal
            )
            payable += totals.merchant_payable.amount
    payouts = await payout_api.list_instructions.fn(
        db_session=db_session, principal=principal, status=None, cursor=None, limit=20
    )
    plans = [p for p in await plan_api.list_plans.fn(db_session=db_session, principal=principal) if p.active]
    return context(
        request,
        todays=todays,
        pending=pending,
        payable=payable,
        payouts=payouts.items,
        plans=plans,
        since=datetime.now(UTC) - timedelta(days=1),
        **values,
    )


@get("/counter", **PAGE)
async def counter_page(request: Request, db_session: DbSession, principal: PrincipalDep) -> Template:
    return Template("merchant/counter.html", context=await _counter_context(request, db_session, principal))


@post("/counter/sales", status_code=200, **FORM)
async def sell(
    request: Request,
    db_session: DbSession,
    principal: PrincipalDep,
    settings: SettingsDep,
    keyring: KeyringDep,
) -> Template:
    form = await read_form(request, ids=("plan_id",))
    registered = await consumer_api.register_consumer.fn(
        data=ConsumerRegister(phone=str(form.get("phone") or "")),
        db_session=db_session,
        keyring=keyring,
        principal=principal,
    )
    consumer = registered.content if isinstance(registered, Response) else registered
    sold = await card_api.sell_card.fn(
        data=CardSale(plan_id=str(form.get("plan_id") or ""), consumer_id=consumer.id),
        db_session=db_session,
        principal=principal,
        settings=settings,
    )
    return Template("merchant/sold.html", context=context(request, sold=sold))


@post("/counter/services", status_code=200, **FORM)
async def record(
    request: Request, db_session: DbSession, principal: PrincipalDep, settings: SettingsDep, keyring: KeyringDep
) -> Template:
    form = await read_form(request, ids=("card_id",))
    card_id = form["card_id"]
    fields: dict[str, Any] = {}
    units = str(form.get("units") or "").strip()
    if units:
        if not units.isdigit() or len(units) > 9:
            raise FieldInvalid("units", "must be a whole number", rule="int_type")
        fields["sessions"] = int(units)
    presence = str(form.get("presence_code") or "").strip()
    if presence:
        fields["presence_code"] = presence
    data = ConsumptionCreate(**fields)
    recorded = await consumption_api.record_consumption.fn(
        card_id=card_id, data=data, db_session=db_session, principal=principal, settings=settings, keyring=keyring
    )
    return Template("merchant/recorded.html", context=context(request, service=recorded))


@post("/counter/sign-out", status_code=200, **FORM)
async def counter_sign_out(db_session: DbSession, principal: PrincipalDep) -> Response:
    return await sign_out(db_session, principal, "/counter/sign-in")  # the counter session's own token


ROUTES = [counter_sign_in_page, counter_sign_in, counter_page, sell, record, counter_sign_out]
