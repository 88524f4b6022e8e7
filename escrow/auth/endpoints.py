"""Who am I, and my tokens: list, rotate, revoke (the regulator: everyone's, and new regulator tokens)."""

from datetime import datetime
from typing import Annotated

from litestar import get, post
from litestar.params import JSONBody
from pydantic import BaseModel, ConfigDict, Field

from escrow.auth import tokens
from escrow.auth.guards import requires
from escrow.deps import DbSession, PrincipalDep
from escrow.errors import problem_responses
from escrow.kit.body import RequestModel
from escrow.kit.params import path_id

TAGS = ["access"]
ANYONE_SIGNED_IN = ("regulator", "bank", "merchant", "consumer")


class Me(BaseModel):
    """The principal the presented token belongs to."""

    principal_id: str
    role: str
    token_id: str


class TokenOut(BaseModel):
    """An API token, without its secret."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    role: str
    principal_id: str
    name: str
    hint: str = Field(description="The secret's first and last characters, to tell tokens apart.")
    created_at: datetime
    revoked_at: datetime | None


class TokenIssued(BaseModel):
    """A token and its secret, which this response shows once."""

    token: TokenOut
    secret: str = Field(description="Shown once; only its hash is stored.")


class RegulatorTokenCreate(RequestModel):
    """A new regulator token."""

    name: str = Field(min_length=1, max_length=200)


@get("/v1/me", guards=[requires(*ANYONE_SIGNED_IN)], tags=TAGS, summary="The caller", responses=problem_responses(401))
async def me(principal: PrincipalDep) -> Me:
    """Returns the principal of the presented token: its id, role and token id."""
    return Me(principal_id=principal.id, role=principal.role, token_id=principal.token_id)


@get(
    "/v1/tokens",
    guards=[requires(*ANYONE_SIGNED_IN, own=("bank", "merchant", "consumer"))],
    tags=TAGS,
    summary="Tokens (own; the regulator sees all)",
    responses=problem_responses(401),
)
async def list_tokens(db_session: DbSession, principal: PrincipalDep) -> list[TokenOut]:
    """Lists API tokens, revoked ones included: a bank, merchant or consumer sees its own, the regulator everyone's."""
    return [TokenOut.model_validate(t) for t in await tokens.list_tokens(db_session, principal)]


@post(
    "/v1/tokens",
    guards=[requires("regulator")],
    opt={"secret_response": True},  # shown once: a replay is refused rather than answered from storage
    tags=TAGS,
    summary="Issue another regulator token",
    responses=problem_responses(401, 403, 422),
)
async def create_regulator_token(data: JSONBody[RegulatorTokenCreate], db_session: DbSession) -> TokenIssued:
    """Issues another regulator token; its secret is in this response only, and a replay of the request is refused with
    409 `secret_already_issued` rather than showing it again.
    """
    token, secret = await tokens.issue_token(db_session, "regulator", data.name)
    return TokenIssued(token=TokenOut.model_validate(token), secret=secret)


@post(
    "/v1/tokens/{token_id:str}/rotate",
    # everyone rotates only its own tokens: a new secret is shown to nobody but the party it belongs to
    guards=[requires(*ANYONE_SIGNED_IN, own=ANYONE_SIGNED_IN)],
    opt={"secret_response": True},  # shown once: a replay is refused rather than answered from storage
    tags=TAGS,
    summary="Replace an own token's secret; the old one fails at once",
    responses=problem_responses(401, 404, 409),
)
async def rotate_token(
    token_id: Annotated[str, path_id("token")], db_session: DbSession, principal: PrincipalDep
) -> TokenIssued:
    """Gives the token a new secret, shown in this response only; the old secret stops working at once. A revoked token
    can't be rotated (409 `conflict`); a replay is refused with 409 `secret_already_issued`. Only the token's own
    principal may rotate it (others' tokens are answered 404, the regulator's calls included): the regulator revokes
    another party's token and issues a bank or merchant a new one with POST /v1/banks/{id}/tokens or
    POST /v1/merchants/{id}/tokens.
    """
    token, secret = await tokens.rotate(db_session, principal, token_id)
    return TokenIssued(token=TokenOut.model_validate(token), secret=secret)


@post(
    "/v1/tokens/{token_id:str}/revoke",
    guards=[requires(*ANYONE_SIGNED_IN, own=("bank", "merchant", "consumer"))],
    tags=TAGS,
    status_code=200,
    summary="Revoke a token (at once)",
    responses=problem_responses(401, 404),
)
async def revoke_token(
    token_id: Annotated[str, path_id("token")], db_session: DbSession, principal: PrincipalDep
) -> TokenOut:
    """Revokes a token at once: requests with its secret are refused with 401 from now on. Revoking an already revoked
    token changes nothing.
    """
    return TokenOut.model_validate(await tokens.revoke(db_session, principal, token_id))


class PartyTokenCreate(RequestModel):
    """A new token for a bank or merchant, for instance after the regulator revoked a leaked one."""

    name: str = Field(min_length=1, max_length=200, description="What the token is for, e.g. 'reissued after leak'.")


async def _issue_party_token(db_session: DbSession, role: str, principal_id: str, name: str) -> TokenIssued:
    token, secret = await tokens.issue_party_token(db_session, role, principal_id, name)
    return TokenIssued(token=TokenOut.model_validate(token), secret=secret)


@post(
    "/v1/merchants/{merchant_id:str}/tokens",
    guards=[requires("regulator")],
    opt={"secret_response": True},  # shown once: a replay is refused rather than answered from storage
    tags=TAGS,
    summary="Issue a merchant a new token (audited)",
    responses=problem_responses(401, 403, 404, 422),
)
async def issue_merchant_token(
    merchant_id: Annotated[str, path_id("merchant")], data: JSONBody[PartyTokenCreate], db_session: DbSession
) -> TokenIssued:
    """Issues the merchant a new token, for instance after its old one was revoked; the secret is in this response
    only (a replay is refused with 409 `secret_already_issued`) and the call is audited with the acting token. This is
    the one way the regulator gives a merchant a secret: it may not rotate a merchant's token (404).
    """
    return await _issue_party_token(db_session, "merchant", merchant_id, data.name)


@post(
    "/v1/banks/{bank_id:str}/tokens",
    guards=[requires("regulator")],
    opt={"secret_response": True},  # shown once: a replay is refused rather than answered from storage
    tags=TAGS,
    summary="Issue a bank a new token (audited)",
    responses=problem_responses(401, 403, 404, 422),
)
async def issue_bank_token(
    bank_id: Annotated[str, path_id("bank")], data: JSONBody[PartyTokenCreate], db_session: DbSession
) -> TokenIssued:
    """Issues the bank a new token (its request-signing secret is unchanged), for instance after its old one was
    revoked; the secret is in this response only (a replay is refused with 409 `secret_already_issued`) and the call
    is audited with the acting token. This is the one way the regulator gives a bank a secret: it may not rotate a
    bank's token (404).
    """
    return await _issue_party_token(db_session, "bank", bank_id, data.name)
