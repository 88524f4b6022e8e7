import re

from litestar import get, post
from litestar.params import FromPath, FromQuery, JSONBody

from escrow.auth.guards import requires
from escrow.cards import service
from escrow.cards.schemas import (
    AccountTotals,
    CardDetail,
    CardOut,
    CardSale,
    CardSold,
    DepositReport,
    HistoryLine,
    PaymentDetails,
    PendingService,
    UnappliedDepositOut,
)
from escrow.consumptions.service import pending_on
from escrow.db import Row
from escrow.deps import DbSession, PrincipalDep, SettingsDep
from escrow.errors import FieldInvalid, problem_responses
from escrow.kit.money import Money, SignedMoney
from escrow.kit.pagination import Page, check_limit, decode_cursor, page_of
from escrow.models import Card
from escrow.models.card import CardStatus

TAGS = ["cards"]
EVERYONE_OWN = requires("regulator", "bank", "merchant", "consumer", own=("bank", "merchant", "consumer"))


def card_out(card: Card | Row) -> CardOut:
    return CardOut(
        id=card.id,
        merchant_id=card.merchant_id,
        escrow_account_id=card.escrow_account_id,
        plan_id=card.plan_id,
        consumer_id=card.consumer_id,
        kind=card.kind,  # type: ignore[arg-type]
        status=card.status,
        price=Money(amount=card.price),
        custody_ratio_bp=card.custody_ratio_bp,
        units_total=card.units_total,
        units_remaining=card.units_total - card.units_used,
        payment_reference=card.payment_reference,
        sold_at=card.sold_at,
        paid_at=card.paid_at,
        starts_on=card.starts_on,
        valid_until=card.valid_until,
    )


@post(
    "/v1/cards",
    guards=[requires("merchant")],
    tags=TAGS,
    summary="Sell a card: it awaits the consumer's payment into the escrow account",
    responses=problem_responses(401, 403, 409, 422),
)
async def sell_card(
    data: JSONBody[CardSale], db_session: DbSession, principal: PrincipalDep, settings: SettingsDep
) -> CardSold:
    sale = await service.sell(db_session, settings, principal, data)
    return CardSold(
        card=card_out(sale.card),
        payment=PaymentDetails(
            bank_name=sale.bank_name,
            escrow_account_number_masked=sale.escrow_account_number_masked,
            payment_reference=sale.card.payment_reference,
            amount=Money(amount=sale.card.price),
        ),
    )


@post(
    "/v1/deposits",
    guards=[requires("bank")],
    tags=TAGS,
    status_code=200,
    summary="The bank reports a deposit: the card it pays becomes active (signed, idempotent on the transaction id)",
    description="A deposit that can't be applied (unknown reference, wrong amount, card already paid) is refused "
    "and kept, unapplied, for reconciliation.",
    responses=problem_responses(401, 403, 409, 422, 423),
)
async def report_deposit(
    data: JSONBody[DepositReport], db_session: DbSession, principal: PrincipalDep, settings: SettingsDep
) -> CardOut:
    return card_out(await service.confirm_deposit(db_session, settings, principal, data))


async def _page(db_session, principal, status, merchant_id, cursor, limit) -> Page[CardOut]:  # type: ignore[no-untyped-def]
    limit = check_limit(limit)
    rows = await service.list_visible(
        db_session, principal, status=status, merchant_id=merchant_id, after=decode_cursor(cursor), limit=limit
    )
    return page_of(rows, limit, card_out, lambda c: c.id)


@get(
    "/v1/cards",
    guards=[requires("regulator", "bank", "merchant", own=("bank", "merchant"))],
    tags=TAGS,
    summary="Cards the caller may see",
    responses=problem_responses(401, 403, 422),
)
async def list_cards(
    db_session: DbSession,
    principal: PrincipalDep,
    status: FromQuery[CardStatus | None] = None,
    merchant_id: FromQuery[str | None] = None,
    cursor: FromQuery[str | None] = None,
    limit: FromQuery[int] = 50,
) -> Page[CardOut]:
    return await _page(db_session, principal, status, merchant_id, cursor, limit)


@get(
    "/v1/me/cards",
    guards=[requires("consumer")],
    tags=TAGS,
    summary="The consumer's own cards",
    responses=problem_responses(401, 403, 422),
)
async def my_cards(
    db_session: DbSession,
    principal: PrincipalDep,
    status: FromQuery[CardStatus | None] = None,
    cursor: FromQuery[str | None] = None,
    limit: FromQuery[int] = 50,
) -> Page[CardOut]:
    return await _page(db_session, principal, status, None, cursor, limit)


@get(
    "/v1/cards/{card_id:str}",
    guards=[EVERYONE_OWN],
    tags=TAGS,
    summary="A card: what is left, what of it is protected, services awaiting confirmation",
    responses=problem_responses(401, 403, 404),
)
async def get_card(card_id: FromPath[str], db_session: DbSession, principal: PrincipalDep) -> CardDetail:
    card = await service.get(db_session, principal, card_id)
    balances = await service.balances(db_session, card)
    pending = [
        PendingService(
            consumption_id=c.id,
            units=c.units,
            value=Money(amount=c.amount),
            status=c.status,  # type: ignore[arg-type]
            recorded_at=c.recorded_at,
            confirm_by=c.confirm_by,
        )
        for c in await pending_on(db_session, card.id)
    ]
    return CardDetail(
        **card_out(card).model_dump(),
        value_remaining=Money(amount=balances.remaining),
        protected=Money(amount=balances.protected),
        unprotected=Money(amount=balances.unprotected),
        pending=Money(amount=balances.pending),
        released=Money(amount=card.released),
        refunded=Money(amount=card.refunded),
        pending_services=pending,
    )


@get(
    "/v1/cards/{card_id:str}/history",
    guards=[EVERYONE_OWN],
    tags=TAGS,
    summary="The card's movements, newest first: payment, services held, released or voided, refunds",
    responses=problem_responses(401, 403, 404, 422),
)
async def card_history(
    card_id: FromPath[str],
    db_session: DbSession,
    principal: PrincipalDep,
    cursor: FromQuery[str | None] = None,
    limit: FromQuery[int] = 50,
) -> Page[HistoryLine]:
    limit = check_limit(limit)
    card = await service.get(db_session, principal, card_id)
    raw = decode_cursor(cursor)
    if raw is not None and not re.fullmatch(r"[0-9]{1,18}", raw):
        raise FieldInvalid("cursor", "is not a cursor this service issued")
    items = await service.history(db_session, card, before=int(raw) if raw else None, limit=limit + 1)

    def line(i: service.HistoryItem) -> HistoryLine:
        return HistoryLine(
            entry_id=i.entry_id,
            occurred_at=i.occurred_at,
            event=i.event,
            amount=Money(amount=i.amount),
            protected=Money(amount=i.protected),
            refs=i.refs,
        )

    return page_of(items, limit, line, lambda i: i.entry_id)


@get(
    "/v1/escrow-accounts/{escrow_account_id:str}/totals",
    guards=[requires("regulator", "bank", "merchant", own=("bank", "merchant"))],
    tags=TAGS,
    summary="Totals of an escrow account: custody, cards' protected and unprotected value, payables",
    responses=problem_responses(401, 403, 404),
)
async def escrow_account_totals(
    escrow_account_id: FromPath[str], db_session: DbSession, principal: PrincipalDep
) -> AccountTotals:
    totals = await service.account_totals(db_session, principal, escrow_account_id)
    counts = {k: totals.pop(k) for k in ("cards_active", "cards_awaiting_payment")}
    difference = SignedMoney(amount=totals.pop("custody_difference"))
    return AccountTotals(
        escrow_account_id=escrow_account_id,
        **{k: Money(amount=v) for k, v in totals.items()},
        custody_difference=difference,
        **counts,
    )


@get(
    "/v1/unapplied-deposits",
    guards=[requires("regulator", "bank", own=("bank",))],
    tags=TAGS,
    summary="Deposits reported but not applied (unknown reference, wrong amount, card already paid), newest first",
    responses=problem_responses(401, 403, 422),
)
async def list_unapplied_deposits(
    db_session: DbSession, principal: PrincipalDep, limit: FromQuery[int] = 100
) -> list[UnappliedDepositOut]:
    rows = await service.unapplied_deposits(db_session, principal, check_limit(limit))
    return [
        UnappliedDepositOut(
            bank_id=r.bank_id,
            bank_transaction_id=r.bank_transaction_id,
            payment_reference=r.payment_reference,
            amount=Money(amount=r.amount),
            reason=r.reason,
            detail=r.detail,
            received_at=r.received_at,
        )
        for r in rows
    ]
