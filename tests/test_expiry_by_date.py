"""Expiry is decided by the date, not by whether the jobs have run (issue #12, item 4).

A card past its last valid day (a business date, Asia/Shanghai) is refunded at its own price, without the
list-price penalty, whether the consumer asks before the jobs run or the jobs refund it. With
``ESCROW_EXPIRY_ACTION=extend`` the extension is counted from the card's last valid day, not from the day a job
happens to run; if that is still past, by as many whole extensions as reach today (what the job, run daily, would
have done: it extends a card again each time it lapses)."""

from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from escrow.config import Settings
from escrow.jobs import run_jobs_once
from escrow.kit.clock import business_date, utcnow
from escrow.models import Card, Plan
from escrow.refunds.service import compute_quote
from tests.parties import (
    bearer,
    card_detail,
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


def shanghai_today() -> date:
    return business_date(utcnow(), "Asia/Shanghai")


async def card_with_three_sessions_used(
    client: httpx.AsyncClient, session: AsyncSession, phone: str, last_valid_day: date
) -> tuple[object, str, str]:
    """10 sessions for 1,000 yuan (list price 150 yuan a session), 3 used and released, valid until the day given.
    Returns (merchant, consumer token, card id)."""
    regulator = await regulator_token(session)
    bank = await onboard_bank(client, regulator, f"EX{phone[-2:]}")
    gym = await onboard_merchant(client, regulator, f"Expiry Gym {phone[-2:]}")
    await open_escrow_account(client, gym, bank)
    consumer_id, consumer = await consumer_token(client, gym, phone)
    plan = await create_plan(
        client, gym, kind="sessions", sessions=10, price=1000 * YUAN, list_price_per_session=150 * YUAN
    )
    card_id = await sell_and_pay(client, gym, bank, plan["id"], consumer_id)
    used = await client.post(
        f"/v1/cards/{card_id}/consumptions", json={"sessions": 3}, headers={**bearer(gym.token), **key()}
    )
    confirmed = await client.post(
        f"/v1/consumptions/{used.json()['id']}/confirm", headers={**bearer(consumer), **key()}
    )
    assert confirmed.status_code == 200, confirmed.text
    await session.execute(
        text("UPDATE cards SET valid_until = :day, paid_at = paid_at - interval '30 days' WHERE id = :id"),
        {"day": last_valid_day, "id": card_id},
    )
    await session.commit()
    return gym, consumer, card_id


async def quote(client: httpx.AsyncClient, consumer: str, card_id: str, cause: str = "consumer") -> dict:
    response = await client.get(f"/v1/cards/{card_id}/refund-quote?cause={cause}", headers=bearer(consumer))
    assert response.status_code == 200, response.text
    return response.json()


class TestRefundAtExpiryBeforeTheJobsRun:
    async def test_the_consumers_own_refund_of_an_expired_card_has_no_list_price_penalty(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        _, consumer, card_id = await card_with_three_sessions_used(
            client, session, "13900001401", shanghai_today() - timedelta(days=1)
        )
        # a live card ended by its consumer would give back 1,000 - 3·150 = 550 yuan; an expired one 700
        for cause in ("consumer", "merchant"):
            q = await quote(client, consumer, card_id, cause)
            assert (q["cause"], q["amount"]["amount"], q["delivered_value_charged"]["amount"]) == (
                "expiry",
                70000,
                30000,
            )
            assert q["rule"].startswith("expired after")
        refund = await client.post(
            f"/v1/cards/{card_id}/refunds",
            json={"cause": "consumer", "expected_amount": {"amount": 70000, "currency": "CNY"}},
            headers={**bearer(consumer), **key()},
        )
        assert refund.status_code == 201, refund.text
        assert (refund.json()["cause"], refund.json()["amount"]["amount"]) == ("expiry", 70000)
        assert refund.json()["retained"]["amount"] == 0 and refund.json()["status"] == "instructed"
        detail = await card_detail(client, consumer, card_id)
        assert detail["status"] == "expired_refunded"
        assert (detail["released"]["amount"], detail["refunded"]["amount"]) == (30000, 70000)

    async def test_on_its_last_valid_day_the_card_is_still_live(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        _, consumer, card_id = await card_with_three_sessions_used(client, session, "13900001402", shanghai_today())
        q = await quote(client, consumer, card_id)
        assert (q["cause"], q["amount"]["amount"], q["retained"]["amount"]) == ("consumer", 55000, 15000)

    @pytest.mark.parametrize(
        ("now", "cause", "amount"),
        [
            (datetime(2026, 3, 1, 15, 59, tzinfo=UTC), "consumer", 55000),  # 23:59 on 1 March in Shanghai
            (datetime(2026, 3, 1, 16, 0, tzinfo=UTC), "expiry", 70000),  # 00:00 on 2 March in Shanghai
        ],
    )
    def test_the_day_turns_at_midnight_in_shanghai(
        self, settings: Settings, now: datetime, cause: str, amount: int
    ) -> None:
        card = Card(
            kind="sessions", price=100000, units_total=10, units_used=3, consumed=30000, refunded=0,
            days_settled=0, paid_at=datetime(2026, 1, 1, tzinfo=UTC), starts_on=date(2026, 1, 1),
            valid_until=date(2026, 3, 1),
        )  # fmt: skip
        plan = Plan(list_unit_price=15000)
        computed = compute_quote(settings, card, plan, "consumer", now)
        assert (computed.cause, computed.amount) == (cause, amount)


class TestExtensionCountedFromTheLastValidDay:
    @pytest.fixture
    def extend(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"expiry_action": "extend", "expiry_extension_days": 90})

    async def test_a_card_out_five_days_gains_ninety_days_from_its_last_valid_day(
        self, client: httpx.AsyncClient, session: AsyncSession, engine, extend: Settings
    ) -> None:
        _, consumer, card_id = await card_with_three_sessions_used(
            client, session, "13900001403", shanghai_today() - timedelta(days=5)
        )
        report = await run_jobs_once(async_sessionmaker(engine, expire_on_commit=False), extend)
        assert report["cards_extended"] == 1
        detail = await card_detail(client, consumer, card_id)
        assert detail["status"] == "active"
        assert detail["valid_until"] == (shanghai_today() + timedelta(days=85)).isoformat()  # not today + 90
        assert (await run_jobs_once(async_sessionmaker(engine, expire_on_commit=False), extend))["cards_extended"] == 0

    async def test_an_extension_still_past_is_followed_by_the_next_one(
        self, client: httpx.AsyncClient, session: AsyncSession, engine, extend: Settings
    ) -> None:
        _, consumer, card_id = await card_with_three_sessions_used(
            client, session, "13900001404", shanghai_today() - timedelta(days=100)
        )
        await run_jobs_once(async_sessionmaker(engine, expire_on_commit=False), extend)
        detail = await card_detail(client, consumer, card_id)
        assert detail["valid_until"] == (shanghai_today() + timedelta(days=80)).isoformat()  # -100 + 2·90

    async def test_before_the_jobs_run_the_extended_card_is_used_and_priced_as_live(
        self, client: httpx.AsyncClient, session: AsyncSession, extend: Settings
    ) -> None:
        from escrow.app import create_app

        gym, consumer, card_id = await card_with_three_sessions_used(
            client, session, "13900001405", shanghai_today() - timedelta(days=5)
        )
        app = create_app(extend)
        async with app.lifespan():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://escrow.test") as extended:
                used = await extended.post(
                    f"/v1/cards/{card_id}/consumptions", json={"sessions": 1}, headers={**bearer(gym.token), **key()}
                )
                assert used.status_code == 201, used.text
                await extended.post(
                    f"/v1/consumptions/{used.json()['id']}/confirm", headers={**bearer(consumer), **key()}
                )
                q = await quote(extended, consumer, card_id)
        # the card is valid by date: ending it is the consumer's choice, at the list price (1,000 - 4·150)
        assert (q["cause"], q["amount"]["amount"]) == ("consumer", 40000)
