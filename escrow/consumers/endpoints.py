from typing import Annotated

from litestar import Request, get, post
from litestar.params import JSONBody

from escrow.auth.guards import requires
from escrow.consumers import service
from escrow.consumers.schemas import (
    ConsumerOut,
    ConsumerRegister,
    ConsumerTokenIssued,
    ConsumerTokenRequest,
    SignInCodeRequest,
    SignInCodeSent,
)
from escrow.deps import DbSession, KeyringDep, PrincipalDep, SettingsDep
from escrow.errors import problem_responses
from escrow.kit.crypto import mask_phone
from escrow.kit.params import path_id
from escrow.unit_of_work import after_commit

TAGS = ["consumers"]


@post(
    "/v1/consumers",
    guards=[requires("merchant")],
    tags=TAGS,
    status_code=201,
    summary="Register a consumer by phone at the point of sale",
    description="Always 201, with a body that depends only on this merchant's link to the consumer: whether the phone "
    "is known elsewhere is not told. The phone number is kept only as a keyed hash and a masked form.",
    responses=problem_responses(401, 403, 422),
)
async def register_consumer(
    data: JSONBody[ConsumerRegister], db_session: DbSession, keyring: KeyringDep, principal: PrincipalDep
) -> ConsumerOut:
    return ConsumerOut.model_validate(await service.register(db_session, keyring, principal, data.phone))


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
    "/v1/consumer-codes",
    tags=TAGS,
    status_code=202,
    summary="Send a one-time sign-in code to a phone by SMS",
    responses=problem_responses(422, 429),
)
async def send_sign_in_code(
    data: JSONBody[SignInCodeRequest],
    request: Request,
    db_session: DbSession,
    settings: SettingsDep,
    keyring: KeyringDep,
) -> SignInCodeSent:
    """Sends a new six-digit sign-in code by SMS to the phone (replacing any code still open), valid for
    ESCROW_CONSUMER_CODE_TTL_SECONDS. The code is never in any response, and the answer is the same whether the phone
    is a consumer yet or not (it becomes one when it signs in). At most ESCROW_CONSUMER_CODES_PER_PHONE_PER_HOUR
    codes per phone and ESCROW_CONSUMER_CODES_PER_ADDRESS_PER_HOUR per client address: beyond, 429 `too_many_codes`
    with Retry-After. Anonymous; idempotent with its Idempotency-Key (a replay sends nothing more).
    """
    address = (request.scope.get("client") or ("unknown", 0))[0]
    await service.send_code(db_session, request.app.state.sessionmaker, settings, keyring, data.phone, address)
    after_commit(request.scope, request.app.state.sms_dispatcher.wake)  # deliver now; the jobs are the fallback
    return SignInCodeSent(sent_to=mask_phone(data.phone), expires_in_seconds=settings.consumer_code_ttl_seconds)


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
    """Exchanges the phone number and the one-time code sent to it (POST /v1/consumer-codes) for a consumer token; a
    phone that is not a consumer yet becomes one now. A wrong, used or expired code is
    refused with 401 `invalid_code`, and every try spends one of the code's ESCROW_CONSUMER_CODE_ATTEMPTS; the
    request is not idempotent (the code is single-use).
    """
    consumer, token = await service.sign_in(
        db_session, request.app.state.sessionmaker, settings, keyring, data.phone, data.code
    )
    return ConsumerTokenIssued(consumer=ConsumerOut.model_validate(consumer), token=token)
