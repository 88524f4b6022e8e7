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
    principal_id: str
    role: str
    token_id: str


class TokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    role: str
    principal_id: str
    name: str
    hint: str = Field(description="The secret's first and last characters, to tell tokens apart.")
    created_at: datetime
    revoked_at: datetime | None


class TokenIssued(BaseModel):
    token: TokenOut
    secret: str = Field(description="Shown once; only its hash is stored.")


class RegulatorTokenCreate(RequestModel):
    name: str = Field(min_length=1, max_length=200)


@get("/v1/me", guards=[requires(*ANYONE_SIGNED_IN)], tags=TAGS, summary="The caller", responses=problem_responses(401))
async def me(principal: PrincipalDep) -> Me:
    return Me(principal_id=principal.id, role=principal.role, token_id=principal.token_id)


@get(
    "/v1/tokens",
    guards=[requires(*ANYONE_SIGNED_IN, own=("bank", "merchant", "consumer"))],
    tags=TAGS,
    summary="Tokens (own; the regulator sees all)",
    responses=problem_responses(401),
)
async def list_tokens(db_session: DbSession, principal: PrincipalDep) -> list[TokenOut]:
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
    token, secret = await tokens.issue_token(db_session, "regulator", data.name)
    return TokenIssued(token=TokenOut.model_validate(token), secret=secret)


@post(
    "/v1/tokens/{token_id:str}/rotate",
    guards=[requires(*ANYONE_SIGNED_IN, own=("bank", "merchant", "consumer"))],
    opt={"secret_response": True},  # shown once: a replay is refused rather than answered from storage
    tags=TAGS,
    summary="Replace a token's secret; the old one fails at once",
    responses=problem_responses(401, 404, 409),
)
async def rotate_token(
    token_id: Annotated[str, path_id("token")], db_session: DbSession, principal: PrincipalDep
) -> TokenIssued:
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
    return TokenOut.model_validate(await tokens.revoke(db_session, principal, token_id))
