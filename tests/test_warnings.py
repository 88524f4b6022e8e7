"""Early warnings (issue #14 §1): a worked example per signal, the lifecycle, access, reruns, regions.

Histories are built through the API; the clock is moved by test-only means, documented here:
- the run takes ``now`` (``escrow.risk.service.run_signals(session, settings, now)``, as the daily job passes it), so
  a test can look at the ledger from a later instant;
- rows that must lie in the past (a card paid 30 days ago, a service recorded 40 days ago) are created through the
  API and then dated back by writing their timestamps (``cards.paid_at``, ``consumptions.recorded_at``) directly in
  the test database — the only thing the API cannot do.
"""

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from escrow.config import Settings
from escrow.kit.clock import business_date, utcnow
from escrow.risk import service
from tests.closing import confirm_service, record_service
from tests.parties import (
    Bank,
    Merchant,
    bank_transaction_id,
    bearer,
    consumer_token,
    create_plan,
    key,
    onboard_bank,
    onboard_merchant,
    onboard_ratio_merchant,
    open_escrow_account,
    regulator_token,
    sell_and_pay,
)
from tests.reconciling import Deposit, credit, fee, send, statement_json

YUAN = 100
_phones = iter(range(1, 10_000))


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"payout_hour": None})


class World:
    def __init__(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        self.client, self.session = client, session

    async def start(self) -> "World":
        self.regulator = await regulator_token(self.session)
        self.bank: Bank = await onboard_bank(self.client, self.regulator, "WARN")
        self.accounts: dict[str, str] = {}
        return self

    async def shop(
        self, name: str, category: str = "other", region: str | None = "440306", *, rating: str | None = None
    ) -> Merchant:
        """A merchant with an active escrow account; with ``rating``, on the ratio model (A: 40 % in custody)."""
        if rating:
            merchant = await onboard_ratio_merchant(self.client, self.regulator, name, rating, category=category)
        else:
            merchant = await onboard_merchant(self.client, self.regulator, name, category)
        if region:
            changed = await self.client.post(
                f"/v1/merchants/{merchant.id}/region",
                json={"region": region, "reason": "test"},
                headers={**bearer(self.regulator), **key()},
            )
            assert changed.status_code == 200, changed.text
        self.accounts[merchant.id] = await open_escrow_account(self.client, merchant, self.bank)
        return merchant

    async def sell(self, merchant: Merchant, plan_id: str) -> tuple[str, str]:
        """A paid card to a new consumer: (card id, consumer token)."""
        consumer_id, token = await consumer_token(self.client, merchant, f"1391234{next(_phones):04d}")
        return await sell_and_pay(self.client, merchant, self.bank, plan_id, consumer_id), token

    async def service(self, merchant: Merchant, card_id: str) -> str:
        response = await self.client.post(
            f"/v1/cards/{card_id}/consumptions", json={"sessions": 1}, headers={**bearer(merchant.token), **key()}
        )
        assert response.status_code == 201, response.text
        return response.json()["id"]

    async def sell_many(self, merchant: Merchant, plan_id: str, cards: int) -> tuple[list[str], str]:
        """``cards`` paid cards of one consumer (a family's cards): (card ids, consumer token)."""
        consumer_id, token = await consumer_token(self.client, merchant, f"1391234{next(_phones):04d}")
        return [await sell_and_pay(self.client, merchant, self.bank, plan_id, consumer_id) for _ in range(cards)], token

    async def refund(self, consumer: str, card_id: str) -> dict:
        """The consumer ends the card at the quoted amount (approved and instructed at once)."""
        quote = await self.client.get(f"/v1/cards/{card_id}/refund-quote?cause=consumer", headers=bearer(consumer))
        assert quote.status_code == 200, quote.text
        refund = await self.client.post(
            f"/v1/cards/{card_id}/refunds",
            json={"cause": "consumer", "expected_amount": quote.json()["amount"]},
            headers={**bearer(consumer), **key()},
        )
        assert refund.status_code == 201, refund.text
        return refund.json()

    async def backdate(self, table: str, column: str, row_id: str, days: float) -> None:
        """Test-only clock: the row's timestamp moved ``days`` into the past."""
        await self.session.execute(
            text(f"UPDATE {table} SET {column} = {column} - make_interval(secs => :s) WHERE id = :id"),
            {"s": days * 86400, "id": row_id},
        )
        await self.session.commit()


@pytest.fixture
async def world(client: httpx.AsyncClient, session: AsyncSession) -> World:
    return await World(client, session).start()


async def run(sessionmaker: async_sessionmaker, settings: Settings, now: datetime | None = None):
    async with sessionmaker() as session:
        outcome = await service.run_signals(session, settings, now or utcnow())
        await session.commit()
    return outcome


async def warnings_of(client: httpx.AsyncClient, token: str, **params) -> list[dict]:
    response = await client.get("/v1/warnings", params=params, headers=bearer(token))
    assert response.status_code == 200, response.text
    return response.json()


def kinds(rows: list[dict], merchant: Merchant) -> list[str]:
    return sorted(w["kind"] for w in rows if w["merchant_id"] == merchant.id)


# --- regions ---------------------------------------------------------------------------------------------------


async def test_region_is_a_county_level_code_of_the_bundled_table(world: World, client: httpx.AsyncClient) -> None:
    merchant = await onboard_merchant(client, world.regulator, "No Region Yet")
    got = await client.get(f"/v1/merchants/{merchant.id}", headers=bearer(world.regulator))
    assert got.json()["region"] is None
    for bad in ("440300", "999999", "44030", "\uff14\uff14\uff10\uff13\uff10\uff16"):
        refused = await client.post(
            f"/v1/merchants/{merchant.id}/region",
            json={"region": bad, "reason": "move"},
            headers={**bearer(world.regulator), **key()},
        )
        assert refused.status_code == 422, (bad, refused.text)
    moved = await client.post(
        f"/v1/merchants/{merchant.id}/region",
        json={"region": "441900", "reason": "move"},  # 东莞市: a prefecture-level city without counties
        headers={**bearer(world.regulator), **key()},
    )
    assert moved.status_code == 200 and moved.json()["region"] == "441900", moved.text
    denied = await client.post(
        f"/v1/merchants/{merchant.id}/region",
        json={"region": "440306", "reason": "self-service"},
        headers={**bearer(merchant.token), **key()},
    )
    assert denied.status_code == 403


# --- worked examples per signal -------------------------------------------------------------------------------


async def test_deep_discount_one_fen_below_half_the_list_price(
    world: World, client: httpx.AsyncClient, sessionmaker: async_sessionmaker, settings: Settings
) -> None:
    """10 sessions at a list price of 100 yuan each: a plan at 499.99 yuan is below 50 %, one at 500.00 is not."""
    below, at = await world.shop("Cut Price"), await world.shop("Half Price")
    plan = await create_plan(
        client, below, kind="sessions", sessions=10, price=49_999, list_price_per_session=100 * YUAN
    )
    await create_plan(client, at, kind="sessions", sessions=10, price=50_000, list_price_per_session=100 * YUAN)
    await run(sessionmaker, settings)
    rows = await warnings_of(client, world.regulator)
    assert kinds(rows, below) == ["deep_discount"] and kinds(rows, at) == []
    (warning,) = rows
    assert warning["level"] == "attention" and warning["state"] == "open"
    assert warning["figures"] == {
        "plans_below_threshold": 1,
        "plan_id": plan["id"],
        "price": 49_999,
        "list_value": 100_000,
        "price_percent_of_list": 50.0,  # 49.999 % rounded to two places
        "threshold_percent": 50,
    }


async def test_sales_surge_one_fen_above_three_times_the_weekly_average(
    world: World, client: httpx.AsyncClient, sessionmaker: async_sessionmaker, settings: Settings
) -> None:
    """9,000 yuan sold 30 days ago: a weekly average of 700 yuan over 90 days, so the surge threshold is 2,100 yuan
    in the last 7 days; 2,100.01 yuan raises the warning, 2,100.00 does not (floor set to 1,000 yuan)."""
    settings = settings.model_copy(update={"warning_sales_surge_floor": 1000 * YUAN})
    shops = {}
    for name, recent_price in (("Surging", 210_001), ("Steady", 210_000)):
        merchant = await world.shop(name)
        old_plan = await create_plan(client, merchant, kind="sessions", sessions=10, price=9000 * YUAN)
        new_plan = await create_plan(client, merchant, kind="sessions", sessions=10, price=recent_price)
        old_card, _ = await world.sell(merchant, old_plan["id"])
        await world.backdate("cards", "paid_at", old_card, 30)
        await world.sell(merchant, new_plan["id"])
        shops[name] = merchant
    await run(sessionmaker, settings)
    rows = await warnings_of(client, world.regulator, kind="sales_surge")
    assert [w["merchant_id"] for w in rows] == [shops["Surging"].id]
    assert rows[0]["figures"] == {
        "sales_last_7_days": 210_001,
        "cards_last_7_days": 1,
        "sales_previous_90_days": 900_000,
        "weekly_average_previous_90_days": 70_000,
        "factor": 3.0,
        "floor": 100_000,
    }
    assert rows[0]["level"] == "attention"
    # (both also show 30 days without a service while a card holds value: service_collapse, another signal)
    assert kinds(await warnings_of(client, world.regulator), shops["Steady"]) == ["service_collapse"]


async def _collapse_history(world: World, client: httpx.AsyncClient, name: str, recent: int) -> Merchant:
    """One card of 20 sessions paid 80 days ago; 15 services 20 to 70 days ago; ``recent`` services yesterday."""
    merchant = await world.shop(name)
    plan = await create_plan(client, merchant, kind="sessions", sessions=20, price=2000 * YUAN)
    card, _ = await world.sell(merchant, plan["id"])
    await world.backdate("cards", "paid_at", card, 80)
    for n in range(15):
        await world.backdate("consumptions", "recorded_at", await world.service(merchant, card), 20 + 3 * n)
    for _ in range(recent):
        await world.backdate("consumptions", "recorded_at", await world.service(merchant, card), 1)
    return merchant


async def test_service_collapse_one_service_below_forty_percent_of_the_previous_rate(
    world: World, client: httpx.AsyncClient, sessionmaker: async_sessionmaker, settings: Settings
) -> None:
    """15 services in the previous 60 days is 0.25 a day per card; 40 % of that over 14 days is 1.4 services:
    1 service raises the warning, 2 do not."""
    collapsing = await _collapse_history(world, client, "Fading", 1)
    holding = await _collapse_history(world, client, "Holding", 2)
    await run(sessionmaker, settings)
    rows = await warnings_of(client, world.regulator, kind="service_collapse")
    assert [w["merchant_id"] for w in rows] == [collapsing.id]
    assert rows[0]["figures"] == {
        "services_last_14_days": 1,
        "active_cards_last_14_days": 1,
        "services_previous_60_days": 15,
        "active_cards_previous_60_days": 1,
        "percent_of_previous_rate": 28.6,
        "threshold_percent": 40,
        "days_since_last_service": 1,
        "cards_holding_value": 1,
        "silent": False,
    }
    assert rows[0]["level"] == "attention"
    assert kinds(await warnings_of(client, world.regulator), holding) == []


async def test_service_silence_for_seven_days_while_cards_hold_value(
    world: World, client: httpx.AsyncClient, sessionmaker: async_sessionmaker, settings: Settings
) -> None:
    merchant = await world.shop("Silent")
    plan = await create_plan(client, merchant, kind="sessions", sessions=20, price=2000 * YUAN)
    card, _ = await world.sell(merchant, plan["id"])
    await world.backdate("cards", "paid_at", card, 10)
    await world.backdate("consumptions", "recorded_at", await world.service(merchant, card), 6.9)
    await run(sessionmaker, settings)
    assert await warnings_of(client, world.regulator, kind="service_collapse") == []
    await run(sessionmaker, settings, utcnow() + timedelta(hours=3))  # the last service now 7 days and a bit ago
    (warning,) = await warnings_of(client, world.regulator, kind="service_collapse")
    assert warning["level"] == "alert" and warning["figures"]["silent"] is True
    assert warning["figures"]["days_since_last_service"] == 7


async def test_unprotected_exposure_one_fen_above_twenty_percent_of_the_released_value(
    world: World, client: httpx.AsyncClient, sessionmaker: async_sessionmaker, settings: Settings
) -> None:
    """Two A-rated shops on the ratio model (40 % of each sale in custody). Each sells a card of 1,000 yuan, so
    600 yuan of it is outside custody; 20 % of the released value is the limit, so 600 yuan is too much once less than
    3,000 yuan was released in the last 12 months: 2,999.99 yuan released raises the warning, 3,000.00 does not."""
    shops = {}
    for name, released in (("Exposed", 299_999), ("Covered", 300_000)):
        merchant = await world.shop(name, rating="A")
        # a one-session card of the released amount, used and confirmed by its consumer: released in full
        used_plan = await create_plan(client, merchant, kind="sessions", sessions=1, price=released)
        used_card, consumer = await world.sell(merchant, used_plan["id"])
        await confirm_service(client, consumer, await record_service(client, merchant, used_card, 1))
        # the card still unused: 1,000 yuan paid, 400 in custody, 600 yuan unprotected
        open_plan = await create_plan(client, merchant, kind="sessions", sessions=10, price=1000 * YUAN)
        open_card, consumer = await world.sell(merchant, open_plan["id"])
        detail = (await client.get(f"/v1/cards/{open_card}", headers=bearer(consumer))).json()
        assert detail["unprotected"]["amount"] == 600 * YUAN, detail
        shops[name] = merchant
    await run(sessionmaker, settings)
    rows = await warnings_of(client, world.regulator)
    assert kinds(rows, shops["Exposed"]) == ["unprotected_exposure"] and kinds(rows, shops["Covered"]) == []
    (warning,) = rows
    assert warning["level"] == "attention"
    assert warning["figures"] == {
        "unprotected_outstanding": 60_000,
        "released_last_12_months": 299_999,
        "percent_of_released": 20.0,  # 20.00007 % rounded to two places
        "threshold_percent": 20,
        "threshold_amount": 100_000_000,
    }


async def test_refund_rate_one_card_short_of_five_requests_per_hundred(
    world: World, client: httpx.AsyncClient, sessionmaker: async_sessionmaker, settings: Settings
) -> None:
    """One refund request among 19 active cards is 5.26 per 100 cards, above the 5 of the threshold: a warning; the
    same request among 20 cards is exactly 5 per 100: none."""
    shops = {}
    for name, cards in (("Refunding", 19), ("Usual", 20)):
        merchant = await world.shop(name)
        plan = await create_plan(client, merchant, kind="sessions", sessions=10, price=100 * YUAN)
        card_ids, consumer = await world.sell_many(merchant, plan["id"], cards)
        await world.refund(consumer, card_ids[0])  # within the cooling-off days: the whole 100 yuan back
        shops[name] = merchant
    await run(sessionmaker, settings)
    rows = await warnings_of(client, world.regulator)
    assert kinds(rows, shops["Refunding"]) == ["refund_rate"] and kinds(rows, shops["Usual"]) == []
    (warning,) = rows
    assert warning["level"] == "attention"
    assert warning["figures"] == {
        "refund_requests_last_30_days": 1,
        "active_cards_last_30_days": 19,  # the refunded card was active in the window: it counts
        "per_100_active_cards": 5.26,
        "threshold_per_100": 5,
    }


async def test_dispute_rate_one_card_short_of_five_disputes_per_hundred(
    world: World, client: httpx.AsyncClient, sessionmaker: async_sessionmaker, settings: Settings
) -> None:
    """One disputed service among 19 active cards is 5.26 per 100 cards: a warning; among 20 cards, 5: none."""
    shops = {}
    for name, cards in (("Disputed", 19), ("Usual", 20)):
        merchant = await world.shop(name)
        plan = await create_plan(client, merchant, kind="sessions", sessions=10, price=100 * YUAN)
        card_ids, consumer = await world.sell_many(merchant, plan["id"], cards)
        service = await record_service(client, merchant, card_ids[0], 1)
        disputed = await client.post(
            f"/v1/consumptions/{service['id']}/dispute",
            json={"reason": "I was not there"},
            headers={**bearer(consumer), **key()},
        )
        assert disputed.status_code == 200, disputed.text
        shops[name] = merchant
    await run(sessionmaker, settings)
    rows = await warnings_of(client, world.regulator)
    assert kinds(rows, shops["Disputed"]) == ["dispute_rate"] and kinds(rows, shops["Usual"]) == []
    (warning,) = rows
    assert warning["level"] == "attention"
    assert warning["figures"] == {
        "disputes_last_30_days": 1,
        "active_cards_last_30_days": 19,
        "per_100_active_cards": 5.26,
        "threshold_per_100": 5,
    }


async def test_refund_overdue_one_day_past_its_due_date(
    world: World, client: httpx.AsyncClient, sessionmaker: async_sessionmaker, settings: Settings
) -> None:
    """A consumer ends a 100-yuan card the day it was bought (cooling-off): the refund is due within 5 days of
    approval (domain.md §5) and the bank does not pay it. On the due date nothing is raised; the day after, an
    alert. (The refund-rate threshold is moved out of the way, since one request on one card is 100 per 100, so only
    the overdue refund shows.)"""
    settings = settings.model_copy(update={"warning_refund_rate": 100})
    merchant = await world.shop("Slow Payer")
    plan = await create_plan(client, merchant, kind="sessions", sessions=10, price=100 * YUAN)
    card, consumer = await world.sell(merchant, plan["id"])
    refund = await world.refund(consumer, card)
    assert refund["status"] == "instructed"
    due_on = date.fromisoformat(refund["due_on"])
    assert due_on == business_date(utcnow(), settings.business_timezone) + timedelta(days=5)

    def noon(day: date) -> datetime:  # midday in Shanghai of a business date
        return datetime.combine(day, time(12), ZoneInfo(settings.business_timezone))

    # the due date: the bank may still pay today
    await run(sessionmaker, settings, noon(due_on))
    assert await warnings_of(client, world.regulator) == []
    # the day after: one day overdue, 100 yuan
    await run(sessionmaker, settings, noon(due_on + timedelta(days=1)))
    (warning,) = await warnings_of(client, world.regulator)
    assert warning["kind"] == "refund_overdue" and warning["merchant_id"] == merchant.id
    assert warning["level"] == "alert"
    assert warning["figures"] == {
        "overdue_refunds": 1,
        "overdue_amount": 10_000,
        "oldest_due_on": due_on.isoformat(),
        "days_overdue": 1,
    }
    assert (warning["period_start"], warning["period_end"]) == (
        due_on.isoformat(),
        (due_on + timedelta(days=1)).isoformat(),
    )


async def test_presence_one_service_above_half_confirmed_without_the_code(
    world: World, client: httpx.AsyncClient, sessionmaker: async_sessionmaker, settings: Settings
) -> None:
    """Shops that use presence codes: one service confirmed at the counter with the consumer's code, the others
    confirmed afterwards by the consumer. 2 of 3 without the code (66.67 %) is above the 50 % threshold: a warning;
    1 of 2 (50 %) is not."""
    shops = {}
    for name, without_code in (("Paper Roll", 2), ("At The Counter", 1)):
        merchant = await world.shop(name)
        plan = await create_plan(client, merchant, kind="sessions", sessions=10, price=1000 * YUAN)
        card, consumer = await world.sell(merchant, plan["id"])
        code = (await client.get(f"/v1/cards/{card}/presence-code", headers=bearer(consumer))).json()["code"]
        at_counter = await client.post(
            f"/v1/cards/{card}/consumptions",
            json={"sessions": 1, "presence_code": code},
            headers={**bearer(merchant.token), **key()},
        )
        assert at_counter.status_code == 201 and at_counter.json()["resolved_by"] == "presence", at_counter.text
        for _ in range(without_code):
            await confirm_service(client, consumer, await record_service(client, merchant, card, 1))
        shops[name] = merchant
    await run(sessionmaker, settings)
    rows = await warnings_of(client, world.regulator)
    assert kinds(rows, shops["Paper Roll"]) == ["presence"] and kinds(rows, shops["At The Counter"]) == []
    (warning,) = rows
    assert warning["level"] == "attention"
    assert warning["figures"] == {
        "confirmed_last_30_days": 3,
        "confirmed_with_presence_code": 1,
        "confirmed_without_presence_code": 2,
        "percent_without_code": 66.67,
        "presence_confirmations_last_90_days": 1,
        "threshold_percent": 50,
    }


async def test_money_trail_a_break_open_one_day_too_long(
    world: World, client: httpx.AsyncClient, sessionmaker: async_sessionmaker, settings: Settings
) -> None:
    """The bank's statement shows a 5-yuan fee the ledger never made: a reconciliation break. Open 5 days, it is
    within the allowance; open 6 days, it raises the warning."""
    merchant = await world.shop("Loose Ends")
    plan = await create_plan(client, merchant, kind="sessions", sessions=10, price=1000 * YUAN)
    card, _ = await world.sell(merchant, plan["id"])
    row = (
        await world.session.execute(
            text("SELECT payment_reference, deposit_transaction_id FROM cards WHERE id = :id"), {"id": card}
        )
    ).one()
    await world.session.rollback()
    deposit = Deposit(card, row[0], row[1], 1000 * YUAN)
    account = world.accounts[merchant.id]
    await send(client, world.bank, statement_json(account, [credit(deposit), fee(500)]))
    detected = (
        await world.session.execute(
            text("SELECT id, detected_at FROM reconciliation_breaks WHERE escrow_account_id = :a AND state = 'open'"),
            {"a": account},
        )
    ).all()
    await world.session.rollback()
    assert len(detected) == 1, detected
    detected_at = detected[0][1]
    # 5 days after it was found: none
    await run(sessionmaker, settings, detected_at + timedelta(days=5))
    assert await warnings_of(client, world.regulator) == []
    # 6 days after: attention, one break
    await run(sessionmaker, settings, detected_at + timedelta(days=6))
    (warning,) = await warnings_of(client, world.regulator)
    assert warning["kind"] == "money_trail" and warning["merchant_id"] == merchant.id
    assert warning["level"] == "attention"
    # PostgreSQL writes a timestamp without trailing zeros of its fraction (.85426, not .854260): compare instants
    oldest = warning["figures"].pop("oldest_break_detected_at")
    assert datetime.fromisoformat(oldest) == detected_at
    assert warning["figures"] == {
        "breaks_open_over_days": 1,
        "break_days": 5,
        "failed_payouts_last_30_days": 0,
        "unapplied_deposits_last_30_days": 0,
        "unapplied_amount": 0,
    }


async def test_money_trail_a_failed_payout_and_an_unapplied_deposit(
    world: World, client: httpx.AsyncClient, sessionmaker: async_sessionmaker, settings: Settings
) -> None:
    """One payout instruction the bank could not carry out raises the warning; one it executed does not. A deposit
    for one of its cards that could not be applied (the wrong amount) adds to it: two kinds of trouble, an alert."""
    shops = {}
    for name, outcome in (("Bounced", "failed"), ("Paid Out", "executed")):
        merchant = await world.shop(name)
        plan = await create_plan(client, merchant, kind="sessions", sessions=10, price=1000 * YUAN)
        card, consumer = await world.sell(merchant, plan["id"])
        await confirm_service(client, consumer, await record_service(client, merchant, card, 1))  # 100 yuan payable
        payout = await client.post("/v1/payout-runs", json={}, headers={**bearer(merchant.token), **key()})
        assert payout.status_code == 201, payout.text
        (instruction,) = payout.json()["instructions"]
        body = {"reason": "account frozen"} if outcome == "failed" else {"bank_transaction_id": bank_transaction_id()}
        reported = await client.post(
            f"/v1/instructions/{instruction['id']}/{outcome}", json=body, headers=key(), auth=world.bank.auth
        )
        assert reported.status_code == 200, reported.text
        shops[name] = merchant
    await run(sessionmaker, settings)
    rows = await warnings_of(client, world.regulator)
    assert kinds(rows, shops["Bounced"]) == ["money_trail"] and kinds(rows, shops["Paid Out"]) == []
    (warning,) = rows
    assert warning["level"] == "attention"
    assert warning["figures"] == {
        "breaks_open_over_days": 0,
        "break_days": 5,
        "oldest_break_detected_at": None,
        "failed_payouts_last_30_days": 1,
        "unapplied_deposits_last_30_days": 0,
        "unapplied_amount": 0,
    }
    # a consumer of Bounced pays 999 yuan for a 1,000-yuan card: the bank's deposit is kept unapplied
    merchant = shops["Bounced"]
    plan = await create_plan(client, merchant, kind="sessions", sessions=10, price=1000 * YUAN)
    consumer_id, _ = await consumer_token(client, merchant, f"1391234{next(_phones):04d}")
    sold = await client.post(
        "/v1/cards",
        json={"plan_id": plan["id"], "consumer_id": consumer_id},
        headers={**bearer(merchant.token), **key()},
    )
    assert sold.status_code == 201, sold.text
    refused = await client.post(
        "/v1/deposits",
        json={
            "payment_reference": sold.json()["payment"]["payment_reference"],
            "amount": {"amount": 999 * YUAN, "currency": "CNY"},
            "bank_transaction_id": bank_transaction_id(),
        },
        headers=key(),
        auth=world.bank.auth,
    )
    assert refused.status_code == 422, refused.text
    await run(sessionmaker, settings)
    (warning,) = await warnings_of(client, world.regulator)
    assert warning["level"] == "alert" and warning["runs"] == 2
    assert warning["figures"]["unapplied_deposits_last_30_days"] == 1
    assert warning["figures"]["unapplied_amount"] == 999 * YUAN
    assert warning["figures"]["failed_payouts_last_30_days"] == 1


# --- a vanishing gym, end to end ------------------------------------------------------------------------------


async def test_a_vanishing_gym_warns_in_the_order_it_vanishes(
    world: World, client: httpx.AsyncClient, sessionmaker: async_sessionmaker, settings: Settings
) -> None:
    """Day 0 is today; the history lies in the past (rows dated back) and the signals run at successive moments.

    - day -100: five members buy 20 sessions for 2,000 yuan (10,000 yuan);
    - days -74 to -31: one service a day (44 services);
    - day -31: a push: a plan of 20 sessions for 800 yuan (40 % of the 100-yuan list price), four cards sold
      (3,200 yuan in a week against a weekly average of 778 yuan);
    - days -30 to -16: services fade: two in 14 days;
    - day -10: two of the push's buyers ask for their money back.
    Runs on days -30, -16 and -5: deep discount and sales surge first, then service collapse, then refund rate.
    """
    settings = settings.model_copy(update={"warning_sales_surge_floor": 1000 * YUAN})
    gym = await world.shop("Vanishing Gym", category="gym")
    start = utcnow()

    def day(n: int) -> datetime:
        return start + timedelta(days=n)

    regular = await create_plan(
        client, gym, kind="sessions", sessions=20, price=2000 * YUAN, list_price_per_session=100 * YUAN
    )
    members = []
    for _ in range(5):  # day -100: five members, 2,000 yuan each
        card, _ = await world.sell(gym, regular["id"])
        await world.backdate("cards", "paid_at", card, 100)
        members.append(card)
    for n in range(44):  # days -74 … -31: a service a day
        service = await world.service(gym, members[n % 5])
        await world.backdate("consumptions", "recorded_at", service, 74 - n)
    push = await create_plan(
        client, gym, kind="sessions", sessions=20, price=800 * YUAN, list_price_per_session=100 * YUAN
    )
    await world.backdate("plans", "created_at", push["id"], 32)
    buyers = []
    for _ in range(4):  # day -31: four cards at 800 yuan
        card, consumer = await world.sell(gym, push["id"])
        await world.backdate("cards", "paid_at", card, 31)
        buyers.append((card, consumer))
    for ago in (25, 20):  # days -30 … -16: two services only
        await world.backdate("consumptions", "recorded_at", await world.service(gym, members[0]), ago)
    for card, consumer in buyers[:2]:  # day -10: two refund requests
        refund = await world.refund(consumer, card)
        await world.backdate("refunds", "requested_at", refund["id"], 10)

    # day -30: the push shows: deep discount (40 % of list) and a sales surge (3,200 yuan vs 3 x 778)
    await run(sessionmaker, settings, day(-30))
    rows = await warnings_of(client, world.regulator)
    assert kinds(rows, gym) == ["deep_discount", "sales_surge"]
    figures = {w["kind"]: w["figures"] for w in rows}
    assert figures["deep_discount"]["price_percent_of_list"] == 40.0
    assert figures["sales_surge"]["sales_last_7_days"] == 3200 * YUAN
    assert figures["sales_surge"]["sales_previous_90_days"] == 10_000 * YUAN
    # day -16: services collapsed: 2 services for 9 cards in 14 days against 44 for 9 cards in 60 days (19.5 %)
    await run(sessionmaker, settings, day(-16))
    rows = await warnings_of(client, world.regulator)
    assert kinds(rows, gym) == ["deep_discount", "sales_surge", "service_collapse"]
    (collapse,) = [w for w in rows if w["kind"] == "service_collapse"]
    assert collapse["figures"]["services_last_14_days"] == 2
    assert collapse["figures"]["services_previous_60_days"] == 44
    assert collapse["figures"]["percent_of_previous_rate"] == 19.5
    # day -5: refunds: 2 requests for 9 active cards, 22.22 per 100
    await run(sessionmaker, settings, day(-5))
    rows = await warnings_of(client, world.regulator)
    assert kinds(rows, gym) == ["deep_discount", "refund_rate", "sales_surge", "service_collapse"]
    (refunds,) = [w for w in rows if w["kind"] == "refund_rate"]
    assert refunds["figures"]["refund_requests_last_30_days"] == 2
    assert refunds["figures"]["active_cards_last_30_days"] == 9
    assert refunds["level"] == "alert"
    opened = {w["kind"]: datetime.fromisoformat(w["opened_at"]) for w in rows}
    assert opened["deep_discount"] == opened["sales_surge"] < opened["service_collapse"] < opened["refund_rate"]


# --- lifecycle, access, reruns --------------------------------------------------------------------------------


async def test_rerun_updates_the_live_warning_and_the_lifecycle(
    world: World, client: httpx.AsyncClient, sessionmaker: async_sessionmaker, settings: Settings
) -> None:
    mine, other = await world.shop("Cut Price"), await world.shop("Other Cut")
    for merchant in (mine, other):
        await create_plan(client, merchant, kind="sessions", sessions=10, price=20_000, list_price_per_session=10_000)
    first = await run(sessionmaker, settings)
    assert first.opened["deep_discount"] == 2
    second = await run(sessionmaker, settings)
    assert second.opened["deep_discount"] == 0 and second.updated["deep_discount"] == 2
    (warning,) = await warnings_of(client, mine.token)  # a merchant sees only its own
    assert warning["merchant_id"] == mine.id and warning["runs"] == 2 and warning["level"] == "alert"
    one = f"/v1/warnings/{warning['id']}"
    assert (await client.get(one, headers=bearer(other.token))).status_code == 404
    assert (await client.get(one, headers=bearer(mine.token))).status_code == 200
    refused = await client.post(one + "/acknowledge", json={"note": "mine"}, headers={**bearer(mine.token), **key()})
    assert refused.status_code == 403

    async def step(action: str, note: str) -> httpx.Response:
        return await client.post(f"{one}/{action}", json={"note": note}, headers={**bearer(world.regulator), **key()})

    acknowledged = await step("acknowledge", "called the owner")
    assert acknowledged.status_code == 200 and acknowledged.json()["state"] == "acknowledged"
    assert (await step("acknowledge", "again")).status_code == 409
    await run(sessionmaker, settings)  # still discounted: the acknowledged warning is updated
    got = (await client.get(one, headers=bearer(world.regulator))).json()
    assert got["state"] == "acknowledged" and got["runs"] == 3
    escalated = await step("escalate", "inspection ordered")
    assert escalated.json()["state"] == "escalated"
    resolved = await step("resolve", "plan withdrawn")
    assert resolved.status_code == 200 and resolved.json()["state"] == "resolved"
    assert [n["action"] for n in resolved.json()["notes"]] == ["acknowledge", "escalate", "resolve"]
    assert (await step("resolve", "twice")).status_code == 409
    await run(sessionmaker, settings)  # the condition again: a new warning
    rows = await warnings_of(client, world.regulator, kind="deep_discount", region="440306", category="other")
    assert sorted((w["merchant_id"], w["state"]) for w in rows) == sorted(
        [(mine.id, "open"), (mine.id, "resolved"), (other.id, "open")]
    )
    assert await warnings_of(client, world.regulator, region="110101") == []
    summary = await client.get("/v1/warnings/summary", headers=bearer(world.regulator))
    assert summary.json() == [
        {"category": "other", "region": "440306", "kind": "deep_discount", "level": "alert", "warnings": 2}
    ]
    assert (await client.get("/v1/warnings/summary", headers=bearer(mine.token))).status_code == 403


async def test_on_demand_run_and_the_daily_job(
    world: World, client: httpx.AsyncClient, sessionmaker: async_sessionmaker, settings: Settings
) -> None:
    from escrow.jobs import run_jobs_once

    merchant = await world.shop("Cut Price")
    await create_plan(client, merchant, kind="sessions", sessions=10, price=20_000, list_price_per_session=10_000)
    assert (await client.post("/v1/warnings/runs", headers={**bearer(merchant.token), **key()})).status_code == 403
    ran = await client.post("/v1/warnings/runs", headers={**bearer(world.regulator), **key()})
    assert ran.status_code == 200 and ran.json()["opened"]["deep_discount"] == 1, ran.text
    report = await run_jobs_once(sessionmaker, settings)
    assert report["warnings_raised_or_updated"] == 1
    assert (await run_jobs_once(sessionmaker, settings))["warnings_raised_or_updated"] == 0  # once a business date
