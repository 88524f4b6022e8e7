"""Ledger refusals, each with a stable code; database errors raised by the ledger's SQL map onto them."""

import json
from typing import Any

import asyncpg
from sqlalchemy.exc import DBAPIError

from escrow.errors import EscrowError


class LedgerError(EscrowError):
    code = "ledger_error"
    status = 409
    title = "Ledger refused the movement"


class InsufficientFunds(LedgerError):
    code = "insufficient_funds"
    title = "Insufficient funds"


class AccountFrozen(LedgerError):
    code = "account_frozen"
    status = 423
    title = "Account frozen"


class Unbalanced(LedgerError):
    code = "unbalanced_entry"
    status = 422
    title = "Entry does not balance"


class InvalidMovement(LedgerError):
    code = "invalid_movement"
    status = 422
    title = "Invalid movement"


class UnknownAccount(LedgerError):
    code = "ledger_account_unknown"
    status = 422
    title = "Unknown ledger account"


class PendingNotFound(LedgerError):
    code = "pending_not_found"
    status = 404
    title = "Pending entry not found"


class AlreadyResolved(LedgerError):
    code = "pending_already_resolved"
    title = "Pending entry already resolved"


class AlreadyPosted(AlreadyResolved):
    code = "already_posted"
    title = "Pending entry already posted"


class AlreadyVoided(AlreadyResolved):
    code = "already_voided"
    title = "Pending entry already voided"


class AlreadyExpired(AlreadyResolved):
    code = "already_expired"
    title = "Pending entry already expired"


class PostExceedsPending(LedgerError):
    code = "post_exceeds_pending"
    status = 422
    title = "Posting more than was held"


class PartialPostUnsupported(LedgerError):
    code = "partial_post_unsupported"
    status = 422
    title = "Partial posting needs a single debit/credit pair"


class PendingExpired(LedgerError):
    code = "pending_expired"
    title = "Pending entry expired"


class DuplicateMovement(LedgerError):
    code = "duplicate_movement"
    title = "Movement already recorded"


class AppendOnly(LedgerError):
    code = "ledger_append_only"
    status = 500
    title = "Ledger rows are append-only"


_BY_SQLSTATE: dict[str, type[LedgerError]] = {
    "EL001": UnknownAccount,
    "EL002": AccountFrozen,
    "EL003": PendingNotFound,
    "EL005": PostExceedsPending,
    "EL006": PendingExpired,
    "EL007": PartialPostUnsupported,
    "EL010": AppendOnly,
}
_RESOLVED = {"post_pending": AlreadyPosted, "void_pending": AlreadyVoided, "expire_pending": AlreadyExpired}


def _details(exc: DBAPIError | asyncpg.PostgresError) -> tuple[str | None, str, str | None, dict[str, Any]]:
    if isinstance(exc, asyncpg.PostgresError):  # raised by a statement sent to the driver directly
        cause: Any = exc
        sqlstate = exc.sqlstate
    else:  # wrapped by SQLAlchemy
        cause = exc.orig.__cause__ if exc.orig is not None else None
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(cause, "sqlstate", None)
    message = getattr(cause, "message", None) or str(getattr(exc, "orig", exc))
    constraint = getattr(cause, "constraint_name", None)
    try:
        detail = json.loads(getattr(cause, "detail", None) or "{}")
    except ValueError:
        detail = {}
    return sqlstate, message, constraint, detail if isinstance(detail, dict) else {}


def translate(exc: DBAPIError | asyncpg.PostgresError) -> Exception:
    """The ledger error a database error stands for, or the original error when it is not the ledger's."""
    sqlstate, message, constraint, detail = _details(exc)
    if sqlstate == "23514" and constraint == "ledger_non_negative":
        return InsufficientFunds(message, **{k: v for k, v in detail.items() if k != "account_id"})
    if sqlstate == "23514" and constraint == "ledger_entry_balanced":
        return Unbalanced(message)
    if sqlstate == "EL004":
        return _RESOLVED.get(detail.get("resolution", ""), AlreadyResolved)(message)
    if sqlstate == "23505" and constraint == "uq_ledger_entries_pending_id":
        return AlreadyResolved("the pending entry was resolved by a concurrent request")
    if sqlstate == "23505" and constraint == "uq_ledger_entries_idempotency_ref":
        return DuplicateMovement("a movement with this idempotency reference is already in the ledger")
    if sqlstate in _BY_SQLSTATE:
        return _BY_SQLSTATE[sqlstate](message)
    if sqlstate == "23514":
        return InvalidMovement(message)
    return exc
