from typing import Annotated

from litestar import Request, get, post
from litestar.params import JSONBody

from escrow.audit import AUDIT_DETAIL
from escrow.auth.guards import requires
from escrow.deps import DbSession, KeyringDep, PrincipalDep
from escrow.errors import problem_responses
from escrow.kit.params import path_id
from escrow.merchants import service
from escrow.merchants.schemas import (
    CustodyModelChange,
    MerchantCreate,
    MerchantCreated,
    MerchantOut,
    MerchantStatusChange,
)

TAGS = ["merchants"]


@post(
    "/v1/merchants",
    guards=[requires("regulator")],
    opt={"secret_response": True},  # shown once: a replay is refused rather than answered from storage
    tags=TAGS,
    summary="Onboard a merchant",
    responses=problem_responses(401, 403, 409, 422),
)
async def create_merchant(
    data: JSONBody[MerchantCreate], db_session: DbSession, keyring: KeyringDep
) -> MerchantCreated:
    merchant, token = await service.create(db_session, keyring, data)
    return MerchantCreated(merchant=MerchantOut.model_validate(merchant), token=token)


@get(
    "/v1/merchants",
    guards=[requires("regulator")],
    tags=TAGS,
    summary="List merchants",
    responses=problem_responses(401, 403),
)
async def list_merchants(db_session: DbSession) -> list[MerchantOut]:
    return [MerchantOut.model_validate(m) for m in await service.list_all(db_session)]


@get(
    "/v1/merchants/{merchant_id:str}",
    guards=[requires("regulator", "merchant", own=("merchant",))],
    tags=TAGS,
    summary="A merchant",
    responses=problem_responses(401, 403, 404),
)
async def get_merchant(
    merchant_id: Annotated[str, path_id("merchant")], db_session: DbSession, principal: PrincipalDep
) -> MerchantOut:
    return MerchantOut.model_validate(await service.get(db_session, principal, merchant_id))


@post(
    "/v1/merchants/{merchant_id:str}/status",
    guards=[requires("regulator")],
    tags=TAGS,
    status_code=200,
    summary="Suspend or reactivate a merchant",
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def change_merchant_status(
    merchant_id: Annotated[str, path_id("merchant")],
    request: Request,
    data: JSONBody[MerchantStatusChange],
    db_session: DbSession,
    principal: PrincipalDep,
) -> MerchantOut:
    merchant = await service.change_status(db_session, principal, merchant_id, data)
    request.scope["state"][AUDIT_DETAIL] = {"status": data.status, "reason": data.reason}  # kept in the audit trail
    return MerchantOut.model_validate(merchant)


@post(
    "/v1/merchants/{merchant_id:str}/custody-model",
    guards=[requires("regulator")],
    tags=TAGS,
    status_code=200,
    summary="Move a merchant between full custody and the ratio model (cards sold keep their ratio)",
    responses=problem_responses(401, 403, 404, 422),
)
async def change_custody_model(
    merchant_id: Annotated[str, path_id("merchant")],
    data: JSONBody[CustodyModelChange],
    request: Request,
    db_session: DbSession,
    principal: PrincipalDep,
) -> MerchantOut:
    request.scope["state"][AUDIT_DETAIL] = {"model": data.model, "reason": data.reason}
    return MerchantOut.model_validate(await service.set_custody_model(db_session, principal, merchant_id, data.model))
