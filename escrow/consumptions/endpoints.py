from typing import Annotated

from litestar import get, post
from litestar.params import FromQuery, JSONBody

from escrow.auth.guards import requires
from escrow.consumptions import service
from escrow.consumptions.schemas import (
    ConsumptionBatch,
    ConsumptionBatchOut,
    ConsumptionCreate,
    ConsumptionOut,
    Dispute,
    DisputeResolution,
)
from escrow.deps import DbSession, KeyringDep, PrincipalDep, SettingsDep
from escrow.errors import problem_responses
from escrow.kit.params import Limit, path_id, query_id
from escrow.models.card import ConfirmationChannel, ConsumptionStatus

TAGS = ["services rendered"]
ONE = "/v1/consumptions/{consumption_id:str}"


@post(
    "/v1/cards/{card_id:str}/consumptions",
    guards=[requires("merchant", own=("merchant",))],
    tags=TAGS,
    summary="Record a service rendered (held on the card until confirmed)",
    responses=problem_responses(401, 403, 404, 409, 422, 423),
)
async def record_consumption(
    card_id: Annotated[str, path_id("card")],
    data: JSONBody[ConsumptionCreate],
    db_session: DbSession,
    principal: PrincipalDep,
    settings: SettingsDep,
    keyring: KeyringDep,
) -> ConsumptionOut:
    """Records a service rendered on an active sessions or stored-value card: its value is held on the card (a pending
    ledger movement) until the consumer confirms it or the confirmation window passes. With the consumer's
    `presence_code` (shown at the counter) it is confirmed at once: its value is released to the merchant in the same
    transaction and `resolved_by` is `presence`. Refused with 409 `card_not_active` (card not active, expired, or its
    escrow account not active), `refund_in_progress`, `exceeds_remaining` (more than is left) or `invalid_state`
    (period memberships release day by day on their own), and with 422 when the field doesn't fit the card's kind or
    the presence code is wrong, expired (rule `presence_code`) or already used (rule `presence_code_used`).
    """
    return ConsumptionOut.of(await service.record(db_session, settings, keyring, principal, card_id, data))


@post(
    "/v1/consumptions",
    guards=[requires("merchant", own=("merchant",))],
    tags=TAGS,
    summary="Record services rendered to many cards at once (a class, a lesson): all are held, or none",
    description="Each service is checked as a single one would be, its `presence_code` too (a service with its "
    "consumer's code is confirmed at once); a refusal names the item at fault (`services[i]…`) and records nothing.",
    responses=problem_responses(401, 403, 404, 409, 422, 423),
)
async def record_consumptions(
    data: JSONBody[ConsumptionBatch],
    db_session: DbSession,
    principal: PrincipalDep,
    settings: SettingsDep,
    keyring: KeyringDep,
) -> ConsumptionBatchOut:
    services = [
        service.Service(s.card_id, s.sessions, s.face_value.amount if s.face_value else None, s.presence_code)
        for s in data.services
    ]
    recorded = await service.record_many(db_session, settings, keyring, principal, services, data.note)
    return ConsumptionBatchOut(consumptions=[ConsumptionOut.of(c) for c in recorded])


@get(
    "/v1/consumptions",
    guards=[requires("regulator", "merchant", "consumer", own=("merchant", "consumer"))],
    tags=TAGS,
    summary="Service records (filter by status, e.g. disputed, by card, or by how they were confirmed)",
    responses=problem_responses(401, 403, 422),
)
async def list_consumptions(
    db_session: DbSession,
    principal: PrincipalDep,
    status: FromQuery[ConsumptionStatus | None] = None,
    card_id: Annotated[str | None, query_id("card")] = None,
    confirmed_via: FromQuery[ConfirmationChannel | None] = None,
    limit: Limit = 100,
) -> list[ConsumptionOut]:
    """Lists service records in id order, filtered by status (e.g. `disputed`), card and `confirmed_via` (confirmed
    services only: by the `consumer`, by `presence` code at the counter, `auto` when the window passed, on
    `schedule` for a membership's days, or by a dispute's `resolution`), up to `limit`: a merchant sees those on its
    cards, a consumer those on its own.
    """
    rows = await service.list_visible(
        db_session, principal, status=status, card_id=card_id, confirmed_via=confirmed_via, limit=limit
    )
    return [ConsumptionOut.of(c) for c in rows]


@get(
    ONE,
    guards=[requires("regulator", "merchant", "consumer", "bank", own=("merchant", "consumer", "bank"))],
    tags=TAGS,
    summary="A service record",
    responses=problem_responses(401, 403, 404),
)
async def get_consumption(
    consumption_id: Annotated[str, path_id("consumption")], db_session: DbSession, principal: PrincipalDep
) -> ConsumptionOut:
    """Returns one service record."""
    return ConsumptionOut.of(await service.get(db_session, principal, consumption_id))


@post(
    ONE + "/confirm",
    guards=[requires("consumer", own=("consumer",))],
    tags=TAGS,
    status_code=200,
    summary="The consumer confirms the service: its value is released to the merchant",
    responses=problem_responses(401, 403, 404, 409, 423),
)
async def confirm_consumption(
    consumption_id: Annotated[str, path_id("consumption")], db_session: DbSession, principal: PrincipalDep
) -> ConsumptionOut:
    """The consumer confirms a service awaiting confirmation: its hold posts and its value is released from the card to
    the merchant's payable (custodied and unprotected parts alike). Confirming a confirmed service again changes
    nothing; any other state is refused with 409 `invalid_state`.
    """
    return ConsumptionOut.of(await service.confirm(db_session, principal, consumption_id))


@post(
    ONE + "/dispute",
    guards=[requires("consumer", own=("consumer",))],
    tags=TAGS,
    status_code=200,
    summary="The consumer disputes the service: its value stays held until resolved",
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def dispute_consumption(
    consumption_id: Annotated[str, path_id("consumption")],
    data: JSONBody[Dispute],
    db_session: DbSession,
    principal: PrincipalDep,
) -> ConsumptionOut:
    """The consumer disputes a service awaiting confirmation, with a reason: its value stays held on the card until the
    merchant or the regulator resolves it. Refused with 409 `invalid_state` once the service is no longer awaiting
    confirmation or its confirmation window has passed.
    """
    return ConsumptionOut.of(await service.dispute(db_session, principal, consumption_id, data.reason))


@post(
    ONE + "/resolve",
    guards=[requires("regulator", "merchant", own=("merchant",))],
    tags=TAGS,
    status_code=200,
    summary="Resolve a dispute: confirm (release) or void (the value returns to the card)",
    responses=problem_responses(401, 403, 404, 409, 422, 423),
)
async def resolve_consumption(
    consumption_id: Annotated[str, path_id("consumption")],
    data: JSONBody[DisputeResolution],
    db_session: DbSession,
    principal: PrincipalDep,
) -> ConsumptionOut:
    """Settles a disputed service: `confirm` releases its value to the merchant, `void` releases the hold and gives the
    card its value and units back. Refused with 409 `invalid_state` unless the service is disputed.
    """
    return ConsumptionOut.of(await service.resolve(db_session, principal, consumption_id, data.outcome, data.note))
