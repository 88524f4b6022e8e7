from typing import Annotated, Literal

from litestar import get, post
from litestar.params import FromQuery, JSONBody

from escrow.auth.guards import requires
from escrow.deps import DbSession, PrincipalDep, SettingsDep
from escrow.errors import problem_responses
from escrow.kit.money import Money
from escrow.kit.params import Limit, path_id
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
    card_id: Annotated[str, path_id("card")],
    db_session: DbSession,
    principal: PrincipalDep,
    settings: SettingsDep,
    cause: FromQuery[Literal["consumer", "merchant"]] = "consumer",
) -> RefundQuote:
    """Computes, without changing anything, what refunding the card now would pay: the whole price within the
    cooling-off window with nothing used; otherwise the prepayment less the value delivered, priced at the list price
    when the consumer ends the card and at the card's own price when the merchant caused it; pro rata by days for
    memberships. Refused with 409 `card_not_active` unless the card is active.
    """
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
    card_id: Annotated[str, path_id("card")],
    data: JSONBody[RefundRequest],
    db_session: DbSession,
    principal: PrincipalDep,
    settings: SettingsDep,
) -> RefundOut:
    """Asks for a refund of an active card at the amount of a quote (`expected_amount`). A consumer-caused or
    cooling-off refund is approved at once: the card ends `refunded`, its unused value moves to the refunds owed and
    the bank is instructed to pay; a merchant-caused one waits for the merchant's or the regulator's approval.
    Refused with 409 `quote_changed` (the amount is no longer the quote's; the answer carries the new quote),
    `services_pending`, `refund_in_progress` or `card_not_active`.
    """
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
    limit: Limit = 100,
) -> list[RefundOut]:
    """Lists refunds by due date, filtered by status, or with `overdue=true` those approved or instructed and not paid
    by their due date; up to `limit`. A merchant sees those of its cards, a consumer its own.
    """
    rows = await service.list_visible(db_session, settings, principal, status=status, overdue=overdue, limit=limit)
    return [RefundOut.of(r) for r in rows]


@get(
    ONE,
    guards=[requires("regulator", "bank", "merchant", "consumer", own=("bank", "merchant", "consumer"))],
    tags=TAGS,
    summary="A refund",
    responses=problem_responses(401, 403, 404),
)
async def get_refund(
    refund_id: Annotated[str, path_id("refund")], db_session: DbSession, principal: PrincipalDep
) -> RefundOut:
    """Returns one refund with its computation."""
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
    refund_id: Annotated[str, path_id("refund")], db_session: DbSession, principal: PrincipalDep, settings: SettingsDep
) -> RefundOut:
    """Approves a requested merchant-caused refund: what the quote retains is released to the merchant, the custodied
    part is owed from custody, the unprotected part is set off against the merchant's unpaid payable (the rest is
    recorded as its debt), the card ends `refunded` and the bank is instructed to pay by the due date. Refused with
    409 `invalid_state` unless the refund is `requested`, and 409 `quote_changed` if the card's value changed
    meanwhile.
    """
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
    refund_id: Annotated[str, path_id("refund")],
    data: JSONBody[Rejection],
    db_session: DbSession,
    principal: PrincipalDep,
) -> RefundOut:
    """Rejects, with a reason, the claim that the merchant caused a requested refund; the refund ends `rejected` and
    nothing moves (the consumer may still end the card on their own). Refused with 409 `invalid_state` unless it is
    `requested`.
    """
    return RefundOut.of(await service.reject(db_session, principal, refund_id, data.reason))
