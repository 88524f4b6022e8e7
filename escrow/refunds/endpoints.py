from typing import Literal

from litestar import get, post
from litestar.params import FromPath, FromQuery, JSONBody

from escrow.auth.guards import requires
from escrow.deps import DbSession, PrincipalDep, SettingsDep
from escrow.errors import problem_responses
from escrow.kit.money import Money
from escrow.kit.pagination import check_limit
from escrow.models.card import RefundStatus
from escrow.refunds import service
from escrow.refunds.schemas import RefundOut, RefundQuote, RefundRequest, Rejection

TAGS = ["refunds"]
ONE = "/v1/refunds/{refund_id:str}"


@get(
    "/v1/cards/{card_id:str}/refund-quote",
    guards=[requires("regulator", "merchant", "consumer", own=("merchant", "consumer"))],
    tags=TAGS,
    summary="What a refund of the card would pay, and how it is computed",
    responses=problem_responses(401, 403, 404, 409),
)
async def refund_quote(
    card_id: FromPath[str],
    db_session: DbSession,
    principal: PrincipalDep,
    settings: SettingsDep,
    cause: FromQuery[Literal["consumer", "merchant"]] = "consumer",
) -> RefundQuote:
    q = await service.quote(db_session, settings, principal, card_id, cause)
    return RefundQuote(
        card_id=card_id,
        cause=q.cause,
        paid=Money(amount=q.paid),
        delivered_units=q.delivered_units,
        delivered_value=Money(amount=q.delivered_value),
        delivered_value_charged=Money(amount=q.delivered_value_charged),
        remaining=Money(amount=q.remaining),
        amount=Money(amount=q.amount),
        retained=Money(amount=q.retained),
        rule=q.rule,
    )


@post(
    "/v1/cards/{card_id:str}/refunds",
    guards=[requires("consumer", own=("consumer",))],
    tags=TAGS,
    summary="Ask for a refund of the card at the quoted amount",
    description="Your own refund (cause consumer, cooling-off, or a card past its last valid day) is approved and "
    "the bank instructed in this request: the answer is status instructed (paid when the bank has nothing to "
    "move). A refund the merchant caused answers requested and waits for approve or reject.",
    responses=problem_responses(401, 403, 404, 409, 422, 423),
)
async def request_refund(
    card_id: FromPath[str],
    data: JSONBody[RefundRequest],
    db_session: DbSession,
    principal: PrincipalDep,
    settings: SettingsDep,
) -> RefundOut:
    refund = await service.request(
        db_session, settings, principal, card_id, data.cause, data.expected_amount.amount, data.reason
    )
    return RefundOut.of(refund)


@get(
    "/v1/refunds",
    guards=[requires("regulator", "merchant", "consumer", own=("merchant", "consumer"))],
    tags=TAGS,
    summary="Refunds (overdue=true: approved and not paid by their deadline)",
    responses=problem_responses(401, 403, 422),
)
async def list_refunds(
    db_session: DbSession,
    principal: PrincipalDep,
    settings: SettingsDep,
    status: FromQuery[RefundStatus | None] = None,
    overdue: FromQuery[bool] = False,
    limit: FromQuery[int] = 100,
) -> list[RefundOut]:
    rows = await service.list_visible(
        db_session, settings, principal, status=status, overdue=overdue, limit=check_limit(limit)
    )
    return [RefundOut.of(r) for r in rows]


@get(
    ONE,
    guards=[requires("regulator", "bank", "merchant", "consumer", own=("bank", "merchant", "consumer"))],
    tags=TAGS,
    summary="A refund",
    responses=problem_responses(401, 403, 404),
)
async def get_refund(refund_id: FromPath[str], db_session: DbSession, principal: PrincipalDep) -> RefundOut:
    return RefundOut.of(await service.get(db_session, principal, refund_id))


@post(
    ONE + "/approve",
    guards=[requires("regulator", "merchant", own=("merchant",))],
    tags=TAGS,
    status_code=200,
    summary="Approve a refund the merchant caused: the bank is instructed to pay",
    description="Approval and the bank instruction are one transaction: the refund answers status instructed "
    "(approved_at set), or paid when the bank has nothing to move.",
    responses=problem_responses(401, 403, 404, 409, 423),
)
async def approve_refund(
    refund_id: FromPath[str], db_session: DbSession, principal: PrincipalDep, settings: SettingsDep
) -> RefundOut:
    return RefundOut.of(await service.approve(db_session, settings, principal, refund_id))


@post(
    ONE + "/reject",
    guards=[requires("regulator", "merchant", own=("merchant",))],
    tags=TAGS,
    status_code=200,
    summary="Reject the claim that the merchant caused the refund",
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def reject_refund(
    refund_id: FromPath[str], data: JSONBody[Rejection], db_session: DbSession, principal: PrincipalDep
) -> RefundOut:
    return RefundOut.of(await service.reject(db_session, principal, refund_id, data.reason))
