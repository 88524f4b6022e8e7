"""Closures racing everything else: whatever commits first, no fen is lost or counted twice.

- A consumer's service, confirmation or refund racing the regulator's closure order on the same cards: either the
  request lands before the freeze (and the plan sees its effect: a service voided when the holds are released, a
  confirmed one released to the merchant, a refund's claim) or after it (and is refused, changing nothing); each
  card's value comes out whole either way. Between the freeze and the release of the holds nothing moves: a late
  confirmation is refused, also when it races the release itself.
- A confirmation caught by the freeze, in each order the locks can be taken in (its movement under way when the
  freeze takes the ledger's cut-off; waiting for its service record meanwhile; racing the release of the holds),
  and a refund under way when the freeze comes: every request is answered, none with a 500, and nothing waits for
  ever.
- Two closures starting their settlements at the same instant against a fund that covers only one of them fully:
  the fund's lock makes one count first, so their shares add up to what the fund had, never more.
- A contribution arriving while a settlement starts, and while a settlement batch commits: the fund pays its owed
  queue only with money no settlement counts on.

Every race goes through the API (concurrent requests on the test's event loop into one ASGI app, each request a
transaction of its own) or through ``settle`` and the jobs with sessions of their own; each ends with
``verify_database``, and most with the settlement executed by the banks.
"""

import asyncio
import random
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from escrow.closures import service as closures
from escrow.config import Settings
from escrow.jobs import run_jobs_once
from tests.closing import compute_plan, flat, order_closure
from tests.parties import Bank, bearer, key, regulator_token
from tests.test_closure_crash import (
    Shop,
    assert_verified,
    build_shop,
    check_paid,
    check_settled,
    closure_items,
    contribute,
    fund_overview,
    fund_ready,
    ok,
    rows,
    start_settlement,
)

pytestmark = pytest.mark.slow

TIMEOUT = 120  # seconds: a deadlock or a lost wake-up fails the test instead of hanging it
REFUSED = (409, 423)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"payout_hour": None, "db_pool_size": 30, "db_max_overflow": 0})


async def racing(*requests: Any, rng: random.Random | None = None) -> list[Any]:
    """Run the coroutines at once, each after a small random delay (so both orders happen over the rounds)."""

    async def later(request: Any) -> Any:
        if rng is not None:
            await asyncio.sleep(rng.uniform(0, 0.03))
        return await request

    return list(await asyncio.wait_for(asyncio.gather(*(later(r) for r in requests)), TIMEOUT))


async def shop_with_cards(client: httpx.AsyncClient, regulator: str, prices: list[int]) -> tuple[Shop, list[str]]:
    """A 40 % custody merchant and one card per price, each of a consumer of its own (10 sessions each)."""
    shop = await build_shop(client, regulator, "A")
    made = []
    for price in prices:
        plan_id = await shop.plan(kind="sessions", sessions=10, price=price)
        made.append((await shop.sell(plan_id, await shop.consumer()))["id"])
    return shop, made


async def settle_and_pay(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    settings: Settings,
    sessionmaker: async_sessionmaker,
    closure_id: str,
    *banks: Bank,
) -> list[Any]:
    await closures.settle(sessionmaker, settings, closure_id, batch_size=2)
    items = await check_settled(session, engine, closure_id)
    await check_paid(client, session, engine, closure_id, *banks)
    return items


# --- (a) a consumer's requests racing the closure order ---------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_services_confirmations_and_refunds_racing_the_closure_order_lose_nothing(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    settings: Settings,
    sessionmaker: async_sessionmaker,
    seed: int,
) -> None:
    rng = random.Random(seed)
    regulator = await regulator_token(session)
    fund_bank = await fund_ready(client, regulator)
    await contribute(client, regulator, 5_000)
    shop, made = await shop_with_cards(client, regulator, [10_000] * 5)
    base, recorded, confirmed, refunded, used_refunded = made
    # merchant_payable to set off against: 2 sessions of the first card confirmed (800 fen custodied)
    for card_id in (base, used_refunded):
        used = await shop.consume(card_id, sessions=2 if card_id == base else 1)
        await shop.confirm(card_id, used["id"])
    held = await shop.consume(confirmed, sessions=3)
    late = await shop.consume(base, sessions=1)  # only confirmed once the closure is ordered: refused
    quotes = {c: (await shop.quote(c))["amount"] for c in (refunded, used_refunded)}
    assert quotes == {refunded: 10_000, used_refunded: 9_000}

    record, confirm, refund, refund_used, ordered = await racing(
        shop.record(recorded, sessions=2),
        shop.confirm_request(confirmed, held["id"]),
        shop.refund_request(refunded, quotes[refunded]),
        shop.refund_request(used_refunded, quotes[used_refunded]),
        client.post(
            "/v1/closures",
            json={"merchant_id": shop.merchant.id, "reason": "vanished"},
            headers={**bearer(regulator), **key()},
        ),
        rng=rng,
    )
    closure = ok(ordered, 201)
    assert closure["status"] == "frozen"
    for response in (record, confirm, refund, refund_used):
        assert response.status_code in (200, 201, *REFUSED), response.text
    await assert_verified(engine)

    # the freeze voids nothing itself: what is still held waits for the release of the holds, and meanwhile nothing
    # can be confirmed
    async def service_states() -> dict[str, str]:
        found = await rows(
            session,
            "SELECT id, status FROM consumptions WHERE card_id = :recorded OR id = ANY(:ids)",
            recorded=recorded,
            ids=[late["id"], held["id"]],
        )
        return {s["id"]: s["status"] for s in found}

    states = await service_states()
    assert states.pop(late["id"]) == "pending_confirmation"
    assert states.pop(held["id"]) == ("confirmed" if confirm.status_code == 200 else "pending_confirmation")
    # what is left is the service recorded in the race, if it came before the freeze
    assert list(states.values()) == (["pending_confirmation"] if record.status_code == 201 else []), states
    states = await service_states()
    refused = await shop.confirm_request(base, late["id"])
    assert refused.status_code == 423 and refused.json()["code"] == "account_frozen", refused.text
    assert await service_states() == states
    # the release (computing the plan) racing one more late confirmation: the confirmation is refused either way
    planned, too_late = await racing(
        client.post(f"/v1/closures/{closure['id']}/plan", headers={**bearer(regulator), **key()}),
        shop.confirm_request(base, late["id"]),
        rng=rng,
    )
    assert planned.status_code == 200, planned.text
    assert too_late.status_code in REFUSED, too_late.text
    released = await service_states()
    assert released == {i: "voided" if state == "pending_confirmation" else state for i, state in states.items()}

    await start_settlement(client, regulator, closure["id"])
    items = await closure_items(session, closure["id"])
    cards = {i["card_id"]: i for i in items if i["kind"] == "card"}
    claims = {i["card_id"]: i for i in items if i["kind"] == "claim"}

    # a service recorded before the freeze was voided by the release; after it, refused: the card is whole either way
    services = await rows(session, "SELECT status FROM consumptions WHERE card_id = :c", c=recorded)
    assert [s["status"] for s in services] == (["voided"] if record.status_code == 201 else []), services
    assert cards[recorded]["unused"] == 10_000

    # a confirmation before the freeze released the service; after it, refused, and the service was voided
    if confirm.status_code == 200:
        assert released[held["id"]] == "confirmed" and cards[confirmed]["unused"] == 10_000 - held["value"]["amount"]
    else:
        assert released[held["id"]] == "voided" and cards[confirmed]["unused"] == 10_000

    # a refund before the freeze: the bank pays custody and set-off, the merchant's debt is a claim item; after
    # it: refused, and the card is an item of the closure. Never both, never neither.
    for card_id, response, whole in ((refunded, refund, 10_000), (used_refunded, refund_used, 9_000)):
        earlier = await rows(
            session,
            "SELECT * FROM refunds WHERE card_id = :c AND cause <> 'closure' AND status <> 'rejected'",
            c=card_id,
        )
        if response.status_code == 201:
            [row] = earlier
            assert card_id not in cards
            claim = claims[card_id]["unused"] if card_id in claims else 0
            assert claim == row["merchant_owes"]
            assert row["from_custody"] + row["set_off"] + claim == row["amount"] == whole
        else:
            assert earlier == [] and card_id not in claims
            assert cards[card_id]["unused"] == whole
    assert cards[base]["unused"] == 8_000

    await settle_and_pay(client, session, engine, settings, sessionmaker, closure["id"], shop.bank, fund_bank)
    totals = await shop.totals()
    assert totals["cards_protected"] == totals["refund_payable"] == 0, totals


# --- (b) two settlements starting at once against a fund that covers one ---------------------------------------


@pytest.mark.parametrize("first", ["bigger", "smaller"])
async def test_two_settlements_starting_at_once_never_share_out_more_than_the_fund_has(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    settings: Settings,
    sessionmaker: async_sessionmaker,
    first: str,
) -> None:
    regulator = await regulator_token(session)
    fund_bank = await fund_ready(client, regulator)
    # 40 % custody, nothing used, no set-off: each card asks the fund for 60 % of its price
    big, big_cards = await shop_with_cards(client, regulator, [10_000] * 3)  # asks 18 000
    small, small_cards = await shop_with_cards(client, regulator, [12_000] * 2)  # asks 14 400
    money = 20_000  # enough for either, not for both
    await contribute(client, regulator, money)
    assert (await fund_overview(client, regulator))["available"] == money
    one = await order_closure(client, regulator, big.merchant.id)
    other = await order_closure(client, regulator, small.merchant.id)
    closures_in_order = [one, other] if first == "bigger" else [other, one]
    started = await racing(*(start_settlement(client, regulator, c["id"]) for c in closures_in_order))
    assert [s["status"] for s in started] == ["settling", "settling"]
    paid = [sum(i["fund_paid"] for i in await closure_items(session, c["id"])) for c in (one, other)]
    owed = [sum(i["fund_owed"] for i in await closure_items(session, c["id"])) for c in (one, other)]
    assert [p + o for p, o in zip(paid, owed, strict=True)] == [18_000, 14_400]
    # one counted first and got all it asked; the other what was left
    assert sum(paid) == money, paid
    assert paid in ([18_000, 2_000], [5_600, 14_400]), paid
    assert (await fund_overview(client, regulator))["available"] == 0
    # and both run to the end at once
    await asyncio.wait_for(
        asyncio.gather(
            *(closures.settle(sessionmaker, settings, c["id"], batch_size=1) for c in (one, other)),
        ),
        TIMEOUT,
    )
    for closure, shop in ((one, big), (other, small)):
        await check_settled(session, engine, closure["id"])
        await check_paid(client, session, engine, closure["id"], shop.bank, fund_bank)
    fund = await fund_overview(client, regulator)
    assert fund["cash"] == 0 and fund["available"] == 0 and fund["owed_to_consumers"] == sum(owed), fund
    assert big_cards and small_cards


# --- (c) contributions racing a settlement ---------------------------------------------------------------------


async def owed_and_frozen(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    settings: Settings,
    sessionmaker: async_sessionmaker,
) -> tuple[str, Bank, Shop, dict[str, Any], Shop, dict[str, Any]]:
    """A closure settled while the fund was empty (the fund owes its consumers 12 000), and a second merchant's
    closure frozen whose consumers ask the fund for 18 000."""
    regulator = await regulator_token(session)
    fund_bank = await fund_ready(client, regulator)
    earlier, _ = await shop_with_cards(client, regulator, [10_000] * 2)
    settled = await order_closure(client, regulator, earlier.merchant.id)
    await start_settlement(client, regulator, settled["id"])
    await settle_and_pay(client, session, engine, settings, sessionmaker, settled["id"], earlier.bank, fund_bank)
    assert (await fund_overview(client, regulator))["owed_to_consumers"] == 12_000
    later, _ = await shop_with_cards(client, regulator, [10_000] * 3)
    frozen = await order_closure(client, regulator, later.merchant.id)
    return regulator, fund_bank, earlier, settled, later, frozen


async def paid_later(session: AsyncSession, closure_id: str) -> int:
    return sum(i["fund_owed_paid"] for i in await closure_items(session, closure_id))


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_contribution_racing_a_settlement_start_is_counted_once(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    settings: Settings,
    sessionmaker: async_sessionmaker,
    seed: int,
) -> None:
    regulator, fund_bank, earlier, settled, later, frozen = await owed_and_frozen(
        client, session, engine, settings, sessionmaker
    )
    money = 20_000  # the owed 12 000, and 8 000 of the 18 000 the new closure asks
    contributed, started = await racing(
        contribute(client, regulator, money),
        start_settlement(client, regulator, frozen["id"]),
        rng=random.Random(seed),
    )
    assert started["status"] == "settling"
    old = await paid_later(session, settled["id"])
    new = sum(i["fund_paid"] for i in await closure_items(session, frozen["id"]))
    # contribution first: it pays the queue, the start gets the rest; start first: it finds the fund empty
    assert (old, new) in ((12_000, 8_000), (12_000, 0)), (old, new, contributed)
    fund = await fund_overview(client, regulator)
    assert fund["available"] == money - old - new >= 0, fund
    await settle_and_pay(client, session, engine, settings, sessionmaker, frozen["id"], later.bank, fund_bank)
    await check_paid(client, session, engine, settled["id"], earlier.bank, fund_bank)
    fund = await fund_overview(client, regulator)
    assert fund["cash"] == money - old - new and fund["owed_to_consumers"] == 12_000 + 18_000 - old - new, fund


class RaceNotSetUp(RuntimeError):
    """The interleaving the test needs did not happen (a failure of the test, not of the code under test)."""


async def _lock_waits(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(
            await connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
            or 0
        )


async def _until_lock_waits(engine: AsyncEngine, count: int, *tasks: asyncio.Task) -> None:
    for _ in range(200):
        if await _lock_waits(engine) >= count or any(t.done() for t in tasks):
            break
        await asyncio.sleep(0.02)
    if any(t.done() for t in tasks) or await _lock_waits(engine) < count:
        raise RaceNotSetUp(f"expected {count} sessions waiting on locks")


async def test_a_contribution_while_a_settlement_batch_commits_pays_only_free_money(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    settings: Settings,
    sessionmaker: async_sessionmaker,
) -> None:
    regulator = await regulator_token(session)
    fund_bank = await fund_ready(client, regulator)
    await contribute(client, regulator, 18_000)
    # a closure whose consumers ask the fund for 18 000: all of the fund is fixed for it
    settling_shop, _ = await shop_with_cards(client, regulator, [10_000] * 3)
    settling = await order_closure(client, regulator, settling_shop.merchant.id)
    await start_settlement(client, regulator, settling["id"])
    assert [i["fund_paid"] for i in await closure_items(session, settling["id"])] == [6_000] * 3
    # another closure, settled meanwhile with nothing free in the fund: the fund owes its consumers 12 000
    owed_shop, _ = await shop_with_cards(client, regulator, [10_000] * 2)
    owed = await order_closure(client, regulator, owed_shop.merchant.id)
    await start_settlement(client, regulator, owed["id"])
    await closures.settle(sessionmaker, settings, owed["id"])
    fund = await fund_overview(client, regulator)
    assert (fund["available"], fund["owed_to_consumers"]) == (0, 12_000), fund

    # The interleaving, held in place with row and table locks taken here:
    # 1. a batch of the settling closure has read its items and waits for its first card (locked here);
    first_card = (await closure_items(session, settling["id"]))[0]["card_id"]
    card_gate = await engine.connect()
    await card_gate.begin()
    await card_gate.execute(text("SELECT id FROM cards WHERE id = :id FOR UPDATE"), {"id": first_card})

    async def one_batch() -> None:
        async with sessionmaker() as batch, batch.begin():
            await closures.settle_batch(batch, settings, settling["id"], 1)

    batch_task = asyncio.create_task(one_batch())
    await _until_lock_waits(engine, 1, batch_task)
    # 2. a LOCK TABLE queued behind the batch keeps new readers of closure_items waiting until the batch commits;
    table_gate = await engine.connect()
    await table_gate.begin()
    gate_task = asyncio.create_task(table_gate.execute(text("LOCK TABLE closure_items IN ACCESS EXCLUSIVE MODE")))
    await _until_lock_waits(engine, 2, batch_task, gate_task)
    # 3. 5 000 come in (the fund's only free money): the contribution reads the fund's cash, then waits to read
    #    the settlements' reserve;
    contribution = asyncio.create_task(contribute(client, regulator, 5_000))
    await _until_lock_waits(engine, 3, batch_task, gate_task, contribution)
    # 4. the batch goes on and commits, then the contribution reads the reserve.
    await card_gate.rollback()
    await card_gate.close()
    await asyncio.wait_for(batch_task, TIMEOUT)
    await asyncio.wait_for(gate_task, TIMEOUT)
    await table_gate.rollback()
    await table_gate.close()
    await asyncio.wait_for(contribution, TIMEOUT)

    # the owed queue got the contribution's 5 000, not a fen of what the settling closure was promised
    assert await paid_later(session, owed["id"]) == 5_000
    await settle_and_pay(client, session, engine, settings, sessionmaker, settling["id"], settling_shop.bank, fund_bank)
    await check_paid(client, session, engine, owed["id"], owed_shop.bank, fund_bank)
    fund = await fund_overview(client, regulator)
    assert fund["cash"] == 0 and fund["owed_to_consumers"] == 12_000 - 5_000, fund
    await assert_verified(engine)


async def _gate(engine: AsyncEngine, *statements: str, **params: Any) -> AsyncConnection:
    """A transaction of the test's own holding the locks the statements take, until it is rolled back."""
    gate = await engine.connect()
    await gate.begin()
    for sql in statements:
        await gate.execute(text(sql), params)
    return gate


# A movement that raises a balance of the escrow account ``:book`` adds to one of the account's slot rows (chosen by
# backend): these statements write all of them and hold them, so the movement waits there, inside the ledger, with
# its share of the book's lock taken.
_SLOT_GATE = (
    "INSERT INTO ledger_account_slots (account_id, slot, escrow_account_id, normal_side, non_negative)"
    " SELECT a.id, s, a.escrow_account_id, a.normal_side, a.non_negative"
    "   FROM ledger_accounts a CROSS JOIN generate_series(1, 16) AS s WHERE a.escrow_account_id = :book"
    " ON CONFLICT DO NOTHING",
    "SELECT 1 FROM ledger_account_slots WHERE escrow_account_id = :book FOR UPDATE",
)


async def _open(gate: AsyncConnection) -> None:
    await gate.rollback()
    await gate.close()


async def _one_service_held(
    client: httpx.AsyncClient, session: AsyncSession
) -> tuple[str, Shop, str, dict[str, Any], dict[str, Any], dict[str, int]]:
    """A 40 % custody card of 10 000 fen with a service of 3 sessions awaiting confirmation; the card's detail and
    the escrow account's totals as they are."""
    regulator = await regulator_token(session)
    shop, [card_id] = await shop_with_cards(client, regulator, [10_000])
    held = await shop.consume(card_id, sessions=3)
    assert held["value"]["amount"] == 3_000
    return regulator, shop, card_id, held, await shop.detail(card_id), await shop.totals()


async def _service_state(client: httpx.AsyncClient, regulator: str, consumption_id: str) -> str:
    return ok(await client.get(f"/v1/consumptions/{consumption_id}", headers=bearer(regulator)))["status"]


def _ordering(client: httpx.AsyncClient, regulator: str, merchant_id: str) -> asyncio.Task:
    return asyncio.create_task(
        client.post(
            "/v1/closures",
            json={"merchant_id": merchant_id, "reason": "vanished"},
            headers={**bearer(regulator), **key()},
        )
    )


def _frozen_refusal(response: httpx.Response) -> None:
    """A movement the frozen ledger refused: 423 account_frozen."""
    assert response.status_code == 423 and response.json()["code"] == "account_frozen", response.text


async def test_a_confirmation_under_way_when_the_freeze_comes_is_committed_first(
    client: httpx.AsyncClient, session: AsyncSession, engine: AsyncEngine
) -> None:
    regulator, shop, card_id, held, before, _ = await _one_service_held(client, session)
    # the confirmation takes its card, its service record and its share of the ledger's lock, then waits to add
    # to a balance of the escrow account (its slot rows: written here and held)
    gate = await _gate(engine, *_SLOT_GATE, book=shop.accounts[0])
    confirm = asyncio.create_task(shop.confirm_request(card_id, held["id"]))
    try:
        await _until_lock_waits(engine, 1, confirm)
        # the regulator orders the closure: the freeze's cut-off waits for the movement under way
        order = _ordering(client, regulator, shop.merchant.id)
        await _until_lock_waits(engine, 2, confirm, order)
    finally:
        await _open(gate)
    confirmed, ordered = await asyncio.wait_for(asyncio.gather(confirm, order), TIMEOUT)
    assert confirmed.status_code == 200, confirmed.text
    assert ordered.status_code == 201 and ordered.json()["status"] == "frozen", ordered.text
    assert await _service_state(client, regulator, held["id"]) == "confirmed"
    detail = await shop.detail(card_id)
    assert (detail["value_remaining"], detail["released"]) == (before["value_remaining"] - 3_000, 3_000), detail
    # nothing left to release: the plan refunds the 7 000 not delivered
    planned = flat((await compute_plan(client, regulator, ordered.json()["id"]))["totals"])
    assert (planned["items"], planned["unused"], planned["from_custody"]) == (1, 7_000, 2_800), planned
    await assert_verified(engine)


async def test_a_refund_under_way_when_the_freeze_comes_is_answered_not_deadlocked(
    client: httpx.AsyncClient, session: AsyncSession, engine: AsyncEngine
) -> None:
    regulator = await regulator_token(session)
    shop, [card_id] = await shop_with_cards(client, regulator, [10_000])
    quote = await shop.quote(card_id)
    assert quote["amount"] == 10_000
    before = await shop.totals()
    # the consumer's refund locks its card and takes its share of the ledger's lock, then waits to add to a balance
    # of the escrow account (its slot rows: written here and held); it has still to instruct the bank
    gate = await _gate(engine, *_SLOT_GATE, book=shop.accounts[0])
    refund = asyncio.create_task(shop.refund_request(card_id, quote["amount"]))
    try:
        await _until_lock_waits(engine, 1, refund)
        # the regulator orders the closure: the freeze's cut-off waits for the movement under way
        order = _ordering(client, regulator, shop.merchant.id)
        await _until_lock_waits(engine, 2, refund, order)
    finally:
        await _open(gate)
    refunded, ordered = await asyncio.wait_for(asyncio.gather(refund, order), TIMEOUT)
    # every request answered, none with a 500: the refund committed first (or, at worst, was refused and changed
    # nothing), and the closure is ordered
    assert ordered.status_code == 201 and ordered.json()["status"] == "frozen", ordered.text
    assert refunded.status_code in (201, *REFUSED), refunded.text
    planned = flat((await compute_plan(client, regulator, ordered.json()["id"]))["totals"])
    earlier = await rows(session, "SELECT * FROM refunds WHERE card_id = :c AND cause <> 'closure'", c=card_id)
    if refunded.status_code == 201:
        [row] = earlier
        # custody pays its 4 000 through the bank; the 6 000 the merchant owes is the closure's claim item
        assert (row["from_custody"], row["merchant_owes"]) == (4_000, 6_000), dict(row)
        assert (planned["items"], planned["unused"], planned["from_custody"]) == (1, 6_000, 0), planned
    else:
        assert earlier == [] and await shop.totals() == before
        assert (planned["items"], planned["unused"], planned["from_custody"]) == (1, 10_000, 4_000), planned
    await assert_verified(engine)


async def test_a_confirmation_waiting_while_the_freeze_commits_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, session: AsyncSession, engine: AsyncEngine
) -> None:
    regulator, shop, card_id, held, before, totals = await _one_service_held(client, session)
    # the confirmation takes its card's lock, then waits for the service record (held here)
    gate = await _gate(engine, "SELECT id FROM consumptions WHERE id = :id FOR UPDATE", id=held["id"])
    confirm = asyncio.create_task(shop.confirm_request(card_id, held["id"]))
    try:
        await _until_lock_waits(engine, 1, confirm)
        # the freeze needs nothing the confirmation holds: the closure is ordered while the confirmation waits
        order = _ordering(client, regulator, shop.merchant.id)
        done, _ = await asyncio.wait({order}, timeout=30)
        assert order in done, "the freeze waited for a card a confirmation holds"
    finally:
        await _open(gate)
    ordered = order.result()
    assert ordered.status_code == 201 and ordered.json()["status"] == "frozen", ordered.text
    # then the confirmation meets the frozen ledger: refused, and the service, card and money are as they were
    _frozen_refusal(await asyncio.wait_for(confirm, TIMEOUT))
    assert await _service_state(client, regulator, held["id"]) == "pending_confirmation"
    assert await shop.detail(card_id) == before
    assert await shop.totals() == totals
    await assert_verified(engine)
    # the release of the holds (computing the plan) voids the service: the card is whole again
    planned = flat((await compute_plan(client, regulator, ordered.json()["id"]))["totals"])
    assert (planned["items"], planned["unused"], planned["from_custody"]) == (1, 10_000, 4_000), planned
    assert await _service_state(client, regulator, held["id"]) == "voided"
    detail = await shop.detail(card_id)
    assert (detail["value_remaining"], detail["units_remaining"], detail["pending"]) == (10_000, 10, 0), detail
    await assert_verified(engine)


async def test_a_late_confirmation_racing_the_release_of_the_holds_is_refused(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    settings: Settings,
    sessionmaker: async_sessionmaker,
) -> None:
    regulator, shop, card_id, held, before, totals = await _one_service_held(client, session)
    closure = await order_closure(client, regulator, shop.merchant.id)
    assert await shop.detail(card_id) == before  # the freeze released nothing itself
    # a late confirmation takes the card, then waits for its service record (held here); the jobs' release of
    # the holds waits for the card
    gate = await _gate(engine, "SELECT id FROM consumptions WHERE id = :id FOR UPDATE", id=held["id"])
    confirm = asyncio.create_task(shop.confirm_request(card_id, held["id"]))
    try:
        await _until_lock_waits(engine, 1, confirm)
        jobs = asyncio.create_task(run_jobs_once(sessionmaker, settings))
        await _until_lock_waits(engine, 2, confirm, jobs)
    finally:
        await _open(gate)
    confirmed, report = await asyncio.wait_for(asyncio.gather(confirm, jobs), TIMEOUT)
    _frozen_refusal(confirmed)
    assert report["closure_holds_released"] == 1, report
    assert await _service_state(client, regulator, held["id"]) == "voided"
    detail = await shop.detail(card_id)
    assert (detail["value_remaining"], detail["units_remaining"], detail["pending"]) == (10_000, 10, 0), detail
    assert await shop.totals() == totals  # a voided service moves no money
    # released once: the jobs find nothing more, and a confirmation now finds the service voided
    assert (await run_jobs_once(sessionmaker, settings))["closure_holds_released"] == 0
    again = await shop.confirm_request(card_id, held["id"])
    assert again.status_code == 409, again.text
    planned = flat((await compute_plan(client, regulator, closure["id"]))["totals"])
    assert (planned["items"], planned["unused"], planned["from_custody"]) == (1, 10_000, 4_000), planned
    await assert_verified(engine)
