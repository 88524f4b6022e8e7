"""The regulator's view of the audit trail: filter by who, what, which object, outcome and time."""

import re
from datetime import datetime
from typing import Annotated, Any

from litestar import get
from litestar.params import FromQuery, QueryParameter
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from escrow.auth.guards import requires
from escrow.deps import DbSession
from escrow.errors import FieldInvalid, problem_responses
from escrow.kit.pagination import Page, check_limit, decode_cursor, page_of
from escrow.models import AuditRecord


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    principal_id: str | None
    role: str | None
    action: str
    object_id: str | None
    request_id: str | None
    status: int
    outcome: str
    detail: dict[str, Any] | None


@get(
    "/v1/audit",
    guards=[requires("regulator")],
    tags=["audit"],
    summary="The audit trail, newest first",
    responses=problem_responses(401, 403, 422),
)
async def list_audit(
    db_session: DbSession,
    principal_id: FromQuery[str | None] = None,
    action: Annotated[str | None, QueryParameter(description="Exact action, e.g. 'POST /v1/merchants'")] = None,
    object_id: FromQuery[str | None] = None,
    outcome: FromQuery[str | None] = None,
    since: FromQuery[datetime | None] = None,
    until: FromQuery[datetime | None] = None,
    cursor: FromQuery[str | None] = None,
    limit: FromQuery[int] = 50,
) -> Page[AuditOut]:
    query = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(check_limit(limit) + 1)
    for column, value in (
        (AuditRecord.principal_id, principal_id),
        (AuditRecord.action, action),
        (AuditRecord.object_id, object_id),
        (AuditRecord.outcome, outcome),
    ):
        if value is not None:
            query = query.where(column == value)
    if since is not None:
        query = query.where(AuditRecord.at >= since)
    if until is not None:
        query = query.where(AuditRecord.at < until)
    before = decode_cursor(cursor)
    if before is not None:
        if not re.fullmatch(r"[0-9]{1,18}", before):
            raise FieldInvalid("cursor", "is not a cursor this service issued")
        query = query.where(AuditRecord.id < int(before))
    rows = list(await db_session.scalars(query))
    return page_of(rows, limit, AuditOut.model_validate, lambda r: r.id)
