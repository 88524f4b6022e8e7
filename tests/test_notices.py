"""Notices to consumers (issue #13 §5): each event sends exactly one text message, with its figures and the link to
the card's page, to the card's holder — never twice for a retried request or a rerun job, never lost or doubled by
a crash between commit and delivery, and never for a change that was rolled back."""

import asyncio
from datetime import timedelta

import httpx
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from escrow import notices
from escrow.cards import presence
from escrow.config import Settings
from escrow.consumers.service import phone_context
from escrow.consumptions import service as consumptions
from escrow.jobs import run_jobs_once
from escrow.kit.clock import utcnow
from escrow.kit.crypto import Keyring
from escrow.models import Consumer, Notice, SmsOutbox
from escrow.notices import texts
from escrow.sms import DevSmsSink, deliver_due
from tests.closing import bank_executes_all, compute_plan, order_closure
from tests.parties import (
    TEST_SECRET_KEY,
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
KEYRING = Keyring(TEST_SECRET_KEY.encode())


def link(card_id: str) -> str:
    return f"http://127.0.0.1:8000/app/cards/{card_id}"


async def send_notices(sessionmaker: async_sessionmaker, settings: Settings) -> None:
    """The notices job, then delivery (what the background jobs do after a request committed)."""
    async with sessionmaker() as session:
        await notices.queue_due(session, settings, KEYRING, 500)
        await session.commit()
    await deliver_due(sessionmaker, DevSmsSink(sessionmaker, KEYRING), settings, KEYRING)


async def messages(sessionmaker: async_sessionmaker, phone: str, kind: str | None = None) -> list[str]:
    """Notices the development sink received for ``phone`` (of ``kind``, if given), oldest first."""
    prefix = f"notice:{kind}:" if kind else "notice:"
    async with sessionmaker() as session:
        rows = await session.execute(
            text("SELECT text FROM sms_sink WHERE phone_hash = :hash AND request_id LIKE :prefix ORDER BY id"),
            {"hash": KEYRING.lookup_hash(phone), "prefix": prefix + "%"},
        )
        return [row[0] for row in rows]


class Shop:
    regulator: str
    bank: object
    merchant: object
    plan_id: str


async def shop(client: httpx.AsyncClient, session: AsyncSession, code: str, name: str, **plan) -> Shop:
    s = Shop()
    s.regulator = await regulator_token(session)
    s.bank = await onboard_bank(client, s.regulator, code)
    s.merchant = await onboard_merchant(client, s.regulator, name)
    await open_escrow_account(client, s.merchant, s.bank)
    plan = plan or {"kind": "sessions", "sessions": 10, "price": 1000 * YUAN}
    s.plan_id = (await create_plan(client, s.merchant, **plan))["id"]
    return s


async def customer(client: httpx.AsyncClient, s: Shop, phone: str) -> tuple[str, str, str]:
    """A consumer of the shop with a paid card: (consumer id, consumer token, card id)."""
    consumer_id, token = await consumer_token(client, s.merchant, phone)
    card_id = await sell_and_pay(client, s.merchant, s.bank, s.plan_id, consumer_id)
    return consumer_id, token, card_id


async def record(client: httpx.AsyncClient, s: Shop, card_id: str, headers: dict | None = None, **body) -> dict:
    response = await client.post(
        f"/v1/cards/{card_id}/consumptions",
        json=body or {"sessions": 1},
        headers={**bearer(s.merchant.token), **(headers or key())},
    )
    assert response.status_code == 201, response.text
    return response.json()


class TestThePhone:
    async def test_sign_in_and_registration_keep_the_phone_encrypted(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        s = await shop(client, session, "NPHB", "Phone Gym")
        consumer_id, _ = await consumer_token(client, s.merchant, "13900005001")
        consumer = await session.get(Consumer, consumer_id)
        assert consumer is not None and consumer.phone_enc is not None
        assert "13900005001" not in consumer.phone_enc
        assert KEYRING.decrypt(consumer.phone_enc, phone_context(consumer_id)) == "13900005001"
        # a consumer known from before (no phone kept) gets it at the next registration
        await session.execute(text("UPDATE consumers SET phone_enc = NULL"))
        await session.commit()
        again = await client.post(
            "/v1/consumers", json={"phone": "139 0000 5001"}, headers={**bearer(s.merchant.token), **key()}
        )
        assert again.status_code == 201, again.text
        session.expire_all()
        consumer = await session.get(Consumer, consumer_id)
        assert consumer is not None and consumer.phone_enc is not None
        assert KEYRING.decrypt(consumer.phone_enc, phone_context(consumer_id)) == "13900005001"

    async def test_a_consumer_without_a_phone_gets_no_message(
        self, client: httpx.AsyncClient, session: AsyncSession, sessionmaker: async_sessionmaker, settings: Settings
    ) -> None:
        s = await shop(client, session, "NNPB", "Quiet Gym")
        consumer_id, _ = await consumer_token(client, s.merchant, "13900005002")
        await session.execute(text("UPDATE consumers SET phone_enc = NULL WHERE id = :id"), {"id": consumer_id})
        await session.commit()
        await sell_and_pay(client, s.merchant, s.bank, s.plan_id, consumer_id)
        await send_notices(sessionmaker, settings)
        assert await messages(sessionmaker, "13900005002") == []
        queued = await session.scalar(select(Notice.queued_at).where(Notice.consumer_id == consumer_id))
        assert queued is not None  # handled, not left due for ever


class TestCardsAndServices:
    async def test_payment_and_recorded_service_each_send_one_message(
        self, client: httpx.AsyncClient, session: AsyncSession, sessionmaker: async_sessionmaker, settings: Settings
    ) -> None:
        s = await shop(client, session, "NCSB", "Iron Gym")
        _, _, card_id = await customer(client, s, "13900005011")
        await send_notices(sessionmaker, settings)
        [paid] = await messages(sessionmaker, "13900005011", "card_paid")
        assert "Iron Gym" in paid and "Bank NCSB" in paid and "1000.00元" in paid and link(card_id) in paid
        assert "受资金保护部分1000.00元" in paid

        retry = key()
        consumption = await record(client, s, card_id, retry)
        replayed = await client.post(
            f"/v1/cards/{card_id}/consumptions", json={"sessions": 1}, headers={**bearer(s.merchant.token), **retry}
        )
        assert replayed.headers.get("Idempotency-Replayed") == "true"
        await send_notices(sessionmaker, settings)
        await send_notices(sessionmaker, settings)  # a rerun job sends nothing more
        [recorded] = await messages(sessionmaker, "13900005011", "service_recorded")
        assert "100.00元" in recorded and link(card_id) in recorded and "自动确认" in recorded
        confirm_by = texts.local_time(consumption["confirm_by"], settings.business_timezone)
        assert confirm_by in recorded
        assert len(await messages(sessionmaker, "13900005011")) == 2

    async def test_a_service_confirmed_by_a_presence_code_sends_nothing(
        self, client: httpx.AsyncClient, session: AsyncSession, sessionmaker: async_sessionmaker, settings: Settings
    ) -> None:
        s = await shop(client, session, "NPRB", "Present Gym")
        _, _, card_id = await customer(client, s, "13900005021")
        step = presence.step_of(presence.now(), settings.presence_code_step_seconds)
        code = presence.code_for(KEYRING.presence_key, card_id, step, settings.presence_code_digits)
        confirmed = await record(client, s, card_id, sessions=1, presence_code=code)
        assert confirmed["status"] == "confirmed"
        await send_notices(sessionmaker, settings)
        assert await messages(sessionmaker, "13900005021", "service_recorded") == []

    async def test_auto_confirmation_sends_one_message_however_often_the_jobs_run(
        self, client: httpx.AsyncClient, session: AsyncSession, sessionmaker: async_sessionmaker, settings: Settings
    ) -> None:
        s = await shop(client, session, "NAUB", "Auto Gym")
        _, _, card_id = await customer(client, s, "13900005031")
        await record(client, s, card_id, sessions=2)
        later = utcnow() + timedelta(seconds=settings.confirmation_window_seconds + 60)
        first = await run_jobs_once(sessionmaker, settings, now=later)
        assert first["services_auto_confirmed"] == 1
        await run_jobs_once(sessionmaker, settings, now=later)
        [auto] = await messages(sessionmaker, "13900005031", "service_auto_confirmed")
        assert "200.00元" in auto and "自动确认" in auto and link(card_id) in auto

    async def test_dispute_resolutions_send_one_message_each(
        self, client: httpx.AsyncClient, session: AsyncSession, sessionmaker: async_sessionmaker, settings: Settings
    ) -> None:
        s = await shop(client, session, "NDSB", "Dispute Gym")
        _, consumer, card_id = await customer(client, s, "13900005041")
        stands, taken_back = await record(client, s, card_id), await record(client, s, card_id, sessions=3)
        for consumption in (stands, taken_back):
            disputed = await client.post(
                f"/v1/consumptions/{consumption['id']}/dispute",
                json={"reason": "not there"},
                headers={**bearer(consumer), **key()},
            )
            assert disputed.status_code == 200, disputed.text
        for consumption, outcome in ((stands, "confirm"), (taken_back, "void")):
            retry = key()
            for _ in range(2):  # the retry is answered from the first response
                resolved = await client.post(
                    f"/v1/consumptions/{consumption['id']}/resolve",
                    json={"outcome": outcome},
                    headers={**bearer(s.merchant.token), **retry},
                )
                assert resolved.status_code == 200, resolved.text
        await send_notices(sessionmaker, settings)
        confirmed, voided = await messages(sessionmaker, "13900005041", "dispute_resolved")
        assert "100.00元" in confirmed and "消费成立" in confirmed and link(card_id) in confirmed
        assert "300.00元" in voided and "已撤销" in voided


class TestRefunds:
    async def test_approved_then_paid_when_the_bank_executes(
        self, client: httpx.AsyncClient, session: AsyncSession, sessionmaker: async_sessionmaker, settings: Settings
    ) -> None:
        s = await shop(client, session, "NRFB", "Refund Gym")
        _, consumer, card_id = await customer(client, s, "13900005051")
        quote = (await client.get(f"/v1/cards/{card_id}/refund-quote?cause=consumer", headers=bearer(consumer))).json()
        retry = key()
        for _ in range(2):
            requested = await client.post(
                f"/v1/cards/{card_id}/refunds",
                json={"cause": "consumer", "expected_amount": quote["amount"]},
                headers={**bearer(consumer), **retry},
            )
            assert requested.status_code == 201, requested.text
        await send_notices(sessionmaker, settings)
        [approved] = await messages(sessionmaker, "13900005051", "refund_approved")
        assert "1000.00元" in approved and "已批准" in approved and link(card_id) in approved
        assert await messages(sessionmaker, "13900005051", "refund_paid") == []

        [instruction] = await bank_executes_all(client, s.bank)
        assert instruction["refund_id"] == requested.json()["id"]
        await send_notices(sessionmaker, settings)
        [paid] = await messages(sessionmaker, "13900005051", "refund_paid")
        assert "1000.00元" in paid and "Bank NRFB" in paid and link(card_id) in paid


class TestClosures:
    async def test_an_ordered_closure_with_its_plan_tells_the_statement(
        self, client: httpx.AsyncClient, session: AsyncSession, sessionmaker: async_sessionmaker, settings: Settings
    ) -> None:
        s = await shop(client, session, "NCLB", "Vanishing Gym")
        _, _, card_id = await customer(client, s, "13900005061")
        await send_notices(sessionmaker, settings)
        closure = await order_closure(client, s.regulator, s.merchant.id)
        await compute_plan(client, s.regulator, closure["id"])
        await send_notices(sessionmaker, settings)
        await send_notices(sessionmaker, settings)
        [told] = await messages(sessionmaker, "13900005061", "closure")
        assert "Vanishing Gym被监管部门责令闭店" in told and link(card_id) in told
        assert "托管资金退款1000.00元" in told

    async def test_an_announced_closure_then_a_takeover_offer(
        self, client: httpx.AsyncClient, session: AsyncSession, sessionmaker: async_sessionmaker, settings: Settings
    ) -> None:
        s = await shop(client, session, "NTKB", "Leaving Gym")
        _, _, card_id = await customer(client, s, "13900005071")
        successor = await onboard_merchant(client, s.regulator, "Next Gym")
        await open_escrow_account(client, successor, s.bank)
        effective_on = (utcnow() + timedelta(days=settings.closure_notice_days + 1)).date()
        announced = await client.post(
            "/v1/closures",
            json={"reason": "moving away", "effective_on": effective_on.isoformat()},
            headers={**bearer(s.merchant.token), **key()},
        )
        assert announced.status_code == 201, announced.text
        await send_notices(sessionmaker, settings)
        [told] = await messages(sessionmaker, "13900005071", "closure")
        assert "Leaving Gym宣布闭店" in told and texts.local_date(effective_on) in told
        assert "1000.00元不会作废" in told and link(card_id) in told

        deadline = utcnow() + timedelta(days=10)
        retry = key()
        for _ in range(2):
            offered = await client.post(
                f"/v1/closures/{announced.json()['id']}/takeover",
                json={"successor_merchant_id": successor.id, "deadline": deadline.isoformat()},
                headers={**bearer(s.regulator), **retry},
            )
            assert offered.status_code == 200, offered.text
        await send_notices(sessionmaker, settings)
        [offer] = await messages(sessionmaker, "13900005071", "takeover_offered")
        assert "Next Gym" in offer and texts.local_time(deadline, settings.business_timezone) in offer
        assert link(card_id) in offer


class TestExpiry:
    async def test_thirty_days_before_the_end_once(
        self, client: httpx.AsyncClient, session: AsyncSession, sessionmaker: async_sessionmaker, settings: Settings
    ) -> None:
        s = await shop(client, session, "NEXB", "Short Gym", kind="sessions", sessions=10, price=500 * YUAN,
                       validity_days=40)  # fmt: skip
        _, _, card_id = await customer(client, s, "13900005081")
        await run_jobs_once(sessionmaker, settings)  # 39 days left: nothing yet
        assert await messages(sessionmaker, "13900005081", "card_expiring") == []
        for days in (10, 10, 11, 12):  # reruns the same day, and the days after
            await run_jobs_once(sessionmaker, settings, now=utcnow() + timedelta(days=days))
        [expiring] = await messages(sessionmaker, "13900005081", "card_expiring")
        valid_until = await session.execute(text("SELECT valid_until FROM cards WHERE id = :id"), {"id": card_id})
        assert texts.local_date(valid_until.scalar_one()) in expiring
        assert "500.00元" in expiring and link(card_id) in expiring


class TestDeliveryAndRollback:
    async def test_a_crash_between_commit_and_delivery_loses_and_doubles_nothing(
        self, client: httpx.AsyncClient, session: AsyncSession, sessionmaker: async_sessionmaker, settings: Settings
    ) -> None:
        s = await shop(client, session, "NCRB", "Crash Gym")
        _, _, card_id = await customer(client, s, "13900005091")
        for _ in range(3):
            await record(client, s, card_id)
        # committed, never delivered (the process died): two job runs render and two deliverers send at once

        async def render() -> None:
            async with sessionmaker() as job:
                await notices.queue_due(job, settings, KEYRING, 500)
                await job.commit()

        await asyncio.gather(render(), render())
        outbox = await session.scalar(select(func.count()).where(SmsOutbox.dedup_key.like("notice:%")))
        assert outbox == 4  # paid + three services
        sink = DevSmsSink(sessionmaker, KEYRING)
        await asyncio.gather(*(deliver_due(sessionmaker, sink, settings, KEYRING) for _ in range(2)))
        await deliver_due(sessionmaker, sink, settings, KEYRING)
        sent = await messages(sessionmaker, "13900005091")
        assert len(sent) == 4 and sum("记录了您的一次消费" in m for m in sent) == 3

    async def test_a_rolled_back_change_leaves_no_notice(
        self, client: httpx.AsyncClient, session: AsyncSession, sessionmaker: async_sessionmaker, settings: Settings
    ) -> None:
        s = await shop(client, session, "NRBB", "Rollback Gym")
        _, _, card_id = await customer(client, s, "13900005101")
        await record(client, s, card_id)
        before = await session.scalar(select(func.count()).select_from(Notice))
        await session.commit()
        # a request refused after its checks: nothing committed, no notice
        refused = await client.post(
            "/v1/consumptions",
            json={"services": [{"card_id": card_id, "sessions": 1}, {"card_id": card_id, "sessions": 50}]},
            headers={**bearer(s.merchant.token), **key()},
        )
        assert refused.status_code >= 400, refused.text
        # a unit of work that wrote its notices and then rolled back
        async with sessionmaker() as job:
            later = utcnow() + timedelta(seconds=settings.confirmation_window_seconds + 60)
            assert await consumptions.auto_confirm(job, later, 10) == 1
            assert await job.scalar(select(func.count()).select_from(Notice)) == before + 1
            await job.rollback()
        assert await session.scalar(select(func.count()).select_from(Notice)) == before
        await send_notices(sessionmaker, settings)
        assert await messages(sessionmaker, "13900005101", "service_auto_confirmed") == []
