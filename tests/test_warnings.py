"""Early warnings (issue #14 §1): a worked example per signal, the lifecycle, access, reruns, regions.

Histories are built through the API; the clock is moved by test-only means, documented here:
- the run takes ``now`` (``escrow.risk.service.run_signals(session, settings, now)``, as the daily job passes it), so
  a test can look at the ledger from a later instant;
- rows that must lie in the past (a card paid 30 days ago, a service recorded 40 days ago) are created through the
  API and then dated back by writing their timestamps (``cards.paid_at``, ``consumptions.recorded_at``) directly in
  the test database — the only thing the API cannot do.
"""

from datetime import datetime, timedelta

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from escrow.config import Settings
from escrow.kit.clock import utcnow
from escrow.risk import service
from tests.parties import (
    Bank,
    Merchant,
    bearer,
    consumer_token,
    create_plan,
    key,
    onboard_bank,
    onboard_merchant,
    open_escrow_account,
    regulator_token,
    sell_and_pay,
)

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
        return self

    async def shop(self, name: str, category: str = "other", region: str | None = "440306") -> Merchant:
        merchant = await onboard_merchant(self.client, self.regulator, name, category)
        if region:
            changed = await self.client.post(
                f"/v1/merchants/{merchant.id}/region",
                json={"region": region, "reason": "test"},
                headers={**bearer(self.regulator), **key()},
            )
            assert changed.status_code == 200, changed.text
        await open_escrow_account(self.client, merchant, self.bank)
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
