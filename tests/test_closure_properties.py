"""A closure pays every consumer exactly their unused value, split by the plan's rules, for random populations.

- ``TestSettlementThroughTheApi``: random merchants (rating A or B, one or two escrow accounts), cards of random
  plans (sessions, stored value, period) at 100 %, 60 % or 40 % custody (the custody model switched between
  sales), services confirmed or left pending, earlier refunds (some leaving the merchant owing a claim), a random
  fund balance (0 included) and a random small per-consumer cap. The closure is ordered (the freeze leaves the
  pending services held), the holds are released (by computing the plan, or by the jobs), the settlement started
  with that cap and settled in random batch sizes, and the banks carry out every instruction. Checked: each item's
  identity; each card's item is its remaining value before the closure (pending services voided) and each earlier
  refund's item what the merchant still owed; the set-off per escrow account is ``min(pool, Σ q)`` and the fund's share
  ``min(available, Σ demand)``, both shared by the module's cumulative rule; no consumer's fund share (paid and
  owed) exceeds the cap; every consumer was paid ``from_custody + set_off + fund_paid``; the ledger verifies.
- ``TestPlanStatement``: the plan's one SQL statement (``compute_plan``) on populations written straight into
  the tables inside a transaction that is rolled back (cards and earlier refunds of any amounts, a set-off pool
  posted to ``merchant_payable``, any fund balance and cap), against a reference computed here with exact
  integer arithmetic — no HTTP, so many more examples.

Profiles (``HYPOTHESIS_PROFILE``): ``ci`` (default, few examples) and ``long``.
"""

import itertools
import os
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, note
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from escrow import ledger
from escrow.auth.tokens import Principal
from escrow.closures import service as closures
from escrow.config import Settings
from escrow.jobs import run_jobs_once
from escrow.models import Closure
from tests.closing import compute_plan, order_closure
from tests.parties import Bank, bearer, regulator_token
from tests.test_closure_crash import (
    Shop,
    build_shop,
    check_paid,
    check_settled,
    closure_items,
    contribute,
    fund_overview,
    fund_ready,
)

_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
_HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
THROUGH_THE_API = hypothesis_settings(
    max_examples={"long": 150}.get(_PROFILE, 8), deadline=None, suppress_health_check=_HEALTH
)
STATEMENT = hypothesis_settings(
    max_examples={"long": 3000}.get(_PROFILE, 120), deadline=None, suppress_health_check=_HEALTH
)
REGULATOR = Principal("reg_property_test", "regulator", "tok_property_test")
_ids = itertools.count(1)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"payout_hour": None, "db_pool_size": 20})


# --- the reference: the plan's rules with exact integers --------------------------------------------------------


def shares(pool: int, claims: list[int]) -> list[int]:
    """The module's rule: all of each claim when the pool suffices, else ⌊pool·C_k/T⌋ - ⌊pool·C_{k-1}/T⌋."""
    total = sum(claims)
    if pool >= total:
        return list(claims)
    out, upto = [], 0
    for claim in claims:
        out.append(pool * (upto + claim) // total - pool * upto // total)
        upto += claim
    return out


@dataclass
class Expected:
    set_off: int
    demand: int
    fund_paid: int


def reference(items: list[dict[str, Any]], pools: dict[str, int], cap: int, available: int) -> list[Expected]:
    """What each item (in plan order: account, consumer, unused, from_custody) should get."""
    q = [i["unused"] - i["from_custody"] for i in items]
    set_off = [0] * len(items)
    for account in {i["escrow_account_id"] for i in items}:
        mine = [k for k, i in enumerate(items) if i["escrow_account_id"] == account]
        for k, share in zip(mine, shares(pools.get(account, 0), [q[k] for k in mine]), strict=True):
            set_off[k] = share
    used: dict[str, int] = {}
    demand = []
    for k, item in enumerate(items):
        rest = q[k] - set_off[k]
        before = used.get(item["consumer_id"], 0)
        demand.append(max(0, min(rest, cap - before)))
        used[item["consumer_id"]] = before + rest
    paid = shares(available, demand)
    return [Expected(s, d, p) for s, d, p in zip(set_off, demand, paid, strict=True)]


def check_against_reference(
    items: list[dict[str, Any]], pools: dict[str, int], cap: int, available: int
) -> list[Expected]:
    expected = reference(items, pools, cap, available)
    for item, want in zip(items, expected, strict=True):
        q = item["unused"] - item["from_custody"]
        got = (item["set_off"], item["fund_paid"], item["fund_owed"], item["unpaid"])
        assert got == (want.set_off, want.fund_paid, want.demand - want.fund_paid, q - want.set_off - want.demand), (
            dict(item),
            want,
        )
    # the summary laws, stated on their own
    for account in {i["escrow_account_id"] for i in items}:
        mine = [i for i in items if i["escrow_account_id"] == account]
        total_q = sum(i["unused"] - i["from_custody"] for i in mine)
        assert sum(i["set_off"] for i in mine) == min(pools.get(account, 0), total_q)
    assert sum(i["fund_paid"] for i in items) == min(available, sum(e.demand for e in expected))
    per_consumer: dict[str, int] = {}
    for item in items:
        assert 0 <= item["set_off"] <= item["unused"] - item["from_custody"], dict(item)
        assert item["fund_paid"] + item["fund_owed"] <= item["unused"] - item["from_custody"] - item["set_off"]
        per_consumer[item["consumer_id"]] = per_consumer.get(item["consumer_id"], 0) + item["fund_paid"]
        per_consumer[item["consumer_id"]] += item["fund_owed"]
    assert all(value <= cap for value in per_consumer.values()), per_consumer
    return expected


# --- random populations through the API -------------------------------------------------------------------------


@st.composite
def card_specs(draw: st.DrawFn, consumers: int, accounts: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(["sessions", "stored_value", "period"]), label="kind")
    spec: dict[str, Any] = {
        "consumer": draw(st.integers(0, consumers - 1), label="consumer"),
        "account": draw(st.integers(0, accounts - 1), label="account"),
        "model": draw(st.sampled_from(["ratio", "ratio", "full"]), label="custody model"),
    }
    if kind == "sessions":
        n = draw(st.integers(1, 10), label="sessions")
        price = draw(st.one_of(st.integers(n, n * 3), st.integers(n, 300_000)), label="price")
        spec["plan"] = {"kind": kind, "sessions": n, "price": price}
        units = n
    elif kind == "stored_value":
        face = draw(st.one_of(st.integers(1, 20), st.integers(1, 300_000)), label="face value")
        price = draw(st.integers(1, face), label="price")
        spec["plan"] = {"kind": kind, "face_value": face, "price": price}
        units = face
    else:
        days = draw(st.integers(1, 30), label="days")
        price = draw(st.integers(days, 200_000), label="price")
        spec["plan"] = {"kind": kind, "days": days, "price": price}
        units = 0
    services = []
    if units:
        for _ in range(draw(st.integers(0, 3), label="services")):
            left = units - sum(u for u, _ in services)
            if left <= 0:
                break
            used = draw(st.one_of(st.integers(1, min(left, 3)), st.integers(1, left)), label="units")
            services.append((used, draw(st.booleans(), label="confirmed")))
    spec["services"] = services
    spec["refund"] = draw(st.sampled_from([None, None, "early", "late"]), label="earlier refund")
    return spec


@st.composite
def populations(draw: st.DrawFn) -> dict[str, Any]:
    accounts = draw(st.integers(1, 2), label="escrow accounts")
    consumers = draw(st.integers(1, 4), label="consumers")
    return {
        "rating": draw(st.sampled_from("AB"), label="rating"),
        "accounts": accounts,
        "consumers": consumers,
        "cards": draw(st.lists(card_specs(consumers, accounts), min_size=1, max_size=8), label="cards"),
        "contribution": draw(
            st.one_of(st.just(0), st.integers(1, 30_000), st.integers(30_000, 3_000_000)), label="contribution"
        ),
        "cap": draw(st.one_of(st.just(0), st.integers(1, 40_000), st.just(500_000)), label="cap"),
        "batch": draw(st.integers(1, 4), label="batch size"),
        "release": draw(st.sampled_from(["plan", "jobs"]), label="holds released by"),
    }


@dataclass
class CardModel:
    id: str
    spec: dict[str, Any]
    consumer: str
    ratio_bp: int
    price: int
    confirmed: int = 0  # value of confirmed services
    pending: list[str] = field(default_factory=list)
    refund: dict[str, Any] | None = None

    @property
    def remaining(self) -> int:
        """Value left once pending services are voided (the release of the holds after the freeze)."""
        if self.refund is not None:
            return 0
        return self.price - self.confirmed


_world: dict[str, tuple[str, Bank]] = {}


async def the_regulator_and_fund(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> tuple[str, Bank]:
    """One regulator token and fund bank per test database (examples share them, and the fund)."""
    assert settings.database_url is not None
    if settings.database_url not in _world:
        regulator = await regulator_token(session)
        _world[settings.database_url] = (regulator, await fund_ready(client, regulator))
    return _world[settings.database_url]


class TestSettlementThroughTheApi:
    @pytest.mark.slow
    @THROUGH_THE_API
    @given(population=populations())
    async def test_each_consumer_gets_their_unused_value_by_the_rules(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        engine: AsyncEngine,
        settings: Settings,
        sessionmaker: async_sessionmaker,
        population: dict[str, Any],
    ) -> None:
        regulator, fund_bank = await the_regulator_and_fund(client, session, settings)
        shop = await build_shop(client, regulator, population["rating"], population["accounts"])
        consumers = [await shop.consumer() for _ in range(population["consumers"])]
        ratio = {"A": 4000, "B": 6000}[population["rating"]]
        cards = await self.sell(shop, population["cards"], consumers, ratio)
        await self.use(shop, cards)
        closure_id = await self.close(client, shop, cards, population["release"], sessionmaker, settings)
        # the pools and the fund as they stand when the plan is fixed
        pools = {a: (await shop.totals(a))["merchant_payable"] for a in shop.accounts}
        if population["contribution"]:
            await contribute(client, regulator, population["contribution"])
        available = (await fund_overview(client, regulator))["available"]
        cap = population["cap"]
        fixed = settings.model_copy(update={"fund_cap_per_consumer": cap})
        async with sessionmaker() as start_session, start_session.begin():
            await closures.start(start_session, fixed, REGULATOR, closure_id)
        planned = await closure_items(session, closure_id)
        note(f"pools {pools}, fund available {available}, cap {cap}")
        for item in planned:
            note(str({k: item[k] for k in ("seq", "kind", "card_id", "consumer_id", "unused", "from_custody")}))
        self.check_plan(cards, planned, pools, cap, available)
        await closures.settle(sessionmaker, fixed, closure_id, batch_size=population["batch"])
        settled = await check_settled(session, engine, closure_id)
        executed = {"status": "planned", "done_at": None, "paid_at": None, "refund_id": None}  # marks of execution
        assert [dict(i) | executed for i in settled] == [dict(i) | {"refund_id": None} for i in planned], (
            "the plan executed is the plan fixed at the start"
        )
        await check_paid(client, session, engine, closure_id, *shop.banks, fund_bank)
        for account in shop.accounts:
            totals = await shop.totals(account)
            assert totals["cards_protected"] == totals["refund_payable"] == 0, totals
        event(f"items {len(planned)}")
        event("fund short" if sum(i["fund_owed"] for i in planned) else "fund enough")
        event("cap binds" if any(i["unpaid"] for i in planned) else "cap free")
        event("set-off pro rata" if any(i["set_off"] < i["unused"] - i["from_custody"] for i in planned) else "full")

    async def sell(self, shop: Shop, specs: list[dict[str, Any]], consumers: list[str], ratio: int) -> list[CardModel]:
        cards = []
        model = "ratio"
        # sold grouped by custody model, switched in between (cards keep the ratio of their sale)
        for spec in sorted(specs, key=lambda s: s["model"] != model):
            if spec["model"] != model:
                model = spec["model"]
                await shop.model(model)
            plan_id = await shop.plan(**spec["plan"])
            consumer = consumers[spec["consumer"]]
            sold = await shop.sell(
                plan_id, consumer, shop.accounts[spec["account"]] if len(shop.accounts) > 1 else None
            )
            expected_ratio = ratio if model == "ratio" else 10_000
            assert sold["custody_ratio_bp"] == expected_ratio, sold
            cards.append(CardModel(sold["id"], spec, consumer, expected_ratio, spec["plan"]["price"]))
        return cards

    async def use(self, shop: Shop, cards: list[CardModel]) -> None:
        """Early refunds, then confirmed services (merchant_payable fills), late refunds, then pending services."""
        for card in cards:
            if card.spec["refund"] == "early":
                await self.refund(shop, card)
        for card in cards:
            if card.refund is None:
                for units, confirmed in card.spec["services"]:
                    if confirmed:
                        await self.serve(shop, card, units, confirm=True)
        for card in cards:
            if card.spec["refund"] == "late" and card.refund is None and card.remaining > 0:
                await self.refund(shop, card)
        for card in cards:
            if card.refund is None:
                for units, confirmed in card.spec["services"]:
                    if not confirmed:
                        await self.serve(shop, card, units, confirm=False)

    async def serve(self, shop: Shop, card: CardModel, units: int, *, confirm: bool) -> None:
        kind = card.spec["plan"]["kind"]
        if card.remaining == 0:
            return
        used = await shop.consume(card.id, **({"sessions": units} if kind == "sessions" else {"face": units}))
        if confirm:
            await shop.confirm(card.id, used["id"])
            card.confirmed += used["value"]["amount"]
        else:
            card.pending.append(used["id"])

    async def refund(self, shop: Shop, card: CardModel) -> None:
        quote = await shop.quote(card.id)
        if quote["amount"] == 0:
            return
        refund = await shop.refund(card.id)
        assert (
            refund["amount"] == quote["amount"] == refund["from_custody"] + refund["set_off"] + refund["merchant_owes"]
        )
        card.refund = refund
        event("earlier refund leaves a claim" if refund["merchant_owes"] else "earlier refund paid in full")

    async def close(
        self,
        client: httpx.AsyncClient,
        shop: Shop,
        cards: list[CardModel],
        release: str,
        sessionmaker: async_sessionmaker,
        settings: Settings,
    ) -> str:
        closure = await order_closure(client, shop.regulator, shop.merchant.id)
        assert closure["status"] == "frozen"
        pending = [consumption for card in cards for consumption in card.pending]

        async def states() -> set[str]:
            found = [await client.get(f"/v1/consumptions/{c}", headers=bearer(shop.regulator)) for c in pending]
            assert all(f.status_code == 200 for f in found), found
            return {f.json()["status"] for f in found}

        # the freeze leaves the services held; releasing the holds voids every one of them
        assert await states() <= {"pending_confirmation"}
        if release == "plan":
            await compute_plan(client, shop.regulator, closure["id"])
        else:
            report = await run_jobs_once(sessionmaker, settings)
            assert report["closure_holds_released"] == (1 if pending else 0), report
        assert await states() <= {"voided"}
        event(f"{len(pending)} services held" if len(pending) < 3 else "3+ services held")
        for card in cards:
            detail = await shop.detail(card.id)
            if card.refund is None and card.remaining > 0:
                assert detail["status"] == "active" and detail["value_remaining"] == card.remaining, (card, detail)
                card.spec["protected_left"] = detail["protected"]
        return closure["id"]

    def check_plan(
        self, cards: list[CardModel], planned: list[Any], pools: dict[str, int], cap: int, available: int
    ) -> None:
        by_card = {i["card_id"]: i for i in planned if i["kind"] == "card"}
        claims = {i["refund_id"]: i for i in planned if i["kind"] == "claim"}
        assert len(by_card) + len(claims) == len(planned)
        for card in cards:
            if card.remaining > 0:
                item = by_card[card.id]
                # the card's remaining value before the closure, its custodied part paid from custody
                assert item["unused"] == card.remaining and item["from_custody"] == card.spec["protected_left"]
                assert item["consumer_id"] == card.consumer
            else:
                assert card.id not in by_card
            if card.refund is not None and card.refund["merchant_owes"] > 0:
                claim = claims[card.refund["id"]]
                assert (claim["unused"], claim["from_custody"]) == (card.refund["merchant_owes"], 0)
                assert claim["card_id"] == card.id and claim["consumer_id"] == card.consumer
        owed = {c.refund["id"] for c in cards if c.refund is not None and c.refund["merchant_owes"] > 0}
        assert set(claims) == owed
        # the consumer's whole claim, and only it
        for consumer in {c.consumer for c in cards}:
            mine = [c for c in cards if c.consumer == consumer]
            due = sum(c.remaining for c in mine) + sum(c.refund["merchant_owes"] for c in mine if c.refund)
            assert sum(i["unused"] for i in planned if i["consumer_id"] == consumer) == due
        check_against_reference([dict(i) for i in planned], pools, cap, available)


# --- the plan's statement on any amounts ------------------------------------------------------------------------


@dataclass
class Template:
    merchant_id: str
    accounts: list[str]
    consumers: list[str]
    card_id: str


_templates: dict[str, Template] = {}


async def template(client: httpx.AsyncClient, session: AsyncSession, settings: Settings) -> Template:
    """A merchant with two escrow accounts, four consumers and one card sold through the API, to copy from."""
    assert settings.database_url is not None
    if settings.database_url not in _templates:
        regulator = await regulator_token(session)
        shop = await build_shop(client, regulator, "A", accounts=2)
        consumers = [await shop.consumer() for _ in range(4)]
        plan_id = await shop.plan(kind="sessions", sessions=10, price=10_000)
        card = await shop.sell(plan_id, consumers[0], shop.accounts[0])
        _templates[settings.database_url] = Template(shop.merchant.id, shop.accounts, consumers, card["id"])
    return _templates[settings.database_url]


@st.composite
def statement_populations(draw: st.DrawFn) -> dict[str, Any]:
    # tiny amounts, amounts of real cards, and amounts far beyond them (where the shares' quotients need exact
    # integer division: see the test of large amounts below)
    amounts = st.one_of(st.integers(1, 12), st.integers(1, 500_000), st.integers(10**8, 10**11))
    entries = []
    for _ in range(draw(st.integers(1, 25), label="items")):
        unused = draw(amounts, label="unused")
        entries.append(
            {
                "kind": draw(st.sampled_from(["card", "card", "claim"]), label="kind"),
                "account": draw(st.integers(0, 1), label="account"),
                "consumer": draw(st.integers(0, 3), label="consumer"),
                "unused": unused,
                "protected": draw(st.one_of(st.just(0), st.integers(0, unused), st.just(unused)), label="protected"),
            }
        )
    total = sum(e["unused"] for e in entries)
    money = st.one_of(st.just(0), st.integers(1, 50), st.integers(0, total), st.integers(total, 2 * total + 1))
    return {
        "entries": entries,
        "pools": [draw(money, label="pool 0"), draw(money, label="pool 1")],
        "available": draw(money, label="fund available"),
        "cap": draw(st.one_of(st.just(0), st.integers(1, 100), st.integers(0, total), st.just(10**13)), label="cap"),
    }


async def plan_of(session: AsyncSession, settings: Settings, base: Template, population: dict[str, Any]) -> list[Any]:
    """Write the population, compute the plan, read it back: all in one transaction, rolled back."""
    try:
        await session.execute(text("UPDATE cards SET status = 'cancelled' WHERE id = :id"), {"id": base.card_id})
        run = next(_ids)
        for n, entry in enumerate(population["entries"]):
            account, consumer = base.accounts[entry["account"]], base.consumers[entry["consumer"]]
            card_id = f"card_stmt_{run:06d}_{n:03d}"
            if entry["kind"] == "card":
                await session.execute(
                    text(
                        "INSERT INTO cards (id, merchant_id, escrow_account_id, plan_id, consumer_id, kind, status,"
                        " price, units_total, units_used, custody_ratio_bp, protected_paid, consumed, released,"
                        " refunded, protected_out, payment_reference, deposit_transaction_id, paid_at, starts_on,"
                        " valid_until, days_settled, transferred)"
                        " SELECT :id, merchant_id, :account, plan_id, :consumer, kind, 'active', :price, units_total,"
                        " 0, custody_ratio_bp, :protected, 0, 0, 0, 0, :reference, deposit_transaction_id, paid_at,"
                        " starts_on, valid_until, 0, 0 FROM cards WHERE id = :template"
                    ),
                    {
                        "id": card_id,
                        "account": account,
                        "consumer": consumer,
                        "price": entry["unused"],
                        "protected": entry["protected"],
                        "reference": f"PT-STMT-{run}-{n}",
                        "template": base.card_id,
                    },
                )
            else:
                await session.execute(
                    text(
                        "INSERT INTO refunds (id, card_id, escrow_account_id, consumer_id, cause, status, amount,"
                        " from_custody, set_off, merchant_owes, retained, computation)"
                        " VALUES (:id, :card, :account, :consumer, 'consumer', 'approved', :owes, 0, 0, :owes, 0, '{}')"
                    ),
                    {
                        "id": f"rfd_stmt_{run:06d}_{n:03d}",
                        "card": base.card_id,
                        "account": account,
                        "consumer": consumer,
                        "owes": entry["unused"],
                    },
                )
        for account, pool in zip(base.accounts, population["pools"], strict=True):
            current = (await ledger.balance(session, account, "merchant_payable")).available
            assert current == 0
            if pool:
                await ledger.post(
                    session,
                    ledger.Entry(account, "adjustment", ledger.transfer("custody_cash", "merchant_payable", pool)),
                )
        closure = Closure(
            id=f"clo_stmt_{run:06d}",
            merchant_id=base.merchant_id,
            mode="ordered",
            status="frozen",
            reason="statement test",
            requested_by=REGULATOR.id,
            effective_on=date.today(),
        )
        session.add(closure)
        await session.flush()
        fixed = settings.model_copy(update={"fund_cap_per_consumer": population["cap"]})
        count = await closures.compute_plan(session, fixed, closure, population["available"])
        items = (
            (
                await session.execute(
                    text("SELECT * FROM closure_items WHERE closure_id = :c ORDER BY seq"), {"c": closure.id}
                )
            )
            .mappings()
            .all()
        )
        assert count == len(items) == len(population["entries"])
        return [dict(i) for i in items]
    finally:
        await session.rollback()


def expected_inputs(base: Template, population: dict[str, Any], items: list[dict[str, Any]]) -> None:
    """Every card and claim written is one item, with its amounts."""
    written = sorted(
        (base.accounts[e["account"]], base.consumers[e["consumer"]], e["kind"], e["unused"], e["protected"])
        if e["kind"] == "card"
        else (base.accounts[e["account"]], base.consumers[e["consumer"]], e["kind"], e["unused"], 0)
        for e in population["entries"]
    )
    got = sorted((i["escrow_account_id"], i["consumer_id"], i["kind"], i["unused"], i["from_custody"]) for i in items)
    assert got == written
    assert [i["seq"] for i in items] == list(range(1, len(items) + 1))


class TestPlanStatement:
    @STATEMENT
    @given(population=statement_populations())
    async def test_the_plan_follows_the_rules_to_the_fen(
        self, client: httpx.AsyncClient, session: AsyncSession, settings: Settings, population: dict[str, Any]
    ) -> None:
        base = await template(client, session, settings)
        items = await plan_of(session, settings, base, population)
        expected_inputs(base, population, items)
        pools = dict(zip(base.accounts, population["pools"], strict=True))
        expected = check_against_reference(items, pools, population["cap"], population["available"])
        event("fund short" if sum(e.demand for e in expected) > population["available"] else "fund enough")
        event("cap binds" if any(i["unpaid"] for i in items) else "cap free")

    async def test_pro_rata_shares_are_exact_for_large_amounts(
        self, client: httpx.AsyncClient, session: AsyncSession, settings: Settings
    ) -> None:
        # 3708272933·3456174403 / 7663276100 = 1672448939.99999999987…: its floor is 1672448939 (a division
        # rounded to 16 significant digits would give one fen too many to the first item and one too few to the next)
        first, total, money = 3_456_174_403, 7_663_276_100, 3_708_272_933
        population = {
            "entries": [
                {"kind": "card", "account": 0, "consumer": 0, "unused": first, "protected": 0},
                {"kind": "card", "account": 0, "consumer": 1, "unused": total - first, "protected": 0},
            ],
            "pools": [0, 0],
            "available": money,
            "cap": 10**13,
        }
        assert money * first % total == total - 1  # the exact quotient is just below an integer
        base = await template(client, session, settings)
        items = await plan_of(session, settings, base, population)
        assert [i["unused"] for i in items] == [first, total - first]  # in this order
        pools = dict(zip(base.accounts, population["pools"], strict=True))
        check_against_reference(items, pools, population["cap"], population["available"])


def test_the_reference_agrees_with_worked_examples() -> None:
    """The reference itself, on numbers worked by hand: pool 10 over claims 3, 3, 4 (enough), and pool 5 over
    them: ⌊5·3/10⌋ = 1, ⌊5·6/10⌋ - 1 = 2, 5 - 3 = 2."""
    assert shares(10, [3, 3, 4]) == [3, 3, 4]
    assert shares(5, [3, 3, 4]) == [1, 2, 2]
    assert shares(0, [3, 0, 4]) == [0, 0, 0]
    items = [
        {"escrow_account_id": "a", "consumer_id": "x", "unused": 10, "from_custody": 4},  # q 6
        {"escrow_account_id": "a", "consumer_id": "x", "unused": 8, "from_custody": 0},  # q 8
        {"escrow_account_id": "b", "consumer_id": "y", "unused": 5, "from_custody": 5},  # q 0
    ]
    # pool 7 over q 6, 8 (T 14): 3, 4; the rest 3, 4; cap 5 for x: demand 3, 2; fund 4 over 5: ⌊4·3/5⌋ = 2, 2
    got = reference(items, {"a": 7}, 5, 4)
    assert [(e.set_off, e.demand, e.fund_paid) for e in got] == [(3, 3, 2), (4, 2, 2), (0, 0, 0)]
