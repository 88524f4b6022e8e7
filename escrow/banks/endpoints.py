from typing import Annotated

from litestar import get, post
from litestar.params import JSONBody

from escrow.auth.guards import requires
from escrow.banks import service
from escrow.banks.schemas import BankCreate, BankCreated, BankOut
from escrow.deps import DbSession, KeyringDep, PrincipalDep
from escrow.errors import problem_responses
from escrow.kit.params import path_id

TAGS = ["banks"]


@post(
    "/v1/banks",
    guards=[requires("regulator")],
    opt={"secret_response": True},  # shown once: a replay is refused rather than answered from storage
    tags=TAGS,
    summary="Admit a custodian bank",
    responses=problem_responses(401, 403, 409, 422),
)
async def create_bank(data: JSONBody[BankCreate], db_session: DbSession, keyring: KeyringDep) -> BankCreated:
    """Admits a custodian bank and issues its API token and request-signing secret, both shown in this response only (a
    replay is refused with 409 `secret_already_issued`). A bank code already taken is refused with 409 `conflict`.
    """
    bank, token, signing_secret = await service.create(db_session, keyring, data)
    return BankCreated(bank=BankOut.model_validate(bank), token=token, signing_secret=signing_secret)


@get(
    "/v1/banks", guards=[requires("regulator")], tags=TAGS, summary="List banks", responses=problem_responses(401, 403)
)
async def list_banks(db_session: DbSession) -> list[BankOut]:
    """Lists every custodian bank, oldest first."""
    return [BankOut.model_validate(b) for b in await service.list_all(db_session)]


@get(
    "/v1/banks/{bank_id:str}",
    guards=[requires("regulator", "bank", own=("bank",))],
    tags=TAGS,
    summary="A bank",
    responses=problem_responses(401, 403, 404),
)
async def get_bank(bank_id: Annotated[str, path_id("bank")], db_session: DbSession, principal: PrincipalDep) -> BankOut:
    """Returns one custodian bank; a bank sees only itself."""
    return BankOut.model_validate(await service.get(db_session, principal, bank_id))
