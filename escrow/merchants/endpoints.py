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
    RegionChange,
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
    """Onboards a merchant (status `active`, full custody) and issues its API token, shown in this response only (a
    replay is refused with 409 `secret_already_issued`). A unified social credit code already onboarded is refused
    with 409 `conflict`; an invalid one with 422.
    """
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
    """Lists every merchant, oldest first."""
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
    """Returns one merchant; a merchant sees only itself."""
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
    """Suspends an active merchant or reactivates a suspended one; any other change (e.g. of a closing or closed
    merchant) is refused with 409 `invalid_transition`. The reason is kept in the audit trail.
    """
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
    """Sets whether the merchant's new sales are in full custody or at the custody ratio of its credit rating; cards
    already sold keep the ratio fixed at their sale. The reason is kept in the audit trail.
    """
    request.scope["state"][AUDIT_DETAIL] = {"model": data.model, "reason": data.reason}
    return MerchantOut.model_validate(await service.set_custody_model(db_session, principal, merchant_id, data.model))


@post(
    "/v1/merchants/{merchant_id:str}/region",
    guards=[requires("regulator")],
    tags=TAGS,
    status_code=200,
    summary="Set the county-level division a merchant trades in",
    responses=problem_responses(401, 403, 404, 422),
)
async def change_region(
    merchant_id: Annotated[str, path_id("merchant")],
    data: JSONBody[RegionChange],
    request: Request,
    db_session: DbSession,
    principal: PrincipalDep,
) -> MerchantOut:
    """Sets the merchant's region (行政区划代码 of a county-level division in the bundled table; any other code is
    refused with 422). Warnings are read by region from then on. The reason is kept in the audit trail.
    """
    request.scope["state"][AUDIT_DETAIL] = {"region": data.region, "reason": data.reason}
    return MerchantOut.model_validate(await service.set_region(db_session, principal, merchant_id, data.region))
