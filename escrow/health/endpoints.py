"""Liveness says the process answers; readiness says the database answers and its schema is at head."""

from typing import Any

from litestar import Request, Response, get
from sqlalchemy import text

from escrow.errors import problem, problem_responses
from escrow.migrate import current_revision


@get("/healthz", tags=["operations"], summary="Process is alive", sync_to_thread=False)
def healthz() -> dict[str, str]:
    """Answers 200 while the process runs; it does not touch the database. Use it as a liveness probe."""
    return {"status": "ok"}


@get(
    "/readyz",
    tags=["operations"],
    summary="Database reachable and migrations at head",
    responses=problem_responses(503),
)
async def readyz(request: Request) -> Response[dict[str, Any]]:
    """Answers 200 with the schema's migration revision when the database answers and its schema is at the revision this
    code expects; otherwise 503 `not_ready` (send no traffic yet).
    """
    state = request.app.state
    try:
        async with state.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            revision = await current_revision(connection)
    except Exception as exc:
        return problem(503, "not_ready", "Not ready", f"Database unreachable: {type(exc).__name__}")
    if revision != state.head_revision:
        return problem(
            503,
            "not_ready",
            "Not ready",
            f"Database schema is at {revision or 'nothing'}, the code expects {state.head_revision}.",
        )
    return Response({"status": "ready", "migration": revision})
