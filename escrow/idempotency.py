"""A state-changing request with a used ``Idempotency-Key`` replays its first response and changes nothing.

The stored response is written in the same transaction as the change it describes, so either both exist or
neither does. A transaction-scoped advisory lock on (caller, key) tells a duplicate that arrives while the
first is still running (409) apart from one that arrives after it committed (replay).
"""

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func
from sqlalchemy.ext.asyncio import AsyncSession

from escrow import db
from escrow.errors import EscrowError
from escrow.models import IdempotencyKey

HEADER = "idempotency-key"
KEY_PATTERN = r"^[\x20-\x7e]{1,255}$"
_VALID_KEY = re.compile(KEY_PATTERN)


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


def refusal(exc: EscrowError) -> StoredResponse:
    """A refusal as a response to send as it is (problem+json), where no exception handler is left to render it."""
    body = {"type": f"urn:escrow:problem:{exc.code}", "title": exc.title, "status": exc.status, "detail": exc.detail}
    return StoredResponse(exc.status, "application/problem+json", json.dumps({**body, "code": exc.code}).encode())


class SecretAlreadyIssued(EscrowError):
    code = "secret_already_issued"
    status = 409
    title = "Already done; its secret was shown once"


SECRET_SHOWN_ONCE = refusal(
    SecretAlreadyIssued(
        "This request already succeeded. Secrets are shown once and not kept: rotate the token, or ask for a new "
        "code, to get a new one."
    )
)


def validate_key(key: str | None) -> str:
    if key is None:
        raise IdempotencyKeyRequired(
            "State-changing requests need an Idempotency-Key header (1-255 printable characters).",
            errors=[{"field": "Idempotency-Key", "rule": "missing", "message": "required"}],
        )
    if not _VALID_KEY.match(key):
        raise IdempotencyKeyInvalid(
            "Idempotency-Key must be 1-255 printable ASCII characters.",
            errors=[
                {"field": "Idempotency-Key", "rule": "pattern", "message": "must be 1-255 printable ASCII characters"}
            ],
        )
    return key


def request_hash(method: str, path: str, query: bytes, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query, body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Claim:
    """What a state-changing request claims: its key, and the fingerprint of what it asks."""

    key: str
    fingerprint: str


def claim_sql(caller: str, key: str) -> str:
    """SQL columns that take the (caller, key) lock for this transaction and read the response stored under the
    key (``caller`` and ``key`` are SQL expressions); the caller adds ``FROM``/``JOIN idempotency_keys k`` via
    :func:`claim_join`. A response committed after the statement's snapshot but before the lock was taken is
    not seen here: :data:`STORE_SQL` then finds the key taken, and the request is refused as still in flight."""
    return (
        f"pg_try_advisory_xact_lock(hashtextextended('idem:' || {caller} || ':' || {key}, 0)) AS idem_acquired,"
        " k.request_hash AS idem_hash, k.status AS idem_status, k.content_type AS idem_content_type,"
        " k.body AS idem_body"
    )


def claim_join(caller: str, key: str) -> str:
    return f"LEFT JOIN idempotency_keys k ON k.caller = {caller} AND k.key = {key} AND k.expires_at > now()"


def claimed(row: Any, claim: Claim) -> StoredResponse | None:
    """The outcome of a claim read with :func:`claim_sql`: the stored response of a request already done, None
    for a new one; 409 while the first request with the key is still running, 422 for a different request."""
    if not row["idem_acquired"]:
        raise IdempotencyInFlight("The first request with this Idempotency-Key has not finished; retry later.")
    if row["idem_hash"] is None:
        return None
    if row["idem_hash"] != claim.fingerprint:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was used for a different request; use a new key for a new request.",
            errors=[
                {
                    "field": "Idempotency-Key",
                    "rule": "reused",
                    "message": "already used with a different method, path or body",
                }
            ],
        )
    return StoredResponse(row["idem_status"], row["idem_content_type"], row["idem_body"])


_STORED = (
    "SELECT true AS idem_acquired, request_hash AS idem_hash, status AS idem_status,"
    " content_type AS idem_content_type, body AS idem_body"
    " FROM idempotency_keys WHERE caller = $1 AND key = $2 AND expires_at > now()"
)


async def stored_meanwhile(session: AsyncSession, caller: str, claim: Claim) -> StoredResponse | None:
    """The response stored under the claim's key for the same request, if there is one now (read in a new
    transaction, after the request's own was rolled back)."""
    row = await db.fetchrow(session, _STORED, caller, claim.key)
    if row is None or row["idem_hash"] != claim.fingerprint:
        return None
    return claimed(row, claim)


# Record the response ($1 caller, $2 key, $3 fingerprint, $4 status, $5 content type, $6 body, $7 seconds to
# keep it); an expired row under the same key is overwritten, a live one is left alone (RETURNING gives no row).
STORE_SQL = (
    "INSERT INTO idempotency_keys (caller, key, request_hash, status, content_type, body, created_at, expires_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, now(), now() + make_interval(secs => $7))"
    " ON CONFLICT (caller, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, status = EXCLUDED.status,"
    "   content_type = EXCLUDED.content_type, body = EXCLUDED.body, created_at = EXCLUDED.created_at,"
    "   expires_at = EXCLUDED.expires_at"
    " WHERE idempotency_keys.expires_at <= now()"
    " RETURNING 1"
)


def store_values(
    caller: str, claim: Claim, response: StoredResponse, ttl_seconds: int
) -> tuple[str, str, str, int, str, bytes, int]:
    return (caller, claim.key, claim.fingerprint, response.status, response.content_type, response.body, ttl_seconds)


async def purge_expired(session: AsyncSession) -> int:
    result = await session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= func.now()))
    return result.rowcount or 0
