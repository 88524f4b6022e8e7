"""Consumers are known by a keyed hash of their phone number; they sign in with a one-time code sent to the phone.

Anyone may ask for a code for a phone (``POST /v1/consumer-codes``): it is sent by SMS through the outbox and
never shown in any response, and the answer is the same whether the phone is known or not. An unknown phone
becomes a consumer only when it signs in with a valid code. Codes are stored hashed, expire, are burnt after a
few wrong tries, and code requests are limited per phone and per client address (counted in PostgreSQL).

A merchant registers a consumer at its point of sale (``POST /v1/consumers``) to sell to them; what it is told
depends only on its own link to the consumer, never on whether the phone is known elsewhere.
"""

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from escrow.auth.tokens import Principal, Unauthenticated, issue_token
from escrow.config import Settings
from escrow.errors import EscrowError, NotFound
from escrow.kit.crypto import Keyring, mask_phone, normalize_phone
from escrow.kit.ids import new_id, new_random_id
from escrow.models import Consumer, ConsumerCode, ConsumerLink
from escrow.sms import queue

CODE_TEXT = (
    "Your escrow sign-in code is {code}, valid for {minutes} minutes. Never give it to anyone - "
    "no merchant or official will ask for it."
)


class InvalidCode(Unauthenticated):
    code = "invalid_code"
    title = "Wrong or expired sign-in code"


class TooManyCodes(EscrowError):
    code = "too_many_codes"
    status = 429
    title = "Too many sign-in codes requested"


@dataclass(frozen=True, slots=True)
class ConsumerView:
    """A consumer as the caller may see it: ``created_at`` is, for a merchant, when it registered the consumer."""

    id: str
    phone_masked: str
    created_at: datetime


def _phone_hash(keyring: Keyring, phone: str) -> str:
    """The look-up hash of a phone number, always of its normal form (``normalize_phone``; the request schemas
    normalize too, and refuse what is not a number), so one phone is one consumer however it was typed."""
    return keyring.lookup_hash(normalize_phone(phone))


def phone_context(consumer_id: str) -> str:
    """The encryption context of a consumer's phone (``consumers.phone_enc``)."""
    return f"consumers.phone:{consumer_id}"


async def _find_or_create(session: AsyncSession, keyring: Keyring, phone: str) -> str:
    """The consumer with this phone, created if new; its phone is kept encrypted (for notices) if it wasn't yet."""
    phone = normalize_phone(phone)
    phone_hash = _phone_hash(keyring, phone)
    new = new_random_id("con")
    await session.execute(
        insert(Consumer)
        .values(
            id=new,
            phone_hash=phone_hash,
            phone_masked=mask_phone(phone),
            phone_enc=keyring.encrypt(phone, phone_context(new)),
        )
        .on_conflict_do_nothing(index_elements=[Consumer.phone_hash])
    )
    found = (
        await session.execute(select(Consumer.id, Consumer.phone_enc).where(Consumer.phone_hash == phone_hash))
    ).one()
    if found.phone_enc is None:  # known from before phones were kept: keep it now
        await session.execute(
            update(Consumer)
            .where(Consumer.id == found.id, Consumer.phone_enc.is_(None))
            .values(phone_enc=keyring.encrypt(phone, phone_context(found.id)))
        )
    return found.id


async def register(session: AsyncSession, keyring: Keyring, principal: Principal, phone: str) -> ConsumerView:
    """Find or create the consumer with this phone and link the merchant to it. The answer depends only on the
    merchant's own link (the consumer's id, which carries no time, the masked phone, and when this merchant
    registered it), so a merchant can't tell whether the phone was known elsewhere."""
    consumer_id = await _find_or_create(session, keyring, phone)
    await session.execute(
        insert(ConsumerLink).values(consumer_id=consumer_id, merchant_id=principal.id).on_conflict_do_nothing()
    )
    link = await session.get(ConsumerLink, (consumer_id, principal.id))
    assert link is not None
    await session.refresh(link)
    return ConsumerView(consumer_id, mask_phone(normalize_phone(phone)), link.created_at)


async def get(session: AsyncSession, principal: Principal, consumer_id: str) -> ConsumerView:
    consumer = await session.get(Consumer, consumer_id)
    if consumer is not None:
        if principal.role == "regulator" or (principal.role == "consumer" and principal.id == consumer_id):
            return ConsumerView(consumer.id, consumer.phone_masked, consumer.created_at)
        if principal.role == "merchant":
            link = await session.get(ConsumerLink, (consumer_id, principal.id))
            if link is not None:
                return ConsumerView(consumer.id, consumer.phone_masked, link.created_at)
    raise NotFound(f"no consumer {consumer_id}")


# One more request of (kind, key) in the current fixed window; returns the count and the seconds the window has left.
_COUNT = text(
    "INSERT INTO rate_counts AS r (kind, key, window_start, count)"
    " VALUES (:kind, :key, to_timestamp(floor(extract(epoch FROM now()) / :window) * :window), 1)"
    " ON CONFLICT (kind, key, window_start) DO UPDATE SET count = r.count + 1"
    " RETURNING count, ceil(extract(epoch FROM r.window_start + make_interval(secs => :window) - now()))::int AS left"
)
WINDOW_SECONDS = 3600


async def _count(sessionmaker: async_sessionmaker, kind: str, key: str, limit: int, what: str) -> None:
    """Count the request in a transaction of its own (a request refused later still counts); 429 past ``limit``."""
    async with sessionmaker() as counting, counting.begin():
        row = (await counting.execute(_COUNT, {"kind": kind, "key": key, "window": WINDOW_SECONDS})).one()
    if row.count > limit:
        retry_after = max(int(row.left), 1)
        raise TooManyCodes(
            f"At most {limit} sign-in codes per {what} per hour; retry in {retry_after} s.", retry_after=retry_after
        )


async def send_code(
    session: AsyncSession,
    sessionmaker: async_sessionmaker,
    settings: Settings,
    keyring: Keyring,
    phone: str,
    client_address: str,
) -> datetime:
    """Queue a new one-time code for the phone in the outbox (sent by SMS after commit), replacing any code still
    open. The same for known and unknown phones. Returns when the code expires."""
    phone = normalize_phone(phone)
    phone_hash = _phone_hash(keyring, phone)
    await _count(
        sessionmaker,
        "code_address",
        keyring.lookup_hash(f"address:{client_address}"),
        settings.consumer_codes_per_address_per_hour,
        "address",
    )
    await _count(sessionmaker, "code_phone", phone_hash, settings.consumer_codes_per_phone_per_hour, "phone")
    now = datetime.now(UTC)
    await session.execute(
        update(ConsumerCode)
        .where(ConsumerCode.phone_hash == phone_hash, ConsumerCode.used_at.is_(None))
        .values(used_at=now)
    )
    code = f"{secrets.randbelow(10**6):06d}"
    code_id = new_id("otc")
    expires_at = now + timedelta(seconds=settings.consumer_code_ttl_seconds)
    session.add(
        ConsumerCode(
            id=code_id,
            phone_hash=phone_hash,
            code_hash=keyring.lookup_hash(f"{phone_hash}:{code}"),
            issued_by="sms",
            expires_at=expires_at,
        )
    )
    await session.flush()
    minutes = max(settings.consumer_code_ttl_seconds // 60, 1)
    await queue(session, keyring, phone, CODE_TEXT.format(code=code, minutes=minutes), f"consumer-code:{code_id}")
    return expires_at


async def forget_old_counts(session: AsyncSession) -> int:
    """Drop rate counts of windows that ended more than a day ago (a background job)."""
    result = await session.execute(text("DELETE FROM rate_counts WHERE window_start < now() - interval '1 day'"))
    return result.rowcount or 0  # type: ignore[attr-defined]


async def sign_in(
    session: AsyncSession,
    sessionmaker: async_sessionmaker,
    settings: Settings,
    keyring: Keyring,
    phone: str,
    code: str,
) -> tuple[ConsumerView, str]:
    """Exchange a valid code for a consumer token; the phone becomes a consumer now if it was not one.

    Every try first spends one attempt of the open code, in a transaction of its own that stays committed
    whatever this request does next; concurrent guesses each spend one, so no more tries than allowed are
    ever compared with the code.
    """
    phone_hash = _phone_hash(keyring, phone)
    open_code = (
        select(ConsumerCode.id)
        .where(ConsumerCode.phone_hash == phone_hash, ConsumerCode.used_at.is_(None))
        .order_by(ConsumerCode.created_at.desc())
        .limit(1)
        .scalar_subquery()
    )
    async with sessionmaker() as attempts, attempts.begin():
        spent = (
            await attempts.execute(
                update(ConsumerCode)
                .where(
                    ConsumerCode.id == open_code,
                    ConsumerCode.used_at.is_(None),
                    ConsumerCode.expires_at > datetime.now(UTC),
                    ConsumerCode.attempts < settings.consumer_code_attempts,
                )
                .values(attempts=ConsumerCode.attempts + 1)
                .returning(ConsumerCode.id, ConsumerCode.code_hash)
            )
        ).first()
    if spent is None or not secrets.compare_digest(spent.code_hash, keyring.lookup_hash(f"{phone_hash}:{code}")):
        raise InvalidCode("The code is wrong or has expired.")
    # claim it atomically: of two concurrent sign-ins with the same code, one gets a token
    claimed = await session.scalar(
        update(ConsumerCode)
        .where(ConsumerCode.id == spent.id, ConsumerCode.used_at.is_(None))
        .values(used_at=datetime.now(UTC))
        .returning(ConsumerCode.id)
    )
    if claimed is None:
        raise InvalidCode("The code is wrong or has expired.")
    consumer = await session.get(Consumer, await _find_or_create(session, keyring, phone))
    assert consumer is not None
    await session.refresh(consumer)
    _, token = await issue_token(session, "consumer", "consumer sign-in", principal_id=consumer.id)
    return ConsumerView(consumer.id, consumer.phone_masked, consumer.created_at), token
