"""Consumers are known by a keyed hash of their phone number; they sign in with a one-time code.

In this service a merchant that met the consumer (or the regulator) issues the code and hands it over; a
deployment puts SMS delivery to the phone in between, so that only the phone's holder sees it. Codes are
stored hashed, expire, and are burnt after a few wrong tries.
"""

import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from escrow.auth.tokens import Principal, Unauthenticated, issue_token
from escrow.config import Settings
from escrow.errors import NotFound
from escrow.kit.crypto import Keyring, mask_phone, normalize_phone
from escrow.kit.ids import new_id
from escrow.models import Consumer, ConsumerCode, ConsumerLink


class InvalidCode(Unauthenticated):
    code = "invalid_code"
    title = "Wrong or expired sign-in code"


def _phone_hash(keyring: Keyring, phone: str) -> str:
    """The look-up hash of a phone number, always of its normal form (``normalize_phone``; the request schemas
    normalize too, and refuse what is not a number), so one phone is one consumer however it was typed."""
    return keyring.lookup_hash(normalize_phone(phone))


async def register(session: AsyncSession, keyring: Keyring, principal: Principal, phone: str) -> tuple[Consumer, bool]:
    """Find or create the consumer with this phone; a merchant is linked to it. Returns (consumer, created)."""
    phone = normalize_phone(phone)
    phone_hash = _phone_hash(keyring, phone)
    created = await session.scalar(
        insert(Consumer)
        .values(id=new_id("con"), phone_hash=phone_hash, phone_masked=mask_phone(phone))
        .on_conflict_do_nothing(index_elements=[Consumer.phone_hash])
        .returning(Consumer.id)
    )
    consumer = await session.scalar(select(Consumer).where(Consumer.phone_hash == phone_hash))
    assert consumer is not None
    if principal.role == "merchant":
        await session.execute(
            insert(ConsumerLink).values(consumer_id=consumer.id, merchant_id=principal.id).on_conflict_do_nothing()
        )
    return consumer, created is not None


async def get(session: AsyncSession, principal: Principal, consumer_id: str) -> Consumer:
    consumer = await session.get(Consumer, consumer_id)
    visible = consumer is not None and (
        principal.role == "regulator"
        or (principal.role == "consumer" and principal.id == consumer_id)
        or (principal.role == "merchant" and await session.get(ConsumerLink, (consumer_id, principal.id)) is not None)
    )
    if not visible:
        raise NotFound(f"no consumer {consumer_id}")
    return consumer  # type: ignore[return-value]


async def issue_code(
    session: AsyncSession, settings: Settings, keyring: Keyring, principal: Principal, consumer_id: str
) -> tuple[str, datetime]:
    consumer = await get(session, principal, consumer_id)
    # a new code replaces any earlier one still open
    await session.execute(
        update(ConsumerCode)
        .where(ConsumerCode.consumer_id == consumer.id, ConsumerCode.used_at.is_(None))
        .values(used_at=datetime.now(UTC))
    )
    code = f"{secrets.randbelow(10**6):06d}"
    expires_at = datetime.now(UTC) + timedelta(seconds=settings.consumer_code_ttl_seconds)
    session.add(
        ConsumerCode(
            id=new_id("otc"),
            consumer_id=consumer.id,
            code_hash=keyring.lookup_hash(f"{consumer.id}:{code}"),
            issued_by=principal.id,
            expires_at=expires_at,
        )
    )
    await session.flush()
    return code, expires_at


async def sign_in(
    session: AsyncSession,
    sessionmaker: async_sessionmaker,
    settings: Settings,
    keyring: Keyring,
    phone: str,
    code: str,
) -> tuple[Consumer, str]:
    """Exchange a valid code for a consumer token.

    Every try first spends one attempt of the open code, in a transaction of its own that stays committed
    whatever this request does next; concurrent guesses each spend one, so no more tries than allowed are
    ever compared with the code.
    """
    phone_hash = _phone_hash(keyring, phone)
    open_code = (
        select(ConsumerCode.id)
        .join(Consumer, Consumer.id == ConsumerCode.consumer_id)
        .where(Consumer.phone_hash == phone_hash, ConsumerCode.used_at.is_(None))
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
                .returning(ConsumerCode.id, ConsumerCode.consumer_id, ConsumerCode.code_hash)
            )
        ).first()
    if spent is None or not secrets.compare_digest(spent.code_hash, keyring.lookup_hash(f"{spent.consumer_id}:{code}")):
        raise InvalidCode("The code is wrong or has expired.")
    # claim it atomically: of two concurrent sign-ins with the same code, one gets a token
    claimed = await session.scalar(
        update(ConsumerCode)
        .where(ConsumerCode.id == spent.id, ConsumerCode.used_at.is_(None))
        .values(used_at=datetime.now(UTC))
        .returning(ConsumerCode.id)
    )
    consumer = await session.get(Consumer, spent.consumer_id)
    if claimed is None or consumer is None:
        raise InvalidCode("The code is wrong or has expired.")
    _, token = await issue_token(session, "consumer", "consumer sign-in", principal_id=consumer.id)
    return consumer, token
