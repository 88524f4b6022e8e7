"""Bearer tokens: ≥256 random bits behind a readable role prefix, stored only as SHA-256, revocable at once."""

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from escrow import db
from escrow.errors import Conflict, EscrowError, NotFound
from escrow.kit.ids import new_id
from escrow.models import ApiToken

ROLE_PREFIX = {"regulator": "reg", "bank": "bank", "merchant": "mer", "consumer": "con"}


class Unauthenticated(EscrowError):
    code = "unauthenticated"
    status = 401
    title = "Authentication required"


class InvalidToken(Unauthenticated):
    code = "invalid_token"
    title = "Invalid or revoked token"


class Forbidden(EscrowError):
    code = "forbidden"
    status = 403
    title = "Not allowed for this role"


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    role: str
    token_id: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def issue_token(
    session: AsyncSession, role: str, name: str, principal_id: str | None = None
) -> tuple[ApiToken, str]:
    """Create a token; the secret is returned once and never stored."""
    if role not in ROLE_PREFIX:
        raise ValueError(f"unknown role {role!r}")
    secret = f"esk_{ROLE_PREFIX[role]}_{secrets.token_urlsafe(32)}"
    token = ApiToken(
        id=new_id("tok"),
        role=role,
        principal_id=principal_id or new_id(ROLE_PREFIX[role]),
        name=name,
        token_hash=hash_secret(secret),
        hint=f"{secret[:8]}…{secret[-4:]}",
    )
    session.add(token)
    await session.flush()
    return token, secret


def bearer_secret(authorization: str | None) -> str | None:
    """The secret of an ``Authorization: Bearer`` header; None without one, 401 for a malformed one."""
    if not authorization:
        return None
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise InvalidToken("Authorization must be 'Bearer <token>'.")
    return secret.strip()


def is_bank_secret(secret: str) -> bool:
    """Whether a secret has the bank prefix: bank calls are also signed, so they are checked differently. The
    prefix only picks the way in; what a caller may do follows from the role stored with the token."""
    return secret.startswith(f"esk_{ROLE_PREFIX['bank']}_")


# The live token behind a secret's hash ($1); callers add their own columns and joins.
CALLER_SQL = "SELECT id AS token_id, role, principal_id FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL"


async def authenticate(session: AsyncSession, authorization: str | None) -> Principal | None:
    """The principal behind an ``Authorization: Bearer`` header; None without one, 401 for a bad one."""
    secret = bearer_secret(authorization)
    if secret is None:
        return None
    return principal_from(await db.fetchrow(session, CALLER_SQL, hash_secret(secret)))


def principal_from(row: Any) -> Principal:
    """The principal of a row with ``token_id``, ``role`` and ``principal_id``; 401 when the token is unknown."""
    if row is None or row["token_id"] is None:
        raise InvalidToken("The token is unknown or revoked.")
    return Principal(id=row["principal_id"], role=row["role"], token_id=row["token_id"])


async def _visible_token(session: AsyncSession, principal: Principal, token_id: str) -> ApiToken:
    token = await session.get(ApiToken, token_id, with_for_update=True)
    if token is None or (principal.role != "regulator" and token.principal_id != principal.id):
        raise NotFound(f"no token {token_id}")
    return token


async def list_tokens(session: AsyncSession, principal: Principal) -> list[ApiToken]:
    query = select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)
    if principal.role != "regulator":
        query = query.where(ApiToken.principal_id == principal.id)
    return list(await session.scalars(query))


async def revoke(session: AsyncSession, principal: Principal, token_id: str) -> ApiToken:
    token = await _visible_token(session, principal, token_id)
    if token.revoked_at is None:
        token.revoked_at = func.now()
        await session.flush()
        await session.refresh(token)
    return token


async def rotate(session: AsyncSession, principal: Principal, token_id: str) -> tuple[ApiToken, str]:
    """A new secret for the same principal; the old token stops working at once.

    A new secret is shown only to the party the token belongs to: every principal, the regulator included, rotates
    only its own tokens (others' are answered 404). The regulator may revoke anyone's token, and gives a bank or
    merchant a new one only through the explicit, audited ``POST /v1/banks/{id}/tokens`` and
    ``POST /v1/merchants/{id}/tokens``; a consumer signs in again."""
    token = await session.get(ApiToken, token_id, with_for_update=True)
    if token is None or token.principal_id != principal.id:
        raise NotFound(f"no token {token_id} of yours")
    if token.revoked_at is not None:
        raise Conflict(f"token {token_id} is revoked; a revoked token can't be rotated")
    token.revoked_at = func.now()
    return await issue_token(session, token.role, token.name, principal_id=token.principal_id)


async def issue_party_token(session: AsyncSession, role: str, principal_id: str, name: str) -> tuple[ApiToken, str]:
    """A new token for an existing bank or merchant (the regulator's explicit, audited issuing call)."""
    from escrow.models import Bank, Merchant

    model = {"bank": Bank, "merchant": Merchant}[role]
    if await session.get(model, principal_id) is None:
        raise NotFound(f"no {role} {principal_id}")
    return await issue_token(session, role, name, principal_id=principal_id)
