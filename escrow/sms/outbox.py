"""The transactional outbox of text messages (``sms_outbox``).

:func:`queue` inserts a message in the caller's transaction, so it exists exactly when the change that decided it
committed; its ``dedup_key`` is unique, so a retried cause never queues it twice. :func:`deliver_due` claims due
messages (``FOR UPDATE SKIP LOCKED``) and leases them (``locked_until``) in one short transaction, sends them
outside any transaction, and records each result in another: sent; or, after a retryable failure, due again
after an exponential backoff, dead after ``ESCROW_SMS_MAX_ATTEMPTS``; dead at once when refused. Concurrent
deliverers (every worker, the background jobs) never claim the same message; a deliverer that dies mid-send
leaves the message to be retried when its lease ends (the gateway deduplicates by ``request_id``).
"""

import asyncio

import structlog
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from escrow.config import Settings
from escrow.kit.crypto import Keyring, normalize_phone
from escrow.kit.ids import new_id
from escrow.models import SmsOutbox
from escrow.sms.sender import SmsOperationalError, SmsRefused, SmsSender

log = structlog.get_logger("escrow.sms")

MAX_BACKOFF_SECONDS = 3600


def phone_context(outbox_id: str) -> str:
    return f"sms_outbox.phone:{outbox_id}"


async def queue(session: AsyncSession, keyring: Keyring, phone: str, text_: str, dedup_key: str) -> bool:
    """Queue a message in the caller's transaction; False when one with this ``dedup_key`` already exists."""
    phone = normalize_phone(phone)
    outbox_id = new_id("sms")
    queued = await session.scalar(
        insert(SmsOutbox)
        .values(
            id=outbox_id,
            dedup_key=dedup_key,
            phone_enc=keyring.encrypt(phone, phone_context(outbox_id)),
            phone_hash=keyring.lookup_hash(phone),
            text=text_,
        )
        .on_conflict_do_nothing(index_elements=[SmsOutbox.dedup_key])
        .returning(SmsOutbox.id)
    )
    return queued is not None


_CLAIM = text(
    "WITH due AS ("
    "  SELECT id FROM sms_outbox"
    "  WHERE status = 'pending' AND next_attempt_at <= now() AND (locked_until IS NULL OR locked_until <= now())"
    "  ORDER BY next_attempt_at, id LIMIT :limit FOR UPDATE SKIP LOCKED)"
    " UPDATE sms_outbox o SET locked_until = now() + make_interval(secs => :lease), attempts = o.attempts + 1"
    " FROM due WHERE o.id = due.id"
    " RETURNING o.id, o.dedup_key, o.phone_enc, o.text, o.attempts"
)
_SENT = text(
    "UPDATE sms_outbox SET status = 'sent', sent_at = now(), locked_until = NULL, last_error = NULL"
    " WHERE id = :id AND status = 'pending'"
)
_FAILED = text(
    "UPDATE sms_outbox SET status = CASE WHEN :dead THEN 'dead' ELSE 'pending' END, locked_until = NULL,"
    " last_error = :error, next_attempt_at = now() + make_interval(secs => :delay)"
    " WHERE id = :id AND status = 'pending'"
)


def backoff_seconds(settings: Settings, attempts: int) -> float:
    """Wait after the ``attempts``-th failed attempt: base, 2·base, 4·base, … up to an hour."""
    return min(settings.sms_retry_base_seconds * 2 ** (attempts - 1), MAX_BACKOFF_SECONDS)


async def deliver_due(
    sessionmaker: async_sessionmaker, sender: SmsSender, settings: Settings, keyring: Keyring, *, limit: int = 100
) -> int:
    """Send what is due now; returns how many messages were sent."""
    async with sessionmaker() as session:
        claimed = (await session.execute(_CLAIM, {"limit": limit, "lease": settings.sms_lease_seconds})).all()
        await session.commit()  # transaction boundary: the claim (a lease) commits before anything is sent
    sent = 0
    for row in claimed:
        dead, error = False, None
        try:
            await sender.send(keyring.decrypt(row.phone_enc, phone_context(row.id)), row.text, key=row.dedup_key)
        except SmsRefused as exc:
            dead, error = True, str(exc)
        except SmsOperationalError as exc:
            dead, error = row.attempts >= settings.sms_max_attempts, str(exc)
        except Exception as exc:  # a bug or an unexpected failure of the sender: retried like a network error
            dead, error = row.attempts >= settings.sms_max_attempts, f"unexpected: {type(exc).__name__}"
            log.exception("sms_sender_failed", outbox_id=row.id)
        async with sessionmaker() as session:
            if error is None:
                await session.execute(_SENT, {"id": row.id})
                sent += 1
            else:
                delay = 0 if dead else backoff_seconds(settings, row.attempts)
                await session.execute(_FAILED, {"id": row.id, "dead": dead, "error": error[:500], "delay": delay})
            await session.commit()  # transaction boundary: each message's outcome in a transaction of its own
        if error is None:
            log.info("sms_sent", outbox_id=row.id, dedup_key=row.dedup_key, attempts=row.attempts)
        else:
            log.warning(
                "sms_failed", outbox_id=row.id, dedup_key=row.dedup_key, attempts=row.attempts, dead=dead, error=error
            )
    return sent


class SmsDispatcher:
    """Delivers right after a request that queued a message commits (best effort: the background jobs deliver
    whatever this misses). :meth:`wake` is called after commit; :meth:`run` is the worker's background task."""

    def __init__(
        self, sessionmaker: async_sessionmaker, sender: SmsSender, settings: Settings, keyring: Keyring
    ) -> None:
        self.sessionmaker = sessionmaker
        self.sender = sender
        self.settings = settings
        self.keyring = keyring
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    async def run(self) -> None:
        while True:
            await self._event.wait()
            self._event.clear()
            try:
                await deliver_due(self.sessionmaker, self.sender, self.settings, self.keyring)
            except Exception:
                log.exception("sms_delivery_failed")
