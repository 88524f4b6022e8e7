"""A state-changing request with a used ``Idempotency-Key`` replays its first response and changes nothing.

The stored response is written in the same transaction as the change it describes, so either both exist or
neither does. A transaction-scoped advisory lock on (caller, key) tells a duplicate that arrives while the
first is still running (409) apart from one that arrives after it committed (replay).
"""

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.errors import EscrowError
from escrow.models import IdempotencyKey

HEADER = "idempotency-key"
_VALID_KEY = re.compile(r"^[\x20-\x7e]{1,255}$")


class IdempotencyKeyRequired(EscrowError):
    code = "idempotency_key_required"
    status = 400
    title = "Idempotency-Key required"


class IdempotencyKeyInvalid(EscrowError):
    code = "idempotency_key_invalid"
    status = 400
    title = "Invalid Idempotency-Key"


class IdempotencyKeyReused(EscrowError):
    code = "idempotency_key_reused"
    status = 422
    title = "Idempotency-Key reused with a different request"


class IdempotencyInFlight(EscrowError):
    code = "idempotency_in_flight"
    status = 409
    title = "A request with this Idempotency-Key is still running"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    content_type: str
    body: bytes


SECRET_SHOWN_ONCE = StoredResponse(
    409,
    "application/problem+json",
    json.dumps(
        {
            "type": "urn:escrow:problem:secret_already_issued",
            "title": "Already done; its secret was shown once",
            "status": 409,
            "detail": "This request already succeeded. Secrets are shown once and not kept: rotate the token, or "
            "ask for a new code, to get a new one.",
            "code": "secret_already_issued",
        }
    ).encode(),
)


def validate_key(key: str | None) -> str:
    if key is None:
        raise IdempotencyKeyRequired(
            "State-changing requests need an Idempotency-Key header (1-255 printable characters).",
            errors=[{"field": "Idempotency-Key", "message": "required"}],
        )
    if not _VALID_KEY.match(key):
        raise IdempotencyKeyInvalid(
            "Idempotency-Key must be 1-255 printable ASCII characters.",
            errors=[{"field": "Idempotency-Key", "message": "must be 1-255 printable ASCII characters"}],
        )
    return key


def request_hash(method: str, path: str, query: bytes, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query, body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


async def claim(session: AsyncSession, caller: str, key: str, fingerprint: str) -> StoredResponse | None:
    """Take the key for this transaction; return the stored response if the request was already done."""
    acquired = await session.scalar(
        text("SELECT pg_try_advisory_xact_lock(hashtextextended(:lock_name, 0))"),
        {"lock_name": f"idem:{caller}:{key}"},
    )
    if not acquired:
        raise IdempotencyInFlight("The first request with this Idempotency-Key has not finished; retry later.")
    row = await session.scalar(
        select(IdempotencyKey).where(
            IdempotencyKey.caller == caller, IdempotencyKey.key == key, IdempotencyKey.expires_at > func.now()
        )
    )
    if row is None:
        return None
    if row.request_hash != fingerprint:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was used for a different request; use a new key for a new request.",
            errors=[{"field": "Idempotency-Key", "message": "already used with a different method, path or body"}],
        )
    return StoredResponse(row.status, row.content_type, row.body)


async def store(
    session: AsyncSession, caller: str, key: str, fingerprint: str, response: StoredResponse, ttl_seconds: int
) -> None:
    """Record the response; an expired row under the same key is overwritten."""
    now = datetime.now(UTC)
    values = {
        "caller": caller,
        "key": key,
        "request_hash": fingerprint,
        "status": response.status,
        "content_type": response.content_type,
        "body": response.body,
        "created_at": now,
        "expires_at": now + timedelta(seconds=ttl_seconds),
    }
    stmt = insert(IdempotencyKey).values(values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[IdempotencyKey.caller, IdempotencyKey.key],
        set_={k: stmt.excluded[k] for k in values if k not in ("caller", "key")},
        where=IdempotencyKey.expires_at <= func.now(),
    )
    await session.execute(stmt)


async def purge_expired(session: AsyncSession) -> int:
    result = await session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= func.now()))
    return result.rowcount or 0
