from typing import Annotated, Literal

from litestar import get, post
from litestar.params import FromQuery, JSONBody, QueryParameter

from escrow.auth.guards import requires
from escrow.deps import DbSession, PrincipalDep, SettingsDep
from escrow.errors import problem_responses
from escrow.kit.clock import utcnow
from escrow.kit.params import Limit, path_id, query_id
from escrow.risk import service
from escrow.risk.schemas import WarningAction, WarningKind, WarningOut, WarningRun, WarningState, WarningSummaryRow

TAGS = ["warnings"]
ONE = "/v1/warnings/{warning_id:str}"
Category = Literal["gym", "salon", "training", "other"]  # MERCHANT_CATEGORIES


@post(
    "/v1/warnings/runs",
    guards=[requires("regulator")],
    tags=TAGS,
    status_code=200,
    summary="Compute the signals now and raise or update warnings",
    responses=problem_responses(401, 403),
)
async def run_warnings(db_session: DbSession, settings: SettingsDep) -> WarningRun:
    """Computes every signal over all merchants now (as the daily job does) and opens a warning for each merchant
    and signal crossing its threshold, or updates the live one; answers how many of each kind were opened and
    updated.
    """
    outcome = await service.run_signals(db_session, settings, utcnow())
    return WarningRun(opened=outcome.opened, updated=outcome.updated)


@get(
    "/v1/warnings",
    guards=[requires("regulator", "merchant", own=("merchant",))],
    tags=TAGS,
    summary="Early warnings, newest first",
    responses=problem_responses(401, 403, 422),
)
async def list_warnings(
    db_session: DbSession,
    principal: PrincipalDep,
    kind: FromQuery[WarningKind | None] = None,
    warning_state: Annotated[WarningState | None, QueryParameter(name="state")] = None,
    region: Annotated[str | None, QueryParameter(pattern=r"^[0-9]{6}$", description="County-level division.")] = None,
    category: FromQuery[Category | None] = None,
    merchant_id: Annotated[str | None, query_id("merchant")] = None,
    limit: Limit = 100,
) -> list[WarningOut]:
    """Lists warnings newest first, filtered by signal kind, state, the merchant's region and category, or merchant;
    up to `limit`. A merchant sees only its own.
    """
    rows = await service.list_visible(
        db_session,
        principal,
        kind=kind,
        state=warning_state,
        region=region,
        category=category,
        merchant_id=merchant_id,
        limit=limit,
    )
    return [WarningOut.model_validate(w) for w in rows]


@get(
    "/v1/warnings/summary",
    guards=[requires("regulator")],
    tags=TAGS,
    summary="Live warnings per merchant category, region, kind and level",
    responses=problem_responses(401, 403),
)
async def warnings_summary(db_session: DbSession) -> list[WarningSummaryRow]:
    """Counts the live warnings (open, acknowledged or escalated) per merchant category, region, signal kind and
    level, for reading the signals by district and sector.
    """
    return [
        WarningSummaryRow(category=c, region=r, kind=k, level=lv, warnings=n)  # type: ignore[arg-type]
        for c, r, k, lv, n in await service.summary(db_session)
    ]


@get(
    ONE,
    guards=[requires("regulator", "merchant", own=("merchant",))],
    tags=TAGS,
    summary="A warning",
    responses=problem_responses(401, 403, 404),
)
async def get_warning(
    warning_id: Annotated[str, path_id("warning")], db_session: DbSession, principal: PrincipalDep
) -> WarningOut:
    """Returns one warning with its figures and handling; a merchant sees only its own."""
    return WarningOut.model_validate(await service.get(db_session, principal, warning_id))


async def _step(db_session: DbSession, principal: PrincipalDep, warning_id: str, action: str, note: str) -> WarningOut:
    return WarningOut.model_validate(
        await service.transition(db_session, principal, warning_id, action, note, utcnow())
    )


@post(
    ONE + "/acknowledge",
    guards=[requires("regulator")],
    tags=TAGS,
    status_code=200,
    summary="Acknowledge a warning",
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def acknowledge_warning(
    warning_id: Annotated[str, path_id("warning")],
    data: JSONBody[WarningAction],
    db_session: DbSession,
    principal: PrincipalDep,
) -> WarningOut:
    """Marks an open warning acknowledged, with the regulator's note; any other state is refused with 409
    `invalid_transition`. A later run that finds the condition still updates it.
    """
    return await _step(db_session, principal, warning_id, "acknowledge", data.note)


@post(
    ONE + "/resolve",
    guards=[requires("regulator")],
    tags=TAGS,
    status_code=200,
    summary="Resolve a warning",
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def resolve_warning(
    warning_id: Annotated[str, path_id("warning")],
    data: JSONBody[WarningAction],
    db_session: DbSession,
    principal: PrincipalDep,
) -> WarningOut:
    """Closes an open, acknowledged or escalated warning as resolved, with the regulator's note; a resolved one is
    refused with 409 `invalid_transition`. If a later run finds the condition again, a new warning opens.
    """
    return await _step(db_session, principal, warning_id, "resolve", data.note)


@post(
    ONE + "/escalate",
    guards=[requires("regulator")],
    tags=TAGS,
    status_code=200,
    summary="Escalate a warning",
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def escalate_warning(
    warning_id: Annotated[str, path_id("warning")],
    data: JSONBody[WarningAction],
    db_session: DbSession,
    principal: PrincipalDep,
) -> WarningOut:
    """Escalates an open or acknowledged warning (to inspection or enforcement), with the regulator's note; other
    states are refused with 409 `invalid_transition`.
    """
    return await _step(db_session, principal, warning_id, "escalate", data.note)
