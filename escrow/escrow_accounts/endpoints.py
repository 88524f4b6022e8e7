from typing import Annotated

from litestar import get, post
from litestar.params import JSONBody

from escrow.auth.guards import requires
from escrow.deps import DbSession, KeyringDep, PrincipalDep
from escrow.errors import problem_responses
from escrow.escrow_accounts import service
from escrow.escrow_accounts.schemas import EscrowAccountActivate, EscrowAccountCreate, EscrowAccountOut, Reason
from escrow.kit.params import path_id

TAGS = ["escrow accounts"]
ACCOUNT = "/v1/escrow-accounts/{escrow_account_id:str}"


@post(
    "/v1/escrow-accounts",
    guards=[requires("merchant")],
    tags=TAGS,
    summary="Apply for an escrow account at a bank",
    responses=problem_responses(401, 403, 409, 422),
)
async def apply_for_escrow_account(
    data: JSONBody[EscrowAccountCreate], db_session: DbSession, principal: PrincipalDep
) -> EscrowAccountOut:
    """Applies for an escrow account at a custodian bank; it starts `pending` until the bank activates or rejects it.
    Refused with 409 `invalid_state` unless the merchant is active, with 409 `conflict` when it already has an open
    account at that bank, and with 422 for an unknown bank.
    """
    return EscrowAccountOut.model_validate(await service.apply(db_session, principal, data.bank_id))


@get(
    "/v1/escrow-accounts",
    guards=[requires("regulator", "merchant", "bank", own=("merchant", "bank"))],
    tags=TAGS,
    summary="Escrow accounts the caller may see",
    responses=problem_responses(401, 403),
)
async def list_escrow_accounts(db_session: DbSession, principal: PrincipalDep) -> list[EscrowAccountOut]:
    """Lists escrow accounts, oldest first: a merchant sees its own, a bank those it holds, the regulator all."""
    return [EscrowAccountOut.model_validate(a) for a in await service.list_visible(db_session, principal)]


@get(
    ACCOUNT,
    guards=[requires("regulator", "merchant", "bank", own=("merchant", "bank"))],
    tags=TAGS,
    summary="An escrow account",
    responses=problem_responses(401, 403, 404),
)
async def get_escrow_account(
    escrow_account_id: Annotated[str, path_id("escrow account")], db_session: DbSession, principal: PrincipalDep
) -> EscrowAccountOut:
    """Returns one escrow account."""
    return EscrowAccountOut.model_validate(await service.get(db_session, principal, escrow_account_id))


@post(
    ACCOUNT + "/activate",
    guards=[requires("bank", own=("bank",))],
    tags=TAGS,
    status_code=200,
    summary="Activate with the bank's account number (signed bank call)",
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def activate_escrow_account(
    escrow_account_id: Annotated[str, path_id("escrow account")],
    data: JSONBody[EscrowAccountActivate],
    db_session: DbSession,
    principal: PrincipalDep,
    keyring: KeyringDep,
) -> EscrowAccountOut:
    """The bank activates a `pending` account with its account number at the bank (stored encrypted, shown masked); the
    account becomes `active` and its ledger book opens, so cards can be sold into it. Any other state is refused with
    409 `invalid_state`.
    """
    account = await service.activate(db_session, keyring, principal, escrow_account_id, data.bank_account_number)
    return EscrowAccountOut.model_validate(account)


@post(
    ACCOUNT + "/reject",
    guards=[requires("bank", own=("bank",))],
    tags=TAGS,
    status_code=200,
    summary="Reject the application (signed bank call)",
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def reject_escrow_account(
    escrow_account_id: Annotated[str, path_id("escrow account")],
    data: JSONBody[Reason],
    db_session: DbSession,
    principal: PrincipalDep,
) -> EscrowAccountOut:
    """The bank turns down a `pending` application with a reason; the account becomes `rejected`. Any other state is
    refused with 409 `invalid_state`.
    """
    return EscrowAccountOut.model_validate(await service.reject(db_session, principal, escrow_account_id, data.reason))


@post(
    ACCOUNT + "/freeze",
    guards=[requires("regulator")],
    tags=TAGS,
    status_code=200,
    summary="Freeze: no movement at all until unfrozen",
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def freeze_escrow_account(
    escrow_account_id: Annotated[str, path_id("escrow account")],
    data: JSONBody[Reason],
    db_session: DbSession,
    principal: PrincipalDep,
) -> EscrowAccountOut:
    """Freezes an `active` account with a reason: no money moves in or out of it until it is unfrozen. Any other state
    is refused with 409 `invalid_state`.
    """
    return EscrowAccountOut.model_validate(await service.freeze(db_session, principal, escrow_account_id, data.reason))


@post(
    ACCOUNT + "/unfreeze",
    guards=[requires("regulator")],
    tags=TAGS,
    status_code=200,
    summary="Unfreeze",
    responses=problem_responses(401, 403, 404, 409),
)
async def unfreeze_escrow_account(
    escrow_account_id: Annotated[str, path_id("escrow account")], db_session: DbSession, principal: PrincipalDep
) -> EscrowAccountOut:
    """Returns a `frozen` account to `active` so money may move again. Refused with 409 `invalid_state` when it isn't
    frozen or when a closure froze it.
    """
    return EscrowAccountOut.model_validate(await service.unfreeze(db_session, principal, escrow_account_id))
