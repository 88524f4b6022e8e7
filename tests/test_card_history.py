"""A card's history shows each movement once, with the figures the card and the ledger have (issue #12, item 1).

A confirmed service resolves its hold with one journal entry that both releases the hold and posts the movement;
the history used to add the two up and show every confirmed service twice over."""

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from escrow.config import Settings
from escrow.jobs import run_jobs_once
from tests.parties import (
    bearer,
    card_detail,
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

YUAN = 100


async def history(client: httpx.AsyncClient, token: str, card_id: str) -> list[tuple[str, int, int]]:
    """(event, amount, protected) per line, oldest first."""
    response = await client.get(f"/v1/cards/{card_id}/history", headers=bearer(token))
    assert response.status_code == 200, response.text
    return [(h["event"], h["amount"]["amount"], h["protected"]["amount"]) for h in reversed(response.json()["items"])]


async def serve(client: httpx.AsyncClient, merchant, consumer: str, card_id: str, confirm: bool = True, **body) -> dict:
    recorded = await client.post(
        f"/v1/cards/{card_id}/consumptions", json=body, headers={**bearer(merchant.token), **key()}
    )
    assert recorded.status_code == 201, recorded.text
    if confirm:
        confirmed = await client.post(
            f"/v1/consumptions/{recorded.json()['id']}/confirm", headers={**bearer(consumer), **key()}
        )
        assert confirmed.status_code == 200, confirmed.text
    return recorded.json()


def released_total(lines: list[tuple[str, int, int]]) -> int:
    return sum(amount for event, amount, _ in lines if event in ("consumption_released", "release"))


class TestHistoryUnderFortyPercentCustody:
    async def test_a_confirmed_session_is_released_once_at_its_value_and_custodied_share(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        regulator = await regulator_token(session)
        bank = await onboard_bank(client, regulator, "HISA")
        shop = await onboard_ratio_merchant(client, regulator, "Old Oak Studio", "A")
        await open_escrow_account(client, shop, bank)
        consumer_id, consumer = await consumer_token(client, shop, "13900001201")
        # 7 sessions for 2,000.04 yuan: the first is worth ⌊200004/7⌋ = 28,572 fen, 40 % custodied ⌈11,428.8⌉
        plan = await create_plan(client, shop, kind="sessions", sessions=7, price=200004)
        card_id = await sell_and_pay(client, shop, bank, plan["id"], consumer_id)
        first = await serve(client, shop, consumer, card_id, sessions=1)
        assert (first["value"]["amount"], first["protected"]["amount"]) == (28572, 11429)
        second = await serve(client, shop, consumer, card_id, confirm=False, sessions=2)
        assert (second["value"]["amount"], second["protected"]["amount"]) == (57144, 22858)

        lines = await history(client, consumer, card_id)
        assert lines == [
            ("card_paid", 200004, 80002),
            ("consumption_held", 28572, 11429),
            ("consumption_released", 28572, 11429),
            ("consumption_held", 57144, 22858),
        ]
        detail = await card_detail(client, consumer, card_id)
        assert detail["released"]["amount"] == released_total(lines) == 28572
        assert detail["pending"]["amount"] == 57144

    async def test_stored_value_spending_released_once(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        regulator = await regulator_token(session)
        bank = await onboard_bank(client, regulator, "HISB")
        shop = await onboard_ratio_merchant(client, regulator, "Silver Comb", "A")
        await open_escrow_account(client, shop, bank)
        consumer_id, consumer = await consumer_token(client, shop, "13900001202")
        # 1,000 yuan buys 1,200 yuan of credit: 300 yuan of face value is worth ⌊100000·30000/120000⌋ = 25,000 fen
        plan = await create_plan(client, shop, kind="stored_value", price=1000 * YUAN, face_value=1200 * YUAN)
        card_id = await sell_and_pay(client, shop, bank, plan["id"], consumer_id)
        await serve(client, shop, consumer, card_id, face_value={"amount": 300 * YUAN, "currency": "CNY"})
        await serve(client, shop, consumer, card_id, face_value={"amount": 100 * YUAN, "currency": "CNY"})

        lines = await history(client, consumer, card_id)
        assert lines == [
            ("card_paid", 100000, 40000),
            ("consumption_held", 25000, 10000),
            ("consumption_released", 25000, 10000),
            ("consumption_held", 8333, 3334),  # cumulative: ⌊100000·40000/120000⌋ - 25,000; ⌈33,333·40 %⌉ - 10,000
            ("consumption_released", 8333, 3334),
        ]
        detail = await card_detail(client, consumer, card_id)
        assert detail["released"]["amount"] == released_total(lines) == 33333
        assert detail["protected"]["amount"] == 40000 - 13334


class TestHistoryInFullCustody:
    async def test_sessions_released_and_voided_each_shown_once(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        regulator = await regulator_token(session)
        bank = await onboard_bank(client, regulator, "HISC")
        gym = await onboard_merchant(client, regulator, "Iron Hall")
        await open_escrow_account(client, gym, bank)
        consumer_id, consumer = await consumer_token(client, gym, "13900001203")
        plan = await create_plan(client, gym, kind="sessions", sessions=20, price=2000 * YUAN)
        card_id = await sell_and_pay(client, gym, bank, plan["id"], consumer_id)
        await serve(client, gym, consumer, card_id, sessions=2)
        wrong = await serve(client, gym, consumer, card_id, confirm=False, sessions=1)
        disputed = await client.post(
            f"/v1/consumptions/{wrong['id']}/dispute",
            json={"reason": "I was not there"},
            headers={**bearer(consumer), **key()},
        )
        assert disputed.status_code == 200, disputed.text
        voided = await client.post(
            f"/v1/consumptions/{wrong['id']}/resolve",
            json={"outcome": "void"},
            headers={**bearer(gym.token), **key()},
        )
        assert voided.status_code == 200, voided.text

        lines = await history(client, consumer, card_id)
        assert lines == [
            ("card_paid", 200000, 200000),
            ("consumption_held", 20000, 20000),
            ("consumption_released", 20000, 20000),
            ("consumption_held", 10000, 10000),
            ("consumption_voided", 10000, 10000),
        ]
        detail = await card_detail(client, consumer, card_id)
        assert detail["released"]["amount"] == released_total(lines) == 20000
        assert detail["value_remaining"]["amount"] == 180000

    async def test_membership_days_as_released_by_the_jobs(
        self, client: httpx.AsyncClient, session: AsyncSession, engine, settings: Settings
    ) -> None:
        regulator = await regulator_token(session)
        bank = await onboard_bank(client, regulator, "HISD")
        gym = await onboard_merchant(client, regulator, "Dawn Hall")
        await open_escrow_account(client, gym, bank)
        consumer_id, consumer = await consumer_token(client, gym, "13900001204")
        plan = await create_plan(client, gym, kind="period", price=100 * YUAN, days=30, validity_days=30)
        card_id = await sell_and_pay(client, gym, bank, plan["id"], consumer_id)
        await session.execute(
            text("UPDATE cards SET starts_on = starts_on - 10, valid_until = valid_until - 10 WHERE id = :id"),
            {"id": card_id},
        )
        await session.commit()
        report = await run_jobs_once(async_sessionmaker(engine, expire_on_commit=False), settings)
        assert report["period_days_released"] == 10

        lines = await history(client, consumer, card_id)
        assert lines == [("card_paid", 10000, 10000), ("release", 3333, 3333)]  # ⌊10000·10/30⌋
        assert (await card_detail(client, consumer, card_id))["released"]["amount"] == released_total(lines)
