"""Liveness says the process answers; readiness says the database answers and its schema is at head."""

from typing import Any

from litestar import Request, Response, get
from sqlalchemy import text

from escrow.errors import problem, problem_responses
from escrow.migrate import current_revision


@get("/healthz", tags=["operations"], summary="Process is alive", sync_to_thread=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/readyz",
    tags=["operations"],
    summary="Database reachable and migrations at head",
    responses=problem_responses(503),
)
async def readyz(request: Request) -> Response[dict[str, Any]]:
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
