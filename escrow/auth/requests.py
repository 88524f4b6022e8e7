"""Who is calling: a bearer token, and for banks also a fresh, unreplayed signature over the exact request."""

import time
from typing import Any

from litestar import Request
from litestar.datastructures import Headers
from litestar.types import Receive, Scope
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.auth.tokens import Principal, Unauthenticated, authenticate
from escrow.banks.service import signing_secret_context
from escrow.kit.signing import MAX_SKEW_SECONDS, SignatureError, verify_signature
from escrow.models import Bank, BankNonce


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


async def authenticate_request(session: AsyncSession, scope: Scope, receive: Receive, state: Any) -> Principal | None:
    principal = await authenticate(session, Headers.from_scope(scope).get("authorization"))
    if principal is None or principal.role != "bank":
        return principal
    bank = await session.get(Bank, principal.id)
    if bank is None:
        raise Unauthenticated("The bank behind this token no longer exists.")
    body = await Request(scope, receive).body()
    try:
        nonce = verify_signature(
            state.keyring.decrypt(bank.signing_secret_enc, signing_secret_context(bank.id)),
            bank.signing_algorithm,
            scope["method"],
            path_with_query(scope),
            Headers.from_scope(scope),
            body,
            now=time.time(),
        )
    except SignatureError as exc:
        raise _signature_error(exc) from exc
    # Give the request's connection back before the nonce's own transaction takes one: holding two at once
    # lets a burst of bank calls exhaust the pool with every request waiting for its second connection.
    bank_id = bank.id
    await session.rollback()
    await _remember_nonce(state, bank_id, nonce)
    return principal


async def _remember_nonce(state: Any, bank_id: str, nonce: str) -> None:
    """Record the nonce in a transaction of its own, so a request that fails still burns it."""
    async with state.sessionmaker() as nonces, nonces.begin():
        inserted = await nonces.execute(
            insert(BankNonce).values(bank_id=bank_id, nonce=nonce).on_conflict_do_nothing().returning(BankNonce.nonce)
        )
        if inserted.first() is None:
            raise ReplayedNonce("This nonce was already used; sign every request with a new one.")


async def forget_old_nonces(session: AsyncSession) -> int:
    """Drop nonces older than twice the clock-skew window (a background job): a request that old is refused by
    its timestamp anyway, so its nonce need not be remembered. Returns how many were dropped."""
    result = await session.execute(delete(BankNonce).where(BankNonce.seen_at < select(_horizon()).scalar_subquery()))
    return result.rowcount or 0


def _horizon() -> Any:
    from sqlalchemy import func, text

    return func.now() - text(f"interval '{2 * MAX_SKEW_SECONDS} seconds'")
