"""Every route, every role, own or another's object: each answers exactly as the README's table says."""

import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from escrow.app import create_app
from escrow.auth.matrix import ALLOWED, OWN, REFUSED, ROLES, markdown, route_access
from escrow.auth.tokens import issue_token
from escrow.config import Settings
from escrow.kit.signing import sign_headers
from tests.closing import order_closure, setup_fund, start_and_settle
from tests.parties import (
    Bank,
    Merchant,
    app_of,
    bank_transaction_id,
    bearer,
    create_plan,
    key,
    last_sms_id,
    new_uscc,
    onboard_bank,
    onboard_merchant,
    onboard_ratio_merchant,
    open_escrow_account,
    regulator_token,
    sell_and_pay,
    send_code,
    sms_code_for,
)
from tests.reconciling import camt053, fee, send, statement_json

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.fixture
def settings(db_url: str) -> Settings:
    # the matrix makes many deliberate 401s from one address: keep the abuse limiter out of its way
    return Settings(
        database_url=db_url,
        log_format="json",
        seal_interval_seconds=0,
        jobs_interval_seconds=0,
        secret_key="test-secret-key-0123456789abcdef",
        auth_failure_limit=10_000,
        consumer_codes_per_phone_per_hour=10_000,
        consumer_codes_per_address_per_hour=10_000,
    )


@dataclass
class Caller:
    role: str
    token: str
    bank: Bank | None = None
    spare_token_id: str = ""  # a second token of the same principal, to rotate or revoke

    def auth(self) -> dict:
        return {"auth": self.bank.auth} if self.bank else {"headers": bearer(self.token)}


@dataclass
class Closures:
    """The parties and objects of closures (issue 6), apart from the own merchant, which keeps selling."""

    closing: Caller  # a merchant that announced its closure and proposed a successor
    successor: Caller  # the merchant proposed to take the closing merchant's cards over
    successor_id: str
    announcing: Caller  # a merchant with no closure yet: POST /v1/closures closes it
    ordered_merchant_id: str  # an active merchant the regulator's POST /v1/closures closes
    ids: dict[str, str]  # "closing" (announced, takeover open), "other" (ordered: frozen), "planned" and
    # "settling" (frozen, each for one route), "settled" (a ratio merchant's, the fund paid a share)
    settled_merchant: Caller  # the merchant of the settled closure
    settled_account: str  # its escrow account: the fund has a subrogated claim on it
    settled_card: str  # the card its consumer was refunded by the closure
    settled_consumer: str  # that consumer's token
    takeover_deadline: str


@dataclass
class World:
    callers: dict[str, Caller]
    own: dict[str, dict[str, str]]  # role -> path parameter -> the caller's own object
    other: dict[str, str]  # path parameter -> an object of someone else
    merchant_token: str
    consumer_token: str
    unpaid_card: dict[str, object]  # payment reference and amount of an own card awaiting payment
    # route -> path parameters replacing the caller's own ones there, so that each state-changing route first meets
    # an object in the state it acts on (an open dispute to resolve, a card with no service pending to refund)
    own_by_route: dict[str, dict[str, str]] = field(default_factory=dict)
    closures: Closures | None = None
    # "METHOD path" or path -> role -> the caller acting in that role there instead (the closing merchant on the
    # closure routes, so that the own merchant keeps selling for the routes after them)
    callers_by_route: dict[str, dict[str, Caller]] = field(default_factory=dict)

    def own_for(self, role: str, path: str) -> dict[str, str]:
        return {**self.own[role], **self.own_by_route.get(path, {})}

    def caller_for(self, role: str, method: str, path: str) -> Caller:
        by_route = self.callers_by_route.get(f"{method} {path}") or self.callers_by_route.get(path) or {}
        return by_route.get(role, self.callers[role])


async def warnings_of(client: httpx.AsyncClient, regulator: str, *merchants: Merchant) -> dict[str, str]:
    """A deep-discount warning for each merchant (a plan at a tenth of its list price, then a run): their ids."""
    for merchant in merchants:
        await create_plan(client, merchant, kind="sessions", sessions=10, price=10_000, list_price_per_session=10_000)
    ran = await client.post("/v1/warnings/runs", headers={**bearer(regulator), **key()})
    assert ran.status_code == 200, ran.text
    rows = (await client.get("/v1/warnings", params={"kind": "deep_discount"}, headers=bearer(regulator))).json()
    return {w["merchant_id"]: w["id"] for w in rows}


async def spare(session: AsyncSession, role: str, principal_id: str) -> str:
    token, _ = await issue_token(session, role, "spare", principal_id=principal_id)
    await session.commit()
    return token.id


async def record_service(client: httpx.AsyncClient, merchant: Merchant, card_id: str) -> str:
    """One session used on a sessions card: the service record, pending the consumer's confirmation."""
    recorded = await client.post(
        f"/v1/cards/{card_id}/consumptions", json={"sessions": 1}, headers={**bearer(merchant.token), **key()}
    )
    assert recorded.status_code == 201, recorded.text
    return recorded.json()["id"]


async def confirm_service(client: httpx.AsyncClient, consumer: str, consumption_id: str) -> None:
    confirmed = await client.post(f"/v1/consumptions/{consumption_id}/confirm", headers={**bearer(consumer), **key()})
    assert confirmed.status_code == 200, confirmed.text


async def payout_instruction(client: httpx.AsyncClient, merchant: Merchant, card_id: str, consumer: str) -> str:
    """A session delivered and confirmed, then paid out: the bank's payout instruction."""
    await confirm_service(client, consumer, await record_service(client, merchant, card_id))
    run = await client.post("/v1/payout-runs", json={}, headers={**bearer(merchant.token), **key()})
    assert run.status_code == 201 and len(run.json()["instructions"]) == 1, run.text
    return run.json()["instructions"][0]["id"]


async def merchant_caused_refund(
    client: httpx.AsyncClient, merchant: Merchant, bank: Bank, plan_id: str, consumer_id: str, consumer: str
) -> str:
    """A refund the consumer says the merchant caused, waiting for approval (a session was delivered first, or the
    cooling-off rule would approve it at once)."""
    card_id = await sell_and_pay(client, merchant, bank, plan_id, consumer_id)
    await confirm_service(client, consumer, await record_service(client, merchant, card_id))
    quote = await client.get(
        f"/v1/cards/{card_id}/refund-quote", params={"cause": "merchant"}, headers=bearer(consumer)
    )
    assert quote.status_code == 200, quote.text
    refund = await client.post(
        f"/v1/cards/{card_id}/refunds",
        json={"cause": "merchant", "expected_amount": quote.json()["amount"], "reason": "classes cancelled"},
        headers={**bearer(consumer), **key()},
    )
    assert refund.status_code == 201 and refund.json()["status"] == "requested", refund.text
    return refund.json()["id"]


async def cards_of(
    client: httpx.AsyncClient, merchant: Merchant, bank: Bank, consumer_id: str, consumer: str
) -> dict[str, str]:
    """A party's objects of issue 5: a plan, a card with a service awaiting confirmation, a payout instruction and
    a refund awaiting approval."""
    plan_id = (await create_plan(client, merchant, kind="sessions", sessions=10, price=10_000))["id"]
    card_id = await sell_and_pay(client, merchant, bank, plan_id, consumer_id)
    return {
        "plan_id": plan_id,
        "card_id": card_id,
        "instruction_id": await payout_instruction(client, merchant, card_id, consumer),
        "consumption_id": await record_service(client, merchant, card_id),
        "refund_id": await merchant_caused_refund(client, merchant, bank, plan_id, consumer_id, consumer),
    }


async def reconciliation_of(client: httpx.AsyncClient, bank: Bank, account_id: str) -> dict[str, str]:
    """A statement of the bank's with a line the ledger doesn't know: a statement and a break to read (issue 7)."""
    sent = await send(client, bank, statement_json(account_id, [fee(100)]))
    (found,) = [b for b in await breaks_of(client, bank) if b["escrow_account_id"] == account_id]
    return {"statement_id": sent["statements"][0]["id"], "break_id": found["id"]}


async def breaks_of(client: httpx.AsyncClient, bank: Bank) -> list[dict]:
    listed = await client.get("/v1/reconciliation/breaks", params={"limit": 200}, auth=bank.auth)
    assert listed.status_code == 200, listed.text
    return listed.json()["items"]


CLOSURE_ROUTES = (
    "/v1/closures",
    "/v1/closures/{closure_id}",
    "/v1/closures/{closure_id}/confirm",
    "/v1/closures/{closure_id}/items",
    "/v1/closures/{closure_id}/plan",
    "/v1/closures/{closure_id}/plan.csv",
    "/v1/closures/{closure_id}/settlement",
    "/v1/closures/{closure_id}/takeover",
)


async def closures_of(
    client: httpx.AsyncClient,
    session: AsyncSession,
    regulator: str,
    bank: Bank,
    consumer_id: str,
    sessionmaker: async_sessionmaker,
    settings: Settings,
) -> tuple[Closures, str]:
    """Closures in every state a closure route acts on, each of its own merchant; returns them and a card of the own
    consumer at the closing merchant, whose takeover is proposed."""
    closing = await onboard_merchant(client, regulator, "Closing Gym")
    successor = await onboard_merchant(client, regulator, "Successor Gym")
    await open_escrow_account(client, closing, bank)
    await open_escrow_account(client, successor, bank)
    registered = await client.post(
        "/v1/consumers", json={"phone": "13800000001"}, headers={**bearer(closing.token), **key()}
    )
    assert registered.status_code == 201 and registered.json()["id"] == consumer_id, registered.text
    plan_id = (await create_plan(client, closing, kind="sessions", sessions=10, price=10_000))["id"]
    takeover_card = await sell_and_pay(client, closing, bank, plan_id, consumer_id)
    announced = await client.post(
        "/v1/closures",
        json={"effective_on": (date.today() + timedelta(days=60)).isoformat(), "reason": "moving away"},
        headers={**bearer(closing.token), **key()},
    )
    assert announced.status_code == 201 and announced.json()["status"] == "announced", announced.text
    closing_id = announced.json()["id"]
    deadline = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    proposed = await client.post(
        f"/v1/closures/{closing_id}/takeover",
        json={"successor_merchant_id": successor.id, "deadline": deadline},
        headers={**bearer(closing.token), **key()},
    )
    assert proposed.status_code == 200, proposed.text
    ids = {"closing": closing_id}
    for name, merchant_name in (("other", "Vanished Gym"), ("planned", "Planned Gym"), ("settling", "Settling Gym")):
        ordered = await order_closure(client, regulator, (await onboard_merchant(client, regulator, merchant_name)).id)
        assert ordered["status"] == "frozen", ordered
        ids[name] = ordered["id"]
    # a ratio merchant vanishes: custody pays its part of the card, the fund the rest, and holds a claim for it
    await setup_fund(client, regulator, bank, 10_000, bank_transaction_id())
    bankrupt = await onboard_ratio_merchant(client, regulator, "Bankrupt Gym")
    bankrupt_account = await open_escrow_account(client, bankrupt, bank)
    registered = await client.post(
        "/v1/consumers", json={"phone": "13800000003"}, headers={**bearer(bankrupt.token), **key()}
    )
    assert registered.status_code == 201, registered.text
    bankrupt_consumer = registered.json()["id"]
    bankrupt_plan = (await create_plan(client, bankrupt, kind="sessions", sessions=10, price=10_000))["id"]
    bankrupt_card = await sell_and_pay(client, bankrupt, bank, bankrupt_plan, bankrupt_consumer)
    ids["settled"] = (await order_closure(client, regulator, bankrupt.id))["id"]
    settled = await start_and_settle(client, regulator, ids["settled"], sessionmaker, settings)
    assert settled["status"] == "settled" and settled["totals"]["fund_paid"]["amount"] > 0, settled
    _, bankrupt_consumer_token = await issue_token(session, "consumer", "matrix", principal_id=bankrupt_consumer)
    await session.commit()
    return Closures(
        closing=Caller("merchant", closing.token),
        successor=Caller("merchant", successor.token),
        successor_id=successor.id,
        announcing=Caller("merchant", (await onboard_merchant(client, regulator, "Announcing Gym")).token),
        ordered_merchant_id=(await onboard_merchant(client, regulator, "Ordered Gym")).id,
        ids=ids,
        settled_merchant=Caller("merchant", bankrupt.token),
        settled_account=bankrupt_account,
        settled_card=bankrupt_card,
        settled_consumer=bankrupt_consumer_token,
        takeover_deadline=deadline,
    ), takeover_card


@pytest.fixture
async def world(
    client: httpx.AsyncClient, session: AsyncSession, sessionmaker: async_sessionmaker, settings: Settings
) -> World:
    regulator = await regulator_token(session)
    bank, other_bank = await onboard_bank(client, regulator, "OWNB"), await onboard_bank(client, regulator, "OTHB")
    merchant = await onboard_merchant(client, regulator, "Own Gym")
    other_merchant = await onboard_merchant(client, regulator, "Other Gym")
    account = await open_escrow_account(client, merchant, bank)
    other_account = await open_escrow_account(client, other_merchant, other_bank)

    async def consumer(of, phone: str) -> tuple[str, str]:
        registered = await client.post("/v1/consumers", json={"phone": phone}, headers={**bearer(of.token), **key()})
        consumer_id = registered.json()["id"]
        _, secret = await issue_token(session, "consumer", "matrix", principal_id=consumer_id)
        await session.commit()
        return consumer_id, secret

    consumer_id, consumer_secret = await consumer(merchant, "13800000001")
    other_consumer_id, other_consumer_secret = await consumer(other_merchant, "13800000002")
    cards = await cards_of(client, merchant, bank, consumer_id, consumer_secret)
    other_cards = await cards_of(client, other_merchant, other_bank, other_consumer_id, other_consumer_secret)
    # Routes that change an object get one of their own where an earlier route would have changed it first (the
    # matrix runs in path order: confirm before dispute, approve before reject, executed before failed), or
    # where the object must be in a particular state (a card with no service pending, for a refund).
    plan_id, card_id = cards["plan_id"], cards["card_id"]
    disputed = await record_service(client, merchant, card_id)
    own_by_route = {
        "/v1/cards/{card_id}/refunds": {"card_id": await sell_and_pay(client, merchant, bank, plan_id, consumer_id)},
        "/v1/consumptions/{consumption_id}/dispute": {"consumption_id": disputed},
        "/v1/consumptions/{consumption_id}/resolve": {"consumption_id": disputed},
        "/v1/refunds/{refund_id}/reject": {
            "refund_id": await merchant_caused_refund(client, merchant, bank, plan_id, consumer_id, consumer_secret)
        },
        "/v1/instructions/{instruction_id}/failed": {
            "instruction_id": await payout_instruction(client, merchant, card_id, consumer_secret)
        },
        # the regulator suspends another merchant, so the own one can still define plans on the later routes
        "/v1/merchants/{merchant_id}/status": {
            "merchant_id": (await onboard_merchant(client, regulator, "Suspended Gym")).id
        },
        # the bank takes a pending instruction of its own (the others have been executed or failed by then)
        "/v1/instructions/{instruction_id}/sent": {
            "instruction_id": await payout_instruction(client, merchant, card_id, consumer_secret)
        },
    }
    closures, takeover_card = await closures_of(client, session, regulator, bank, consumer_id, sessionmaker, settings)
    # the consumer answers the takeover of its card at the closing merchant; the regulator plans one frozen
    # closure, starts settling another and confirms the settled one
    own_by_route |= {
        "/v1/cards/{card_id}/takeover": {"card_id": takeover_card},
        "/v1/closures/{closure_id}/plan": {"closure_id": closures.ids["planned"]},
        "/v1/closures/{closure_id}/settlement": {"closure_id": closures.ids["settling"]},
        "/v1/closures/{closure_id}/confirm": {"closure_id": closures.ids["settled"]},
    }
    # on the closure routes the merchant is the closing one (its own closure, another's is the vanished gym's);
    # the merchant announcing its closure is one with none yet
    callers_by_route = {path: {"merchant": closures.closing} for path in CLOSURE_ROUTES}
    callers_by_route["POST /v1/closures"] = {"merchant": closures.announcing}
    unpaid = await client.post(
        "/v1/cards",
        json={"plan_id": plan_id, "consumer_id": consumer_id},
        headers={**bearer(merchant.token), **key()},
    )
    assert unpaid.status_code == 201, unpaid.text
    me = {}
    for role, token in (("regulator", regulator), ("merchant", merchant.token), ("consumer", consumer_secret)):
        me[role] = (await client.get("/v1/me", headers=bearer(token))).json()
    callers = {
        "regulator": Caller(
            "regulator", regulator, spare_token_id=await spare(session, "regulator", me["regulator"]["principal_id"])
        ),
        "bank": Caller("bank", bank.token, bank, await spare(session, "bank", bank.id)),
        "merchant": Caller("merchant", merchant.token, spare_token_id=await spare(session, "merchant", merchant.id)),
        "consumer": Caller("consumer", consumer_secret, spare_token_id=await spare(session, "consumer", consumer_id)),
    }
    warning_ids = await warnings_of(client, regulator, merchant, other_merchant)
    own_objects = {
        **await reconciliation_of(client, bank, account),
        "warning_id": warning_ids[merchant.id],
        "bank_id": bank.id,
        "merchant_id": merchant.id,
        "consumer_id": consumer_id,
        "escrow_account_id": account,
        "closure_id": closures.ids["closing"],
        **cards,
    }
    own = {role: {**own_objects, "token_id": callers[role].spare_token_id} for role in ROLES}
    other_token = await spare(session, "merchant", other_merchant.id)

    async def complaint(token: str, merchant_id: str) -> str:
        filed = await client.post(
            "/v1/complaints",
            json={"merchant_id": merchant_id, "category": "other", "text": "matrix"},
            headers={**bearer(token), **key()},
        )
        assert filed.status_code == 201, filed.text
        return filed.json()["id"]

    own_objects["complaint_id"] = await complaint(consumer_secret, merchant.id)
    own = {role: {**own_objects, "token_id": callers[role].spare_token_id} for role in ROLES}
    other = {
        **await reconciliation_of(client, other_bank, other_account),
        "bank_id": other_bank.id,
        "merchant_id": other_merchant.id,
        "consumer_id": other_consumer_id,
        "escrow_account_id": other_account,
        "token_id": other_token,
        "closure_id": closures.ids["other"],
        "complaint_id": await complaint(other_consumer_secret, other_merchant.id),
        "warning_id": warning_ids[other_merchant.id],
        **other_cards,
    }
    return World(
        callers,
        own,
        other,
        merchant.token,
        consumer_secret,
        unpaid.json()["payment"],
        own_by_route,
        closures,
        callers_by_route,
    )


async def body_for(
    client: httpx.AsyncClient, world: World, method: str, path: str, params: dict[str, str]
) -> dict | None:
    if method not in ("POST", "PUT"):
        return None
    closures = world.closures
    assert closures is not None
    if path == "/v1/consumer-tokens":
        app = app_of(client)
        before = await last_sms_id(app.state.sessionmaker)
        await send_code(client, "13800000001")
        code = await sms_code_for(app.state.sessionmaker, "13800000001", keyring=app.state.keyring, after=before)
        return {"phone": "13800000001", "code": code}
    if path == "/v1/cards/{card_id}/refunds":
        # the amount the consumer confirms is the quote's; another's card has no quote for them, any amount does
        quote = await client.get(
            f"/v1/cards/{params['card_id']}/refund-quote",
            params={"cause": "consumer"},
            headers=bearer(world.consumer_token),
        )
        amount = quote.json()["amount"] if quote.status_code == 200 else {"amount": 1, "currency": "CNY"}
        return {"cause": "consumer", "expected_amount": amount, "reason": "matrix"}
    if path == "/v1/deposits":
        return {
            "payment_reference": world.unpaid_card["payment_reference"],
            "amount": world.unpaid_card["amount"],
            "bank_transaction_id": bank_transaction_id(),
        }
    if path == "/v1/statements":  # always the bank's own account: another's is refused, 404, by the body
        return statement_json(world.own["bank"]["escrow_account_id"], [fee(100), fee(5, "FEE-0002")])
    if path == "/v1/reconciliation/breaks/{break_id}/resolve":
        return {"action": "accept", "note": "matrix"}
    if path == "/v1/instructions/{instruction_id}/executed":
        return {"bank_transaction_id": bank_transaction_id()}
    return {
        "/v1/banks": {"name": "New Bank", "code": f"NB{time.monotonic_ns() % 10**8}"},
        "/v1/merchants": {
            "name": "New Gym",
            "category": "gym",
            "uscc": new_uscc(),
            "credit_rating": "A",
            "settlement_account": "6222021234567890123",
        },
        "/v1/merchants/{merchant_id}/status": {"status": "suspended", "reason": "matrix"},
        "/v1/escrow-accounts": {"bank_id": world.own["bank"]["bank_id"]},
        "/v1/escrow-accounts/{escrow_account_id}/activate": {"bank_account_number": "1234567890123"},
        "/v1/escrow-accounts/{escrow_account_id}/reject": {"reason": "matrix"},
        "/v1/escrow-accounts/{escrow_account_id}/freeze": {"reason": "matrix"},
        "/v1/consumers": {"phone": "13800000009"},
        "/v1/consumer-codes": {"phone": "13800000009"},
        "/v1/merchants/{merchant_id}/tokens": {"name": "matrix"},
        "/v1/banks/{bank_id}/tokens": {"name": "matrix"},
        "/v1/tokens": {"name": "another regulator"},
        "/v1/merchants/{merchant_id}/custody-model": {"model": "ratio", "reason": "matrix"},
        "/v1/merchants/{merchant_id}/region": {"region": "440306", "reason": "matrix"},
        "/v1/merchants/{merchant_id}/penalties": {
            "kind": "fine",
            "decided_on": date.today().isoformat(),
            "decision_number": f"M-{time.monotonic_ns()}",
            "major": False,
        },
        "/v1/merchants/{merchant_id}/credit/override": {
            "grade": "B",
            "reason": "matrix",
            "lapses_on": (date.today() + timedelta(days=30)).isoformat(),
        },
        "/v1/warnings/{warning_id}/acknowledge": {"note": "matrix"},
        "/v1/warnings/{warning_id}/escalate": {"note": "matrix"},
        "/v1/warnings/{warning_id}/resolve": {"note": "matrix"},
        "/v1/plans": {
            "name": "matrix plan",
            "kind": "sessions",
            "price": {"amount": 10_000, "currency": "CNY"},
            "sessions": 10,
            "validity_days": 365,
        },
        "/v1/cards": {"plan_id": world.own["merchant"]["plan_id"], "consumer_id": world.own["merchant"]["consumer_id"]},
        "/v1/cards/{card_id}/consumptions": {"sessions": 1},
        "/v1/consumptions": {"services": [{"card_id": world.own["merchant"]["card_id"], "sessions": 1}]},
        "/v1/consumptions/{consumption_id}/dispute": {"reason": "matrix"},
        "/v1/consumptions/{consumption_id}/resolve": {"outcome": "void", "note": "matrix"},
        "/v1/refunds/{refund_id}/reject": {"reason": "matrix"},
        "/v1/instructions/{instruction_id}/failed": {"reason": "matrix"},
        "/v1/payout-runs": {},
        "/v1/complaints": {"merchant_id": world.own["consumer"]["merchant_id"], "category": "other", "text": "matrix"},
        "/v1/complaints/{complaint_id}/answer": {"answer": "matrix"},
        "/v1/complaints/{complaint_id}/mediate": {"outcome": "upheld", "note": "matrix"},
        "/v1/cards/{card_id}/takeover": {"decision": "accept"},
        # the regulator closes a merchant with no closure yet; a merchant closes itself (merchant_id is the
        # regulator's field), with the notice it must give
        "/v1/closures": {
            "merchant_id": closures.ordered_merchant_id,
            "effective_on": (date.today() + timedelta(days=60)).isoformat(),
            "reason": "matrix",
        },
        "/v1/closures/{closure_id}/takeover": {
            "successor_merchant_id": closures.successor_id,
            "deadline": closures.takeover_deadline,
        },
        "/v1/fund/bank-account": {"bank_id": world.own["bank"]["bank_id"], "bank_account_number": "6222111122223333"},
        "/v1/fund/contributions": {
            "source_kind": "insurer",
            "source_name": "matrix",
            "amount": {"amount": 10_000, "currency": "CNY"},
            "bank_transaction_id": bank_transaction_id(),
        },
        # a recovery of one fen on the fund's claim on the settled closure's escrow account
        "/v1/fund/recoveries": {
            "escrow_account_id": closures.settled_account,
            "amount": {"amount": 1, "currency": "CNY"},
            "bank_transaction_id": bank_transaction_id(),
            "note": "matrix",
        },
    }.get(path, {})


def fill(path: str, params: dict[str, str]) -> str:
    for name, value in params.items():
        path = path.replace("{" + name + "}", value)
    return path


async def call(
    client: httpx.AsyncClient, world: World, caller: Caller | None, method: str, path: str, params: dict[str, str]
) -> httpx.Response:
    body = await body_for(client, world, method, path, params)
    kwargs = caller.auth() if caller else {}
    headers = {**kwargs.pop("headers", {}), **(key() if method != "GET" else {})}
    if path == "/v1/statements/camt053":  # XML, for the bank's own account
        document = camt053([(world.own["bank"]["escrow_account_id"], [fee(100), fee(7, "FEE-0003")], 0, None)])
        headers["Content-Type"] = "application/xml"
        return await client.request(method, path, content=document, headers=headers, **kwargs)
    return await client.request(method, fill(path, params), json=body, headers=headers, **kwargs)


def test_readme_has_the_generated_table() -> None:
    app = create_app(Settings(database_url="postgresql://unused@localhost/unused"))
    assert markdown(app) in README, "README's table of routes and roles is stale: run `escrow routes`"


async def test_matrix(client: httpx.AsyncClient, app: Litestar, world: World) -> None:
    rows = route_access(app)
    assert len(rows) >= 25
    problems = []
    for row in rows:
        anonymous = await call(client, world, None, row.method, row.path, world.other)
        if not row.anonymous and anonymous.status_code != 401:
            problems.append(f"{row.method} {row.path} anonymous: {anonymous.status_code}, expected 401")
        for role in ROLES:
            caller = world.caller_for(role, row.method, row.path)
            expected = row.access[role]
            own = await call(client, world, caller, row.method, row.path, world.own_for(role, row.path))
            other = await call(client, world, caller, row.method, row.path, world.other)
            if expected == REFUSED:
                checks = [("own", own, {403}), ("other", other, {403})]
            elif expected == OWN:
                checks = [("own", own, None), ("other", other, {404} if "{" in row.path else None)]
            else:
                assert expected == ALLOWED
                checks = [("own", own, None), ("other", other, None)]
            for which, response, statuses in checks:
                if statuses is None:
                    ok = response.status_code not in (401, 403, 404) and response.status_code < 500
                else:
                    ok = response.status_code in statuses
                if not ok:
                    problems.append(
                        f"{row.method} {row.path} as {role} on {which} object: "
                        f"{response.status_code} {response.text[:120]}, table says {expected}"
                    )
    assert problems == []


class TestSignedBankCalls:
    async def test_unsigned_bank_call_is_refused(self, client: httpx.AsyncClient, world: World) -> None:
        response = await client.get("/v1/escrow-accounts", headers=bearer(world.callers["bank"].token))
        assert response.status_code == 401 and response.json()["code"] == "signature_missing"

    async def test_replayed_nonce_is_refused(self, client: httpx.AsyncClient, world: World) -> None:
        bank = world.callers["bank"].bank
        headers = {**bearer(bank.token), **sign_headers(bank.secret, bank.algorithm, "GET", "/v1/escrow-accounts", b"")}
        assert (await client.get("/v1/escrow-accounts", headers=headers)).status_code == 200
        replay = await client.get("/v1/escrow-accounts", headers=headers)
        assert replay.status_code == 401 and replay.json()["code"] == "signature_replayed"

    async def test_old_timestamp_is_refused(self, client: httpx.AsyncClient, world: World) -> None:
        bank = world.callers["bank"].bank
        signed = sign_headers(
            bank.secret, bank.algorithm, "GET", "/v1/escrow-accounts", b"", timestamp=int(time.time()) - 301
        )
        response = await client.get("/v1/escrow-accounts", headers={**bearer(bank.token), **signed})
        assert response.status_code == 401 and response.json()["code"] == "signature_expired"

    async def test_wrong_algorithm_is_refused(self, client: httpx.AsyncClient, world: World) -> None:
        bank = world.callers["bank"].bank
        signed = sign_headers(bank.secret, "hmac-sm3", "GET", "/v1/escrow-accounts", b"")
        response = await client.get("/v1/escrow-accounts", headers={**bearer(bank.token), **signed})
        assert response.status_code == 401 and response.json()["code"] == "signature_invalid"

    async def test_tampered_body_and_path_are_refused(self, client: httpx.AsyncClient, world: World) -> None:
        bank = world.callers["bank"].bank
        account = world.own["bank"]["escrow_account_id"]
        path = f"/v1/escrow-accounts/{account}/reject"
        signed = sign_headers(bank.secret, bank.algorithm, "POST", path, b'{"reason": "a"}')
        tampered_body = await client.post(
            path,
            content=b'{"reason": "b"}',
            headers={**bearer(bank.token), **signed, **key(), "Content-Type": "application/json"},
        )
        assert tampered_body.status_code == 401 and tampered_body.json()["code"] == "signature_invalid"
        signed = sign_headers(bank.secret, bank.algorithm, "POST", path, b'{"reason": "a"}')
        other_path = path.replace("/reject", "/activate")
        tampered_path = await client.post(
            other_path,
            content=b'{"reason": "a"}',
            headers={**bearer(bank.token), **signed, **key(), "Content-Type": "application/json"},
        )
        assert tampered_path.status_code == 401 and tampered_path.json()["code"] == "signature_invalid"

    async def test_sm3_bank_works_end_to_end(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        regulator = await regulator_token(session)
        bank = await onboard_bank(client, regulator, "SM3B", algorithm="hmac-sm3")
        response = await client.get("/v1/escrow-accounts", auth=bank.auth)
        assert response.status_code == 200, response.text


class TestAbuseLimit:
    async def test_repeated_failures_get_429(self, client: httpx.AsyncClient, app: Litestar) -> None:
        app.state.limiter.limit = 3
        statuses = [(await client.get("/v1/me", headers=bearer("esk_reg_guess"))).status_code for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        blocked = await client.get("/v1/me", headers=bearer("esk_reg_guess"))
        assert blocked.json()["code"] == "too_many_auth_failures" and int(blocked.headers["retry-after"]) > 0


class TestClosuresAndFundKeepToTheirParties:
    """Lists and objects of closures and the fund: a merchant sees only the closures it is a party to, a consumer
    only its own statements, a bank only its own instructions, and the fund only the regulator."""

    async def test_a_merchant_lists_only_the_closures_it_is_party_to(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        closures = world.closures
        assert closures is not None

        async def listed(caller: Caller) -> set[str]:
            response = await client.get("/v1/closures", **caller.auth())
            assert response.status_code == 200, response.text
            return {closure["id"] for closure in response.json()}

        assert set(closures.ids.values()) <= await listed(world.callers["regulator"])
        assert await listed(closures.closing) == {closures.ids["closing"]}
        assert await listed(closures.settled_merchant) == {closures.ids["settled"]}
        # the successor sees the closure whose cards it may take over, and no other
        assert await listed(closures.successor) == {closures.ids["closing"]}
        assert await listed(world.callers["merchant"]) == set()

    async def test_another_merchants_closure_its_items_and_plan_are_404(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        closures = world.closures
        assert closures is not None
        settled = closures.ids["settled"]
        regulator, own = world.callers["regulator"], closures.settled_merchant
        items = await client.get(f"/v1/closures/{settled}/items", **regulator.auth())
        assert items.status_code == 200 and len(items.json()["items"]) == 1, items.text
        csv = await client.get(f"/v1/closures/{settled}/plan.csv", **own.auth())
        assert csv.status_code == 200 and closures.settled_card in csv.text, csv.text
        assert (await client.get(f"/v1/closures/{settled}/items", **own.auth())).json() == items.json()
        for caller in (closures.closing, closures.successor, world.callers["merchant"]):
            for suffix in ("", "/items", "/plan.csv"):
                response = await client.get(f"/v1/closures/{settled}{suffix}", **caller.auth())
                assert response.status_code == 404, (suffix, response.text)
                assert closures.settled_card not in response.text
        for role in ("bank", "consumer"):
            response = await client.get(f"/v1/closures/{settled}/items", **world.callers[role].auth())
            assert response.status_code == 403, response.text

    async def test_only_the_closing_merchant_proposes_its_successor(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        closures = world.closures
        assert closures is not None
        closing = closures.ids["closing"]
        proposal = {
            "successor_merchant_id": world.own["merchant"]["merchant_id"],
            "deadline": closures.takeover_deadline,
        }
        for caller in (closures.successor, world.callers["merchant"]):
            response = await client.post(
                f"/v1/closures/{closing}/takeover", json=proposal, headers={**caller.auth()["headers"], **key()}
            )
            assert response.status_code == 404, response.text
        shown = await client.get(f"/v1/closures/{closing}", **world.callers["regulator"].auth())
        assert shown.json()["successor_merchant_id"] == closures.successor_id, shown.text

    async def test_a_merchant_cannot_close_another_merchant(self, client: httpx.AsyncClient, world: World) -> None:
        other_merchant = world.other["merchant_id"]
        response = await client.post(
            "/v1/closures",
            json={
                "merchant_id": other_merchant,
                "effective_on": (date.today() + timedelta(days=60)).isoformat(),
                "reason": "not mine to close",
            },
            headers={**bearer(world.merchant_token), **key()},
        )
        # merchant_id is the regulator's field: a merchant only ever announces its own closure
        assert response.status_code in (201, 403, 422), response.text
        if response.status_code == 201:
            assert response.json()["merchant_id"] == world.own["merchant"]["merchant_id"], response.text
        regulator = world.callers["regulator"]
        listed = await client.get("/v1/closures", **regulator.auth())
        assert other_merchant not in {closure["merchant_id"] for closure in listed.json()}, listed.text
        merchant = await client.get(f"/v1/merchants/{other_merchant}", **regulator.auth())
        assert merchant.status_code == 200 and merchant.json()["status"] == "active", merchant.text

    async def test_a_consumer_sees_only_its_own_closure_statements(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        closures = world.closures
        assert closures is not None
        theirs = await client.get("/v1/me/closure-statements", headers=bearer(closures.settled_consumer))
        assert theirs.status_code == 200, theirs.text
        assert [statement["card_id"] for statement in theirs.json()] == [closures.settled_card]
        mine = await client.get("/v1/me/closure-statements", headers=bearer(world.consumer_token))
        assert mine.status_code == 200 and mine.json() == [], mine.text

    @pytest.mark.parametrize("path", ["/v1/fund", "/v1/fund/claims", "/v1/fund/contributions"])
    async def test_the_fund_is_the_regulators_only(self, client: httpx.AsyncClient, world: World, path: str) -> None:
        closures = world.closures
        assert closures is not None
        shown = await client.get(path, **world.callers["regulator"].auth())
        assert shown.status_code == 200, shown.text
        if path == "/v1/fund/claims":
            claims = {claim["escrow_account_id"]: claim["outstanding"]["amount"] for claim in shown.json()}
            assert claims.get(closures.settled_account, 0) > 0, shown.text
        # not even the merchant the fund holds a claim on, nor the consumer it compensated
        for caller in (
            world.callers["bank"],
            world.callers["merchant"],
            world.callers["consumer"],
            closures.settled_merchant,
            Caller("consumer", closures.settled_consumer),
        ):
            response = await client.get(path, **caller.auth())
            assert response.status_code == 403, (caller.role, response.text)
        assert (await client.get(path)).status_code == 401

    async def test_a_bank_takes_only_its_own_instructions(self, client: httpx.AsyncClient, world: World) -> None:
        bank, theirs = world.callers["bank"], world.other["instruction_id"]
        taken = await client.post(f"/v1/instructions/{theirs}/sent", headers=key(), auth=bank.bank.auth)
        assert taken.status_code == 404, taken.text
        shown = await client.get(f"/v1/instructions/{theirs}", **world.callers["regulator"].auth())
        assert shown.status_code == 200 and shown.json()["status"] == "pending", shown.text
        listed = await client.get("/v1/instructions", params={"limit": 200}, auth=bank.bank.auth)
        assert listed.status_code == 200, listed.text
        assert listed.json()["items"] and {i["bank_id"] for i in listed.json()["items"]} == {bank.bank.id}
