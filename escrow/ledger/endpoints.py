"""HTTP face of the ledger: the regulator's integrity check."""

from litestar import Request, get

from escrow.auth.guards import requires
from escrow.errors import problem_responses
from escrow.ledger.integrity import VerifyReport, verify_database


@get(
    "/v1/ledger/verify",
    guards=[requires("regulator")],
    tags=["ledger"],
    summary="Recompute the journal's hash chains and invariants",
    description=(
        "Recomputes every seal of the per-escrow-account SHA-256 chains and the ledger invariants of domain.md §8 "
        "on one consistent snapshot, and reports the first failure of each check. Entries newer than the last "
        "seal are counted as unsealed (the service seals every ESCROW_SEAL_INTERVAL_SECONDS)."
    ),
    responses=problem_responses(401, 403),
)
async def verify_ledger(request: Request) -> VerifyReport:
    return await verify_database(request.app.state.engine)
