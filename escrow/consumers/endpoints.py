from typing import Annotated

from litestar import Request, Response, get, post
from litestar.params import JSONBody

from escrow.auth.guards import requires
from escrow.consumers import service
from escrow.consumers.schemas import (
    ConsumerOut,
    ConsumerRegister,
    ConsumerTokenIssued,
    ConsumerTokenRequest,
    SignInCode,
)
from escrow.deps import DbSession, KeyringDep, PrincipalDep, SettingsDep
from escrow.errors import problem_responses
from escrow.kit.params import path_id

TAGS = ["consumers"]


@post(
    "/v1/consumers",
    guards=[requires("merchant", "regulator")],
    tags=TAGS,
    summary="Find or register a consumer by phone (at the point of sale)",
    description="201 when the consumer is new, 200 when found. The phone number is kept only as a keyed hash.",
    responses=problem_responses(401, 403, 422),
)
async def register_consumer(
    data: JSONBody[ConsumerRegister], db_session: DbSession, keyring: KeyringDep, principal: PrincipalDep
) -> Response[ConsumerOut]:
    consumer, created = await service.register(db_session, keyring, principal, data.phone)
    return Response(ConsumerOut.model_validate(consumer), status_code=201 if created else 200)


@get(
    "/v1/consumers/{consumer_id:str}",
    guards=[requires("regulator", "merchant", "consumer", own=("merchant", "consumer"))],
    tags=TAGS,
    summary="A consumer",
    responses=problem_responses(401, 403, 404),
)
async def get_consumer(
    consumer_id: Annotated[str, path_id("consumer")], db_session: DbSession, principal: PrincipalDep
) -> ConsumerOut:
    """Returns one consumer: a consumer sees itself, a merchant the consumers it registered."""
    return ConsumerOut.model_validate(await service.get(db_session, principal, consumer_id))


@post(
    "/v1/consumers/{consumer_id:str}/codes",
    guards=[requires("merchant", "regulator", own=("merchant",))],
    opt={"secret_response": True},  # shown once: a replay is refused rather than answered from storage
    tags=TAGS,
    summary="Issue a one-time sign-in code (a deployment sends it by SMS)",
    responses=problem_responses(401, 403, 404),
)
async def issue_sign_in_code(
    consumer_id: Annotated[str, path_id("consumer")],
    db_session: DbSession,
    settings: SettingsDep,
    keyring: KeyringDep,
    principal: PrincipalDep,
) -> SignInCode:
    """Issues a one-time six-digit sign-in code for the consumer, valid for ESCROW_CONSUMER_CODE_TTL_SECONDS, replacing
    any code still open. The code is in this response only; a replay is refused with 409 `secret_already_issued`.
    """
    code, expires_at = await service.issue_code(db_session, settings, keyring, principal, consumer_id)
    return SignInCode(code=code, expires_at=expires_at)


@post(
    "/v1/consumer-tokens",
    tags=TAGS,
    # the one-time code makes it single-use already; no response (which holds a token) is stored for replay
    opt={"idempotent": False, "auth_attempt": True},
    summary="Exchange phone and one-time code for a consumer token",
    responses=problem_responses(401, 422, 429),
)
async def sign_in_consumer(
    data: JSONBody[ConsumerTokenRequest],
    request: Request,
    db_session: DbSession,
    settings: SettingsDep,
    keyring: KeyringDep,
) -> ConsumerTokenIssued:
    """Exchanges the consumer's phone number and one-time code for a consumer token. A wrong, used or expired code is
    refused with 401 `invalid_code`, and every try spends one of the code's ESCROW_CONSUMER_CODE_ATTEMPTS; the
    request is not idempotent (the code is single-use).
    """
    consumer, token = await service.sign_in(
        db_session, request.app.state.sessionmaker, settings, keyring, data.phone, data.code
    )
    return ConsumerTokenIssued(consumer=ConsumerOut.model_validate(consumer), token=token)
