"""Class rolls: one request records the services a class received (POST /v1/consumptions), all or nothing."""

import asyncio
from datetime import timedelta

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from escrow.config import Settings
from escrow.jobs import run_jobs_once
from escrow.kit.clock import utcnow
from escrow.ledger.integrity import verify_database
from tests.parties import (
    Bank,
    Merchant,
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


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"payout_hour": None})


class Studio:
    regulator: str
    bank: Bank
    merchant: Merchant
    plan_id: str
    cards: list[str]
    consumers: list[str]  # tokens, one per card


async def studio(client: httpx.AsyncClient, session: AsyncSession, pupils: int = 3, **plan) -> Studio:
    """A training centre with a 10-lesson plan of 1,000 yuan and a class of ``pupils``, each with a paid card."""
    s = Studio()
    s.regulator = await regulator_token(session)
    s.bank = await onboard_bank(client, s.regulator, "CLSB")
    s.merchant = await onboard_merchant(client, s.regulator, "Little Tigers", category="training")
    await open_escrow_account(client, s.merchant, s.bank)
    s.plan_id = (
        await create_plan(client, s.merchant, **(plan or {"kind": "sessions", "sessions": 10, "price": 1000 * YUAN}))
    )["id"]
    s.cards, s.consumers = [], []
    for n in range(pupils):
        consumer_id, token = await consumer_token(client, s.merchant, f"1360000{n:04d}")
        s.cards.append(await sell_and_pay(client, s.merchant, s.bank, s.plan_id, consumer_id))
        s.consumers.append(token)
    return s


async def roll(client: httpx.AsyncClient, merchant: Merchant, services: list[dict], **headers) -> httpx.Response:
    return await client.post(
        "/v1/consumptions",
        json={"services": services, "note": "Tuesday 16:00"},
        headers={**bearer(merchant.token), **key(), **headers},
    )


def lesson(card_id: str, sessions: int = 1) -> dict:
    return {"card_id": card_id, "sessions": sessions}


async def held(session: AsyncSession, card_id: str) -> tuple[int, int]:
    """(units used, value consumed) as the card row counts them."""
    row = (await session.execute(text("SELECT units_used, consumed FROM cards WHERE id = :id"), {"id": card_id})).one()
    return row[0], row[1]


class TestClassRoll:
    async def test_a_lesson_for_the_class_holds_each_card_and_confirms_one_by_one(
        self, client: httpx.AsyncClient, session: AsyncSession, engine
    ) -> None:
        s = await studio(client, session)
        recorded = await roll(client, s.merchant, [lesson(card) for card in s.cards])
        assert recorded.status_code == 201, recorded.text
        services = recorded.json()["consumptions"]
        assert [c["card_id"] for c in services] == s.cards  # in the order given
        assert all(c["status"] == "pending_confirmation" and c["note"] == "Tuesday 16:00" for c in services)
        assert all(c["value"]["amount"] == 100 * YUAN and c["protected"]["amount"] == 100 * YUAN for c in services)
        for card, token in zip(s.cards, s.consumers, strict=True):
            detail = await card_detail(client, token, card)
            assert detail["units_remaining"] == 9 and detail["pending"]["amount"] == 100 * YUAN
        for service, token in zip(services, s.consumers, strict=True):
            confirmed = await client.post(
                f"/v1/consumptions/{service['id']}/confirm", headers={**bearer(token), **key()}
            )
            assert confirmed.status_code == 200 and confirmed.json()["status"] == "confirmed", confirmed.text
        for card, token in zip(s.cards, s.consumers, strict=True):
            detail = await card_detail(client, token, card)
            assert detail["pending"]["amount"] == 0 and detail["released"]["amount"] == 100 * YUAN
            assert detail["value_remaining"]["amount"] == 900 * YUAN
        assert (await verify_database(engine)).ok

    async def test_the_same_card_twice_in_a_roll_counts_cumulatively(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        # 3 sessions of 1,000 yuan: ⌊100000·1/3⌋ = 33333, then ⌊100000·3/3⌋ - 33333 = 66667 for the other two
        s = await studio(client, session, pupils=1, kind="sessions", sessions=3, price=1000 * YUAN)
        recorded = await roll(client, s.merchant, [lesson(s.cards[0]), lesson(s.cards[0], 2)])
        assert recorded.status_code == 201, recorded.text
        assert [c["value"]["amount"] for c in recorded.json()["consumptions"]] == [33333, 66667]
        assert await held(session, s.cards[0]) == (3, 100000)

    async def test_stored_value_cards_give_face_value(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        s = await studio(
            client, session, pupils=1, kind="stored_value", face_value=1200 * YUAN, price=1000 * YUAN, validity_days=90
        )
        recorded = await roll(
            client, s.merchant, [{"card_id": s.cards[0], "face_value": {"amount": 120 * YUAN, "currency": "CNY"}}]
        )
        assert recorded.status_code == 201, recorded.text
        assert recorded.json()["consumptions"][0]["value"]["amount"] == 100 * YUAN  # gifted credit is not money

    async def test_a_replayed_roll_holds_nothing_twice(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        s = await studio(client, session)
        headers = {"Idempotency-Key": "roll-tuesday"}
        first = await roll(client, s.merchant, [lesson(card) for card in s.cards], **headers)
        again = await roll(client, s.merchant, [lesson(card) for card in s.cards], **headers)
        assert first.status_code == again.status_code == 201
        assert again.headers["Idempotency-Replayed"] == "true" and again.json() == first.json()
        assert [await held(session, card) for card in s.cards] == [(1, 100 * YUAN)] * 3
        holds = await session.scalar(text("SELECT count(*) FROM ledger_entries WHERE kind = 'consumption'"))
        assert holds == 3


class TestAllOrNothing:
    async def test_an_exhausted_card_refuses_the_whole_roll_and_names_it(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        s = await studio(client, session)
        assert (await roll(client, s.merchant, [lesson(s.cards[1], 10)])).status_code == 201  # all 10 lessons
        refused = await roll(client, s.merchant, [lesson(card) for card in s.cards])
        assert refused.status_code == 409, refused.text
        problem = refused.json()
        assert problem["code"] == "exceeds_remaining"
        assert problem["errors"] == [{"field": "services[1].sessions", "rule": "units_left", "message": "at most 0"}]
        assert [await held(session, card) for card in (s.cards[0], s.cards[2])] == [(0, 0), (0, 0)]

    async def test_another_merchants_card_is_not_found_and_nothing_is_held(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        s = await studio(client, session)
        rival = await onboard_merchant(client, s.regulator, "Rival Tigers", category="training")
        refused = await roll(client, rival, [lesson(s.cards[0])])
        assert refused.status_code == 404 and refused.json()["errors"][0]["field"] == "services[0].card_id"
        mixed = await roll(client, s.merchant, [lesson(s.cards[0]), lesson("card_nobody")])
        assert mixed.status_code == 404 and mixed.json()["errors"][0]["field"] == "services[1].card_id"
        assert await held(session, s.cards[0]) == (0, 0)

    async def test_missing_or_wrong_units_name_the_item(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        s = await studio(client, session)
        refused = await roll(client, s.merchant, [lesson(s.cards[0]), {"card_id": s.cards[1]}])
        assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "services[1].sessions"
        empty = await roll(client, s.merchant, [])
        assert empty.status_code == 422 and empty.json()["code"] == "validation_failed"
        assert await held(session, s.cards[0]) == (0, 0)

    async def test_a_card_with_a_refund_requested_refuses_the_roll(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        s = await studio(client, session)
        # a lesson used and confirmed (so it is past cooling-off), then a refund the merchant is said to have caused
        used = await roll(client, s.merchant, [lesson(s.cards[2])])
        csm = used.json()["consumptions"][0]["id"]
        confirmed = await client.post(f"/v1/consumptions/{csm}/confirm", headers={**bearer(s.consumers[2]), **key()})
        assert confirmed.status_code == 200, confirmed.text
        quote = await client.get(
            f"/v1/cards/{s.cards[2]}/refund-quote", params={"cause": "merchant"}, headers=bearer(s.consumers[2])
        )
        requested = await client.post(
            f"/v1/cards/{s.cards[2]}/refunds",
            json={"cause": "merchant", "expected_amount": quote.json()["amount"]},
            headers={**bearer(s.consumers[2]), **key()},
        )
        assert requested.status_code == 201 and requested.json()["status"] == "requested", requested.text
        refused = await roll(client, s.merchant, [lesson(card) for card in s.cards])
        assert refused.status_code == 409 and refused.json()["code"] == "refund_in_progress"
        assert refused.json()["errors"] == [
            {"field": "services[2].card_id", "rule": "refund_open", "message": "refund requested"}
        ]

    async def test_a_frozen_escrow_account_refuses_the_roll(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        s = await studio(client, session)
        account = (await card_detail(client, s.consumers[0], s.cards[0]))["escrow_account_id"]
        frozen = await client.post(
            f"/v1/escrow-accounts/{account}/freeze",
            json={"reason": "inspection"},
            headers={**bearer(s.regulator), **key()},
        )
        assert frozen.status_code == 200, frozen.text
        refused = await roll(client, s.merchant, [lesson(card) for card in s.cards])
        assert refused.status_code == 409 and refused.json()["code"] == "card_not_active"
        assert await held(session, s.cards[0]) == (0, 0)


class TestRatioCustody:
    async def test_each_service_splits_custody_like_a_single_one(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        regulator = await regulator_token(session)
        bank = await onboard_bank(client, regulator, "RATB")
        shop = await onboard_ratio_merchant(client, regulator, "Ratio Dance", rating="A")  # 40 % custody
        await open_escrow_account(client, shop, bank)
        plan = await create_plan(client, shop, kind="sessions", sessions=7, price=777 * YUAN)
        cards = []
        for n in range(2):
            consumer_id, _ = await consumer_token(client, shop, f"1350000{n:04d}")
            cards.append(await sell_and_pay(client, shop, bank, plan["id"], consumer_id))
        rolled = await roll(client, shop, [lesson(card) for card in cards])
        single = await client.post(
            f"/v1/cards/{cards[0]}/consumptions", json={"sessions": 1}, headers={**bearer(shop.token), **key()}
        )
        assert rolled.status_code == 201 and single.status_code == 201
        first, second = rolled.json()["consumptions"]
        assert first["value"] == second["value"] and first["protected"] == second["protected"]
        # the second lesson on the first card, recorded on its own, follows the same cumulative rules
        assert single.json()["value"]["amount"] == 77700 * 2 // 7 - 77700 // 7


class TestConcurrency:
    async def test_overlapping_rolls_never_deadlock_or_overdraw(
        self, client: httpx.AsyncClient, session: AsyncSession, engine
    ) -> None:
        s = await studio(client, session, pupils=4, kind="sessions", sessions=5, price=500 * YUAN)
        # ten rolls at once over the same four cards, in different orders: 5 lessons per card at most
        orders = [s.cards, list(reversed(s.cards)), s.cards[1:] + s.cards[:1], s.cards[2:] + s.cards[:2]]
        answers = await asyncio.gather(
            *(roll(client, s.merchant, [lesson(card) for card in orders[n % 4]]) for n in range(10))
        )
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [201] * 5 + [409] * 5, [a.text for a in answers if a.status_code not in (201, 409)]
        assert [await held(session, card) for card in s.cards] == [(5, 500 * YUAN)] * 4
        assert (await verify_database(engine)).ok

    async def test_a_roll_and_the_auto_confirmation_of_the_last_class_never_deadlock(
        self, client: httpx.AsyncClient, session: AsyncSession, sessionmaker: async_sessionmaker, settings: Settings,
        db_url: str,
    ) -> None:  # fmt: skip
        s = await studio(client, session, pupils=2)
        first, second = sorted(s.cards)
        # yesterday's class: the card with the higher id first, so its service is the first one due
        for card in (second, first):
            assert (await roll(client, s.merchant, [lesson(card)])).status_code == 201
        due_first = await session.scalar(text("SELECT id FROM consumptions WHERE card_id = :card"), {"card": second})
        # Hold the first due service's row, so the job stops there with its first card taken; then today's roll
        # over both cards starts. Were the job to take its cards one by one in due order (the higher id first), the
        # roll would hold the lower one and wait for the higher while the job, let go, waits for the lower: deadlock.
        holder = await asyncpg.connect(db_url)
        try:
            hold = holder.transaction()
            await hold.start()
            await holder.execute("SELECT 1 FROM consumptions WHERE id = $1 FOR UPDATE", due_first)
            job = asyncio.create_task(run_jobs_once(sessionmaker, settings, now=utcnow() + timedelta(hours=25)))
            await asyncio.sleep(0.5)
            today = asyncio.create_task(roll(client, s.merchant, [lesson(first), lesson(second)]))
            await asyncio.sleep(0.5)
            await hold.rollback()
            report, recorded = await asyncio.wait_for(asyncio.gather(job, today), 30)
        finally:
            await holder.close()
        assert report["services_auto_confirmed"] == 2, report
        assert recorded.status_code == 201, recorded.text
        assert [await held(session, card) for card in (first, second)] == [(2, 200 * YUAN)] * 2
