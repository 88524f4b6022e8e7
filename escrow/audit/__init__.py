"""Every state-changing request leaves an audit record: who, what, which object, how it ended, when.

Records of successful requests are written in the request's own transaction; records of refused or failed
requests are written after the rollback, so the trail holds attempts as well as changes. Rows are append-only.
"""

import json
from collections.abc import Sequence
from typing import Any

from litestar.types import Scope
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.auth.guards import principal_of
from escrow.models import AuditRecord

AUDIT_DETAIL = "audit_detail"  # scope state key: what a handler adds to its request's audit record


OBJECT_ID_MAX = 80  # audit_records.object_id


def _object_id(scope: Scope, body: bytes | None) -> str | None:
    params = scope.get("path_params") or {}
    if params:
        # As the caller sent it, which may be anything (a refused request's record is kept too): cut to the
        # column's size, with what PostgreSQL text can't hold replaced.
        return str(next(iter(params.values())))[:OBJECT_ID_MAX].replace("\x00", "\ufffd")
    if not body:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict):
        if isinstance(data.get("id"), str):
            return data["id"]
        for value in data.values():
            if isinstance(value, dict) and isinstance(value.get("id"), str):
                return value["id"]
    return None


def outcome_of(status: int) -> str:
    return "done" if status < 400 else "refused" if status < 500 else "failed"


_COLUMNS = ("principal_id", "role", "token_id", "action", "object_id", "request_id", "status", "outcome", "detail")


def _record(
    scope: Scope,
    status: int,
    *,
    body: bytes | None = None,
    outcome: str | None = None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    principal = principal_of(scope)
    return {
        "principal_id": principal.id if principal else None,
        "role": principal.role if principal else None,
        "token_id": principal.token_id if principal else None,
        "action": f"{scope['method']} {scope.get('path_template') or scope['path']}",
        "object_id": _object_id(scope, body),
        "request_id": scope["state"].get("request_id"),
        "status": status,
        "outcome": outcome or outcome_of(status),
        "detail": detail,
    }


def values(scope: Scope, status: int, **record: Any) -> tuple[Any, ...]:
    """A request's audit record as the parameters of :func:`insert_sql`."""
    columns = _record(scope, status, **record)
    columns["detail"] = json.dumps(columns["detail"]) if columns["detail"] is not None else None
    return tuple(columns[name] for name in _COLUMNS)


def insert_sql(first_param: int = 1) -> str:
    """INSERT of one audit record whose :func:`values` are the parameters from ``$first_param`` on."""
    params = ", ".join(f"${first_param + n}" for n in range(len(_COLUMNS)))
    return f"INSERT INTO audit_records ({', '.join(_COLUMNS)}) VALUES ({params})"


def add_record(session: AsyncSession, scope: Scope, status: int, **record: Any) -> None:
    """Add a request's audit record to the session (written at its next flush)."""
    session.add(AuditRecord(**_record(scope, status, **record)))


async def record_after_rollback(
    session: AsyncSession, scope: Scope, status: int, *, keep: Sequence[object] = (), **record: Any
) -> None:
    """Undo whatever the request did, then keep only its audit record (and the rows a refusal must keep, such
    as a deposit that could not be applied): for attempts that changed nothing else."""
    await session.rollback()
    session.add_all(keep)
    add_record(session, scope, status, **record)
    await session.commit()  # transaction boundary: a refused request's audit record, after its rollback
