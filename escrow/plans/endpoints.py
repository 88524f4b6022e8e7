from typing import Annotated

from litestar import get, post
from litestar.params import JSONBody

from escrow.auth.guards import requires
from escrow.deps import DbSession, PrincipalDep, SettingsDep
from escrow.errors import problem_responses
from escrow.kit.params import path_id
from escrow.plans import service
from escrow.plans.schemas import PlanCreate, PlanOut

TAGS = ["plans"]


@post(
    "/v1/plans",
    guards=[requires("merchant")],
    tags=TAGS,
    summary="Define a plan to sell (caps of the merchant's category are checked)",
    responses=problem_responses(401, 403, 409, 422),
)
async def create_plan(
    data: JSONBody[PlanCreate], db_session: DbSession, principal: PrincipalDep, settings: SettingsDep
) -> PlanOut:
    """Defines a plan of the merchant's. Refused with 422 when fields don't fit the kind, and with 422
    `plan_rule_broken` when it breaks the caps of the merchant's category (price, sessions, days) or its terms hold a
    void clause (no refunds, forfeiture, final interpretation); with 409 `conflict` unless the merchant is active.
    """
    return PlanOut.of(await service.create(db_session, settings, principal, data))


@get(
    "/v1/plans",
    guards=[requires("regulator", "merchant", own=("merchant",))],
    tags=TAGS,
    summary="Plans the caller may see",
    responses=problem_responses(401, 403),
)
async def list_plans(db_session: DbSession, principal: PrincipalDep) -> list[PlanOut]:
    """Lists plans, oldest first, retired ones included: a merchant sees its own, the regulator all."""
    return [PlanOut.of(p) for p in await service.list_visible(db_session, principal)]


@get(
    "/v1/plans/{plan_id:str}",
    guards=[requires("regulator", "merchant", own=("merchant",))],
    tags=TAGS,
    summary="A plan",
    responses=problem_responses(401, 403, 404),
)
async def get_plan(plan_id: Annotated[str, path_id("plan")], db_session: DbSession, principal: PrincipalDep) -> PlanOut:
    """Returns one plan."""
    return PlanOut.of(await service.get(db_session, principal, plan_id))


@post(
    "/v1/plans/{plan_id:str}/retire",
    guards=[requires("merchant", own=("merchant",))],
    tags=TAGS,
    status_code=200,
    summary="Stop selling a plan (cards sold keep their terms)",
    responses=problem_responses(401, 403, 404),
)
async def retire_plan(
    plan_id: Annotated[str, path_id("plan")], db_session: DbSession, principal: PrincipalDep
) -> PlanOut:
    """Stops selling the plan (`active` becomes false); cards already sold keep its terms."""
    return PlanOut.of(await service.retire(db_session, principal, plan_id))
