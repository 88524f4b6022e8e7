"""Text messages: the gateway sender against a real local HTTP server, the outbox's exactly-once delivery, retries
and dead letters, the development sink and the operator's command that reads it."""

import asyncio
import hashlib
import hmac
import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from escrow.cli import sms_outbox
from escrow.config import Settings
from escrow.jobs import run_jobs_once
from escrow.kit.crypto import Keyring
from escrow.models import SmsOutbox, SmsSink
from escrow.sms import (
    DevSmsSink,
    HttpGatewaySmsSender,
    SmsOperationalError,
    SmsRefused,
    SmsSender,
    deliver_due,
    queue,
    sender_for,
)
from tests.parties import TEST_SECRET_KEY

SECRET = "gateway-secret-0123456789"
PHONE = "13812345678"


class Gateway:
    """A local SMS gateway: checks the key id, the signature and the clock, and answers with ``status``."""

    def __init__(self) -> None:
        self.status = 200
        self.received: list[dict] = []
        self.refusals: list[str] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                timestamp = self.headers.get("X-Sms-Timestamp", "")
                expected = hmac.new(SECRET.encode(), timestamp.encode() + b"\n" + body, hashlib.sha256).hexdigest()
                if self.headers.get("X-Sms-Key-Id") != "escrow-test" or not hmac.compare_digest(
                    expected, self.headers.get("X-Sms-Signature", "")
                ):
                    gateway.refusals.append("signature")
                    status = 401
                elif abs(time.time() - int(timestamp)) > 300:
                    gateway.refusals.append("timestamp")
                    status = 401
                else:
                    gateway.received.append(json.loads(body))
                    status = gateway.status
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}' if status < 300 else b'{"error": "no"}')

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/sms/send"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    running = Gateway()
    yield running
    running.close()


def sender(url: str, secret: str = SECRET) -> HttpGatewaySmsSender:
    return HttpGatewaySmsSender(url, "escrow-test", secret, timeout_seconds=5)


class TestHttpGateway:
    async def test_a_signed_message_is_accepted(self, gateway: Gateway) -> None:
        await sender(gateway.url).send(PHONE, "code 123456", key="consumer-code:otc_1")
        assert gateway.received == [{"phone": PHONE, "text": "code 123456", "request_id": "consumer-code:otc_1"}]

    @pytest.mark.parametrize("status", [500, 503, 429])
    async def test_server_errors_and_throttling_are_operational(self, gateway: Gateway, status: int) -> None:
        gateway.status = status
        with pytest.raises(SmsOperationalError):
            await sender(gateway.url).send(PHONE, "x", key="k")

    async def test_a_refusal_is_permanent(self, gateway: Gateway) -> None:
        gateway.status = 400
        with pytest.raises(SmsRefused):
            await sender(gateway.url).send(PHONE, "x", key="k")

    async def test_a_wrong_secret_is_refused_by_the_gateway(self, gateway: Gateway) -> None:
        with pytest.raises(SmsRefused):
            await sender(gateway.url, secret="another-secret").send(PHONE, "x", key="k")
        assert gateway.refusals == ["signature"] and gateway.received == []

    async def test_an_unreachable_gateway_is_operational(self, gateway: Gateway) -> None:
        url = gateway.url
        gateway.close()
        with pytest.raises(SmsOperationalError) as raised:
            await sender(url).send(PHONE, "code 123456", key="k")
        assert PHONE not in str(raised.value) and "123456" not in str(raised.value)

    def test_the_settings_choose_the_sender(self, settings: Settings) -> None:
        keyring = Keyring(TEST_SECRET_KEY.encode())
        assert isinstance(sender_for(settings, None, keyring), DevSmsSink)  # type: ignore[arg-type]
        configured = settings.model_copy(
            update={"sms_gateway_url": "http://127.0.0.1:1/", "sms_gateway_key_id": "k", "sms_gateway_secret": None}
        )
        with pytest.raises(ValueError, match="ESCROW_SMS_GATEWAY_SECRET"):
            sender_for(configured, None, keyring)  # type: ignore[arg-type]


class Counting(SmsSender):
    """Counts what it sends; slow, so that concurrent deliverers overlap; fails as told."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.sent: list[tuple[str, str, str]] = []
        self.fail = fail

    async def send(self, phone: str, text_: str, *, key: str) -> None:
        await asyncio.sleep(0.05)
        if self.fail is not None:
            raise self.fail
        self.sent.append((phone, text_, key))


@pytest.fixture
def keyring() -> Keyring:
    return Keyring(TEST_SECRET_KEY.encode())


async def queued(sessionmaker: async_sessionmaker, keyring: Keyring, *keys: str) -> None:
    async with sessionmaker() as session:
        for n, dedup_key in enumerate(keys):
            await queue(session, keyring, f"1390000{n:04d}", f"message {n}", dedup_key)
        await session.commit()


class TestOutbox:
    async def test_a_retried_cause_queues_one_message_with_the_phone_encrypted(
        self, session: AsyncSession, keyring: Keyring
    ) -> None:
        assert await queue(session, keyring, "+86 138 1234 5678", "hello", "once")
        assert not await queue(session, keyring, PHONE, "hello again", "once")
        await session.commit()
        row = (await session.execute(select(SmsOutbox))).scalar_one()
        assert row.status == "pending" and row.text == "hello" and row.attempts == 0
        assert PHONE not in row.phone_enc and row.phone_hash == keyring.lookup_hash(PHONE)

    async def test_nothing_is_queued_when_the_transaction_rolls_back(
        self, session: AsyncSession, keyring: Keyring, sessionmaker: async_sessionmaker, settings: Settings
    ) -> None:
        await queue(session, keyring, PHONE, "never", "rolled-back")
        await session.rollback()
        counting = Counting()
        assert await deliver_due(sessionmaker, counting, settings, keyring) == 0 and counting.sent == []

    async def test_a_crash_before_delivery_then_two_concurrent_deliverers_send_each_message_once(
        self, sessionmaker: async_sessionmaker, keyring: Keyring, settings: Settings
    ) -> None:
        # the requests committed and "crashed" before delivering: only the outbox knows of the messages
        keys = [f"consumer-code:otc_{n}" for n in range(12)]
        await queued(sessionmaker, keyring, *keys)
        counting = Counting()
        sent = await asyncio.gather(
            deliver_due(sessionmaker, counting, settings, keyring, limit=5),
            deliver_due(sessionmaker, counting, settings, keyring, limit=5),
            deliver_due(sessionmaker, counting, settings, keyring, limit=5),
        )
        sent_later = await deliver_due(sessionmaker, counting, settings, keyring)
        assert sum(sent) + sent_later == len(keys)
        assert sorted(key for _, _, key in counting.sent) == sorted(keys)  # each exactly once
        assert await deliver_due(sessionmaker, counting, settings, keyring) == 0
        async with sessionmaker() as session:
            states = (await session.execute(select(SmsOutbox.status, SmsOutbox.attempts))).all()
        assert {(s, a) for s, a in states} == {("sent", 1)}
        assert ("13900000000", "message 0", keys[0]) in counting.sent  # decrypted for the sender only

    async def test_operational_failures_back_off_then_die(
        self, sessionmaker: async_sessionmaker, keyring: Keyring, settings: Settings
    ) -> None:
        settings = settings.model_copy(update={"sms_max_attempts": 3, "sms_retry_base_seconds": 30})
        await queued(sessionmaker, keyring, "flaky")
        failing = Counting(SmsOperationalError("gateway answered 503"))
        for attempt in (1, 2, 3):
            assert await deliver_due(sessionmaker, failing, settings, keyring) == 0
            async with sessionmaker() as session:
                row = (await session.execute(select(SmsOutbox))).scalar_one()
                wait = await session.scalar(select(func.extract("epoch", SmsOutbox.next_attempt_at - func.now())))
                assert row.attempts == attempt and row.last_error == "gateway answered 503" and row.locked_until is None
                if attempt < 3:
                    assert row.status == "pending" and 30 * 2 ** (attempt - 1) - 5 < wait <= 30 * 2 ** (attempt - 1)
                    # not due yet: a deliverer now sends nothing
                    assert await deliver_due(sessionmaker, failing, settings, keyring) == 0
                    await session.execute(update(SmsOutbox).values(next_attempt_at=func.now()))
                    await session.commit()
                else:
                    assert row.status == "dead"

    async def test_a_refusal_is_a_dead_letter_at_once(
        self, sessionmaker: async_sessionmaker, keyring: Keyring, settings: Settings
    ) -> None:
        await queued(sessionmaker, keyring, "refused")
        assert await deliver_due(sessionmaker, Counting(SmsRefused("gateway refused: 400")), settings, keyring) == 0
        async with sessionmaker() as session:
            row = (await session.execute(select(SmsOutbox))).scalar_one()
        assert row.status == "dead" and row.attempts == 1 and row.last_error == "gateway refused: 400"

    async def test_a_deliverer_that_died_mid_send_leaves_the_message_to_its_lease(
        self, sessionmaker: async_sessionmaker, keyring: Keyring, settings: Settings
    ) -> None:
        await queued(sessionmaker, keyring, "leased")
        async with sessionmaker() as session:  # claimed by a worker that then died
            await session.execute(
                text("UPDATE sms_outbox SET attempts = 1, locked_until = now() + interval '1 minute'")
            )
            await session.commit()
        counting = Counting()
        assert await deliver_due(sessionmaker, counting, settings, keyring) == 0  # leased: left alone
        async with sessionmaker() as session:
            await session.execute(text("UPDATE sms_outbox SET locked_until = now() - interval '1 second'"))
            await session.commit()
        assert await deliver_due(sessionmaker, counting, settings, keyring) == 1
        assert [key for _, _, key in counting.sent] == ["leased"]

    async def test_the_jobs_deliver_what_is_pending_to_the_sink(
        self, sessionmaker: async_sessionmaker, keyring: Keyring, settings: Settings, engine: AsyncEngine
    ) -> None:
        await queued(sessionmaker, keyring, "by-the-jobs")
        report = await run_jobs_once(sessionmaker, settings)
        assert report["sms_sent"] == 1
        async with sessionmaker() as session:
            sink = (await session.execute(select(SmsSink))).scalar_one()
        assert sink.phone_masked == "139****0000" and sink.text == "message 0" and sink.request_id == "by-the-jobs"
        assert sink.phone_hash == keyring.lookup_hash("13900000000")

        out = io.StringIO()
        assert await sms_outbox(engine, settings, "139 0000 0000", 10, out=out) == 0
        assert "139****0000  message 0" in out.getvalue() and "13900000000" not in out.getvalue()
        other = io.StringIO()
        await sms_outbox(engine, settings, "13900000001", 10, out=other)
        assert other.getvalue() == ""
