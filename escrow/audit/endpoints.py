"""The regulator's view of the audit trail: filter by who, what, which object, outcome and time."""

from datetime import datetime
from typing import Annotated, Any, Literal

from litestar import get
from litestar.params import FromQuery, QueryParameter
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from escrow.auth.guards import requires
from escrow.deps import DbSession
from escrow.errors import problem_responses
from escrow.kit.pagination import Page, decode_cursor, int8, page_of
from escrow.kit.params import Cursor, Instant, Limit, query_id
from escrow.models import AuditRecord


class AuditOut(BaseModel):
    """One record of the audit trail: who called which operation on which object, and how it ended."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    principal_id: str | None
    role: str | None
    token_id: str | None = Field(description="The token that acted (none for anonymous requests).")
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
    principal_id: Annotated[str | None, query_id("principal")] = None,
    token_id: Annotated[str | None, query_id("token")] = None,
    action: Annotated[
        str | None,
        QueryParameter(
            description="Exact action, e.g. 'POST /v1/merchants'", pattern=r"^[A-Z]+ /[!-~]*$", max_length=200
        ),
    ] = None,
    object_id: Annotated[
        str | None,
        QueryParameter(description="The object's id, as the record holds it", pattern=r"^[!-~]+$", max_length=80),
    ] = None,
    outcome: FromQuery[Literal["done", "refused", "failed", "replayed"] | None] = None,
    since: FromQuery[Instant | None] = None,
    until: FromQuery[Instant | None] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> Page[AuditOut]:
    """Lists the audit trail, newest first, one record per state-changing request and per refusal. Filter by principal,
    token, exact action (`METHOD /path`), object id, outcome and a time range (`since` inclusive, `until` exclusive);
    cursor-paginated.
    """
    query = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit + 1)
    for column, value in (
        (AuditRecord.principal_id, principal_id),
        (AuditRecord.token_id, token_id),
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
    before = decode_cursor(cursor, int8)
    if before is not None:
        query = query.where(AuditRecord.id < before)
    rows = list(await db_session.scalars(query))
    return page_of(rows, limit, AuditOut.model_validate, lambda r: r.id)
