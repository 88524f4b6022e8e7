from typing import Annotated

from litestar import get, post
from litestar.datastructures import CacheControlHeader
from litestar.params import FromQuery, JSONBody

from escrow.auth.guards import requires
from escrow.cards import presence, service
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
    PresenceCode,
    UnappliedDepositOut,
)
from escrow.consumptions.service import pending_on
from escrow.db import Row
from escrow.deps import DbSession, KeyringDep, PrincipalDep, SettingsDep
from escrow.errors import problem_responses
from escrow.kit.money import Money, SignedMoney
from escrow.kit.pagination import Page, decode_cursor, int8, page_of
from escrow.kit.params import Cursor, Limit, path_id, query_id
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
    """Sells a card of one of the merchant's active plans to a consumer it registered; the card is `awaiting_payment`
    until the bank reports the consumer's deposit (no money moves yet). The answer says where the consumer pays: the
    escrow account and the payment reference to quote. Refused with 409 `sales_stopped` when the merchant or escrow
    account isn't active, with 422 for an unknown or retired plan, an unregistered consumer or an ambiguous escrow
    account, and with 422 `plan_rule_broken` when the plan breaks today's category caps or a gym consumer's prepaid
    total would exceed its limit.
    """
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
    merchant_id: Annotated[str | None, query_id("merchant")] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> Page[CardOut]:
    """Lists cards in id order, filtered by status and merchant; cursor-paginated. A merchant sees its own, a bank those
    in the escrow accounts it holds, the regulator all.
    """
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
    cursor: Cursor = None,
    limit: Limit = 50,
) -> Page[CardOut]:
    """Lists the signed-in consumer's own cards in id order, optionally filtered by status; cursor-paginated."""
    return await _page(db_session, principal, status, None, cursor, limit)


@get(
    "/v1/cards/{card_id:str}",
    guards=[EVERYONE_OWN],
    tags=TAGS,
    summary="A card: what is left, what of it is protected, services awaiting confirmation",
    responses=problem_responses(401, 403, 404),
)
async def get_card(
    card_id: Annotated[str, path_id("card")], db_session: DbSession, principal: PrincipalDep
) -> CardDetail:
    """Returns a card with its balances: value remaining, the part of it protected by custody and the unprotected part,
    what is held by services awaiting confirmation or disputed (each listed), and what was released to the merchant
    and refunded.
    """
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
    "/v1/cards/{card_id:str}/presence-code",
    guards=[requires("consumer", own=("consumer",))],
    tags=TAGS,
    summary="The consumer's presence code for the card, to show at the counter (核销)",
    responses=problem_responses(401, 403, 404),
    cache_control=CacheControlHeader(no_store=True),
)
async def presence_code(
    card_id: Annotated[str, path_id("card")],
    db_session: DbSession,
    principal: PrincipalDep,
    settings: SettingsDep,
    keyring: KeyringDep,
) -> PresenceCode:
    """Returns the card's current presence code, and a QR code of it: the merchant who records a service with it
    (`presence_code`) has it confirmed at once, as if the consumer had confirmed it. The code changes every
    `ESCROW_PRESENCE_CODE_STEP_SECONDS` (60 s); the previous one is still accepted, and a code confirms the services
    of one request only. Derived from the card and the time, never stored. Only the card's consumer gets it.
    """
    card = await service.get(db_session, principal, card_id)
    current = presence.current(
        keyring.presence_key,
        card.id,
        presence.now(),
        settings.presence_code_step_seconds,
        settings.presence_code_digits,
    )
    return PresenceCode(
        code=current.code,
        valid_until=current.valid_until,
        rotates_at=current.rotates_at,
        qr_svg=presence.qr_svg(presence.qr_payload(card.id, current.code)),
    )


@get(
    "/v1/cards/{card_id:str}/history",
    guards=[EVERYONE_OWN],
    tags=TAGS,
    summary="The card's movements, newest first: payment, services held, released or voided, refunds",
    responses=problem_responses(401, 403, 404, 422),
)
async def card_history(
    card_id: Annotated[str, path_id("card")],
    db_session: DbSession,
    principal: PrincipalDep,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> Page[HistoryLine]:
    """Lists the journal entries that moved the card's balance, newest first (payment, services held, released or
    voided, refunds, transfers); cursor-paginated.
    """
    card = await service.get(db_session, principal, card_id)
    items = await service.history(db_session, card, before=decode_cursor(cursor, int8), limit=limit + 1)

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
    escrow_account_id: Annotated[str, path_id("escrow account")], db_session: DbSession, principal: PrincipalDep
) -> AccountTotals:
    """Returns the escrow account's ledger totals: custody cash, the cards' protected and unprotected unused value, what
    is payable to the merchant (payouts in flight included) and to consumers, and how many cards are active or
    awaiting payment.
    """
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
    db_session: DbSession, principal: PrincipalDep, limit: Limit = 100
) -> list[UnappliedDepositOut]:
    """Lists deposits the bank reported that were refused and not put on any card (unknown reference, wrong amount, card
    already paid or cancelled, account not active), newest first, up to `limit`; they are left to reconciliation. A
    bank sees its own.
    """
    rows = await service.unapplied_deposits(db_session, principal, limit)
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
