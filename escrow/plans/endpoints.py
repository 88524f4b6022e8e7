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
    return PlanOut.of(await service.create(db_session, settings, principal, data))


@get(
    "/v1/plans",
    guards=[requires("regulator", "merchant", own=("merchant",))],
    tags=TAGS,
    summary="Plans the caller may see",
    responses=problem_responses(401, 403),
)
async def list_plans(db_session: DbSession, principal: PrincipalDep) -> list[PlanOut]:
    return [PlanOut.of(p) for p in await service.list_visible(db_session, principal)]


@get(
    "/v1/plans/{plan_id:str}",
    guards=[requires("regulator", "merchant", own=("merchant",))],
    tags=TAGS,
    summary="A plan",
    responses=problem_responses(401, 403, 404),
)
async def get_plan(plan_id: Annotated[str, path_id("plan")], db_session: DbSession, principal: PrincipalDep) -> PlanOut:
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
    return PlanOut.of(await service.retire(db_session, principal, plan_id))
