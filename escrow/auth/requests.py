"""Who is calling: a bearer token, and for banks also a fresh, unreplayed signature over the exact request."""

import time
from typing import Any

from litestar import Request
from litestar.datastructures import Headers
from litestar.types import Receive, Scope
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from escrow import db, idempotency
from escrow.auth.tokens import (
    CALLER_SQL,
    InvalidToken,
    Principal,
    Unauthenticated,
    authenticate,
    bearer_secret,
    hash_secret,
    is_bank_secret,
    principal_from,
)
from escrow.banks.service import signing_secret_context
from escrow.kit.signing import MAX_SKEW_SECONDS, SignatureError, verify_signature
from escrow.models import BankNonce


class BadSignature(Unauthenticated):
    code = "invalid_signature"
    title = "Invalid request signature"


def _signature_error(exc: SignatureError) -> BadSignature:
    error = BadSignature(str(exc))
    error.code = exc.code  # type: ignore[misc]  # keep the precise reason: missing, malformed, expired, invalid
    return error


class ReplayedNonce(Unauthenticated):
    code = "signature_replayed"
    title = "Request nonce already used"


def path_with_query(scope: Scope) -> str:
    raw = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    return (raw + (b"?" + query if query else b"")).decode("latin-1")


_CALLER = "coalesce(t.principal_id, 'anonymous')"
# The caller's token ($1: its hash, NULL without one), and with a claim ($2: the Idempotency-Key) the claim too:
# one round trip for both.
_TOKEN_AND_CLAIM = (
    f"SELECT t.token_id, t.role, t.principal_id, {idempotency.claim_sql(_CALLER, '$2')}"
    f" FROM (SELECT 1) one LEFT JOIN ({CALLER_SQL}) t ON true {idempotency.claim_join(_CALLER, '$2')}"
)
_BANK_TOKEN = (
    "SELECT t.token_id, t.role, t.principal_id, b.id AS bank_id, b.signing_secret_enc, b.signing_algorithm"
    f" FROM ({CALLER_SQL}) t LEFT JOIN banks b ON b.id = t.principal_id"
)
_CLAIM = f"SELECT {idempotency.claim_sql('$1', '$2')} FROM (SELECT 1) one {idempotency.claim_join('$1', '$2')}"
_NONCE = "INSERT INTO bank_nonces (bank_id, nonce) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING nonce"


async def authenticate_request(
    session: AsyncSession, scope: Scope, receive: Receive, state: Any, key: str | None = None
) -> tuple[Principal | None, Any]:
    """The caller (None without credentials; 401 for bad ones) and, with an Idempotency-Key, the row of its claim,
    read in the same round trip (:func:`idempotency.claimed` tells what it means)."""
    authorization = Headers.from_scope(scope).get("authorization")
    secret = bearer_secret(authorization)
    if secret is not None and is_bank_secret(secret):
        principal = await _authenticate_bank(session, scope, receive, state, secret)
        if key is None:
            return principal, None
        return principal, await db.fetchrow(session, _CLAIM, principal.id, key)
    if key is None:
        principal, row = await authenticate(session, authorization), None
    else:
        row = await db.fetchrow(session, _TOKEN_AND_CLAIM, hash_secret(secret) if secret else None, key)
        principal = principal_from(row) if secret is not None else None
    if principal is not None and principal.role == "bank":  # a bank token without its prefix: never issued
        raise InvalidToken("The token is unknown or revoked.")
    return principal, row


async def _authenticate_bank(
    session: AsyncSession, scope: Scope, receive: Receive, state: Any, secret: str
) -> Principal:
    """A bank's token and its signature over the exact request; the nonce is burnt in a statement committed on
    its own, before the request's transaction begins, so a request that then fails still burns it."""
    row = await db.autocommit(session, _BANK_TOKEN, hash_secret(secret))
    principal = principal_from(row)
    if principal.role != "bank":
        raise InvalidToken("The token is unknown or revoked.")
    if row["bank_id"] is None:
        raise Unauthenticated("The bank behind this token no longer exists.")
    body = await Request(scope, receive).body()
    try:
        nonce = verify_signature(
            state.keyring.decrypt(row["signing_secret_enc"], signing_secret_context(row["bank_id"])),
            row["signing_algorithm"],
            scope["method"],
            path_with_query(scope),
            Headers.from_scope(scope),
            body,
            now=time.time(),
        )
    except SignatureError as exc:
        raise _signature_error(exc) from exc
    if await db.autocommit(session, _NONCE, row["bank_id"], nonce) is None:
        raise ReplayedNonce("This nonce was already used; sign every request with a new one.")
    return principal


async def forget_old_nonces(session: AsyncSession) -> int:
    """Drop nonces older than twice the clock-skew window (a background job): a request that old is refused by
    its timestamp anyway, so its nonce need not be remembered. Returns how many were dropped."""
    result = await session.execute(delete(BankNonce).where(BankNonce.seen_at < select(_horizon()).scalar_subquery()))
    return result.rowcount or 0


def _horizon() -> Any:
    from sqlalchemy import func, text

    return func.now() - text(f"interval '{2 * MAX_SKEW_SECONDS} seconds'")
