"""Refunds of a card's unused value (domain.md §5, SPC Arts 14-24).

- Within the cooling-off window with nothing used: the whole price.
- Otherwise the prepayment less the value delivered, priced at the card's own (discounted) price when the
  merchant caused the refund, at the list price when the consumer did; pro rata by days for memberships; never
  more than what is left, gifted credit never counted as money. What the list price keeps back is released to
  the merchant as delivered value.
- The consumer sees the computation (``quote``) and confirms it by quoting its amount; a refund the merchant
  is said to have caused waits for the merchant's or the regulator's approval, any other is approved at once.
- On approval the custodied part is owed from custody (``refund_payable``); the unprotected part is first set
  off against the merchant's unpaid ``merchant_payable``, the rest is recorded as the merchant's debt
  (``refund_claims``). The bank is instructed to pay; it must within 5 days (cooling-off) or 15 days.
"""

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from escrow import ledger, notices
from escrow.auth.tokens import Principal
from escrow.cards import service as cards
from escrow.cards.pricing import day_value
from escrow.config import Settings
from escrow.consumptions import service as consumptions
from escrow.errors import Conflict, NotFound
from escrow.kit.clock import business_date, utcnow
from escrow.kit.ids import new_id
from escrow.models import Card, Consumption, EscrowAccount, Plan, Refund
from escrow.payouts import service as payouts


class InvalidState(Conflict):
    code = "invalid_state"
    title = "Not possible in the refund's state"


class ServicesPending(Conflict):
    code = "services_pending"
    title = "Services on this card await confirmation"


class QuoteChanged(Conflict):
    code = "quote_changed"
    title = "The refund amount is no longer the one quoted"


@dataclass(frozen=True)
class Quote:
    cause: str  # cooling_off, consumer, merchant, expiry
    paid: int
    delivered_units: int
    delivered_value: int  # the card's own price of what was delivered (released or about to be)
    delivered_value_charged: int  # what the refund charges for it (list price when the consumer caused it)
    remaining: int  # unused value at the card's own price
    amount: int  # refunded to the consumer
    retained: int  # of the remaining value, released to the merchant as delivered value
    rule: str

    def as_dict(self) -> dict:
        return asdict(self)


def unsettled_days_value(card: Card, today) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(days, value) of a membership's completed days not yet released."""
    if card.kind != "period":
        return 0, 0
    first, last = card.days_settled + 1, consumptions.days_completed(card, today)
    if last < first:
        return 0, 0
    return last - first + 1, sum(day_value(card.price, card.units_total, day) for day in range(first, last + 1))


def compute_quote(settings: Settings, card: Card, plan: Plan, cause: str, now: datetime) -> Quote:
    """The refund of a card now. A card past its last valid day is expired by the date alone (whether or not the
    expiry job has run): whoever asks, it is refunded as the job would refund it — cause ``expiry``, delivered
    value at the card's own price, no list-price penalty, approved at once."""
    today = business_date(now, settings.business_timezone)
    if cards.expired(settings, card.valid_until, today):
        cause = "expiry"
    days, days_value = unsettled_days_value(card, today)
    delivered_units = card.units_used + days
    delivered = card.consumed + days_value
    remaining = card.price - card.refunded - delivered
    cooling_off = (
        card.paid_at is not None
        and now - card.paid_at <= timedelta(days=settings.cooling_off_days)
        and delivered_units == 0
        and cause in ("consumer", "merchant")
    )
    if cooling_off:
        return Quote("cooling_off", card.price, 0, 0, 0, remaining, remaining, 0, "cooling-off: the whole price")
    charged = delivered
    rule = "prepayment less delivered value at the card's own price"
    if cause == "expiry":
        rule = f"expired after {card.valid_until}: {rule}, no list-price penalty"
    if cause == "consumer" and card.kind == "sessions" and plan.list_unit_price:
        charged = delivered_units * plan.list_unit_price
        rule = "prepayment less delivered sessions at the list price per session (consumer's choice to end)"
    elif cause == "consumer" and card.kind == "stored_value":
        charged = delivered_units  # face value spent: gifted credit is not money
        rule = "prepayment less face value spent (consumer's choice to end; gifted credit is not money)"
    elif card.kind == "period":
        rule = "pro rata to the membership days not yet delivered"
    amount = max(0, min(remaining, card.price - charged))
    return Quote(cause, card.price, delivered_units, delivered, charged, remaining, amount, remaining - amount, rule)


async def quote(session: AsyncSession, settings: Settings, principal: Principal, card_id: str, cause: str) -> Quote:
    card = await cards.get(session, principal, card_id)
    _check_refundable(card)
    plan = await session.get(Plan, card.plan_id)
    assert plan is not None
    return compute_quote(settings, card, plan, cause, utcnow())


def _check_refundable(card: Card) -> None:
    if card.status != "active":
        raise cards.CardNotActive(f"card {card.id} is {card.status}: nothing to refund")


async def request(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    card_id: str,
    cause: str,
    expected_amount: int,
    reason: str | None,
) -> Refund:
    card = await cards.get(session, principal, card_id, for_update=True)
    _check_refundable(card)
    await cards.check_account_active(session, card)
    if await consumptions.pending_on(session, card.id):
        raise ServicesPending(f"card {card.id} has services awaiting confirmation or in dispute; settle them first")
    if await cards.has_refund_requested(session, card.id):
        raise consumptions.RefundInProgress(f"card {card.id} already has a refund request open")
    plan = await session.get(Plan, card.plan_id)
    assert plan is not None
    now = utcnow()
    computed = compute_quote(settings, card, plan, cause, now)
    if computed.amount != expected_amount:
        raise QuoteChanged(
            f"the refund is now {computed.amount} fen, not {expected_amount}: confirm the new amount",
            quote=computed.as_dict(),
        )
    refund = await _new_refund(session, card, computed, reason)
    if computed.cause != "merchant":  # the consumer's own right: no one else's approval needed
        await _approve(session, settings, card, refund, principal.id, now)
    return refund


async def _new_refund(session: AsyncSession, card: Card, computed: Quote, reason: str | None) -> Refund:
    """A ``requested`` refund of the quoted amount; how it is paid (custody, set-off, claim) is settled on approval."""
    refund = Refund(
        id=new_id("rfd"),
        card_id=card.id,
        escrow_account_id=card.escrow_account_id,
        consumer_id=card.consumer_id,
        cause=computed.cause,
        status="requested",
        amount=computed.amount,
        from_custody=0,
        set_off=0,
        from_fund=0,  # the fund pays only in closures
        merchant_owes=computed.amount,
        retained=computed.retained,
        computation=computed.as_dict(),
        reason=reason,
    )
    session.add(refund)
    await session.flush()
    return refund


async def _approve(
    session: AsyncSession, settings: Settings, card: Card, refund: Refund, principal: str, now: datetime
) -> None:
    """Carry out an approved refund on a locked card: release what is retained, move the rest to the refund
    accounts, instruct the bank. The card ends ``refunded`` (``expired_refunded`` for expiry)."""
    today = business_date(now, settings.business_timezone)
    if card.kind == "period":
        # only the days the quote counted as delivered: days after a request was made are not the merchant's
        account = await session.get(EscrowAccount, card.escrow_account_id)
        await consumptions.settle_period_days(
            session,
            card,
            today,
            frozen=account is None or account.status != "active",
            up_to_day=refund.computation["delivered_units"],
        )
    remaining = card.price - card.consumed - card.refunded
    retained = min(refund.retained, remaining)
    amount = remaining - retained
    if amount != refund.amount:  # days released meanwhile: the quote was computed with them, so this can't differ
        raise QuoteChanged(f"refund {refund.id}: {amount} fen left to refund, the request says {refund.amount}")
    entries: list[ledger.Entry] = []
    refs = {"card_id": card.id, "refund_id": refund.id}
    released_now = 0  # to merchant_payable by this approval: available to the set-off below (posted together)
    if retained:
        protected, unprotected = cards.take(card, retained)
        released_now = protected
        card.consumed += retained
        card.released += retained
        entries.append(
            ledger.Entry(
                card.escrow_account_id, "release", cards.release_legs(card, protected, unprotected), refs, principal
            )
        )
    protected, unprotected = cards.take(card, amount) if amount else (0, 0)
    set_off = 0
    legs: list[ledger.Leg] = []
    if protected:
        legs += ledger.transfer(cards.card_code(card.id), "refund_payable", protected)
    if unprotected:
        await payouts.lock_payable(session, card.escrow_account_id)
        payable = (await ledger.balance(session, card.escrow_account_id, "merchant_payable")).available
        set_off = min(unprotected, payable + released_now)
        owed = unprotected - set_off
        if set_off:
            legs += ledger.transfer(cards.unprotected_code(card.id), "merchant_obligation", set_off)
            legs += ledger.transfer("merchant_payable", "refund_payable", set_off)
        if owed:
            await ledger.open_account(session, card.escrow_account_id, "refund_claims")
            legs += ledger.transfer(cards.unprotected_code(card.id), "refund_claims", owed)
    if legs:
        entries.append(ledger.Entry(card.escrow_account_id, "refund", legs, refs, principal))
    await ledger.post_many(session, entries)
    card.refunded += amount
    card.status = "expired_refunded" if refund.cause == "expiry" else "refunded"
    card.closed_at = now
    refund.from_custody = protected
    refund.set_off = set_off
    refund.merchant_owes = unprotected - set_off
    refund.status = "approved"
    refund.approved_at = now
    due_days = settings.refund_due_days_cooling_off if refund.cause == "cooling_off" else settings.refund_due_days
    refund.due_on = today + timedelta(days=due_days)
    if refund.from_custody + refund.set_off == 0:
        refund.status = "paid"  # nothing for the bank to move (the whole refund is a claim on the merchant, or 0)
        refund.paid_at = now
    else:
        await payouts.instruct_refund(session, refund, card, principal)
    await session.flush()
    facts = {"amount": refund.amount, "due_on": refund.due_on, "merchant_owes": refund.merchant_owes}
    await notices.add(session, notices.REFUND_APPROVED, card.id, facts, refund.id)


async def get(session: AsyncSession, principal: Principal, refund_id: str) -> Refund:
    refund = await session.get(Refund, refund_id)
    if refund is None:
        raise NotFound(f"no refund {refund_id}")
    card = await session.get(Card, refund.card_id)
    if card is None or not await cards.visible(session, principal, card):
        raise NotFound(f"no refund {refund_id}")
    return refund


async def _lock(session: AsyncSession, principal: Principal, refund_id: str) -> tuple[Card, Refund]:
    refund = await get(session, principal, refund_id)
    card = await cards.lock(session, refund.card_id)
    locked = await session.get(Refund, refund_id, with_for_update=True, populate_existing=True)
    assert locked is not None
    return card, locked


async def approve(session: AsyncSession, settings: Settings, principal: Principal, refund_id: str) -> Refund:
    card, refund = await _lock(session, principal, refund_id)
    if refund.status != "requested":
        raise InvalidState(f"refund {refund.id} is {refund.status}, not requested")
    await _approve(session, settings, card, refund, principal.id, utcnow())
    return refund


async def reject(session: AsyncSession, principal: Principal, refund_id: str, reason: str) -> Refund:
    """Refuse the claim that the merchant caused the refund; the consumer may still end the card on their own."""
    _, refund = await _lock(session, principal, refund_id)
    if refund.status != "requested":
        raise InvalidState(f"refund {refund.id} is {refund.status}, not requested")
    refund.status = "rejected"
    refund.reason = reason
    await session.flush()
    return refund


async def list_visible(
    session: AsyncSession, settings: Settings, principal: Principal, *, status: str | None, overdue: bool, limit: int
) -> list[Refund]:
    query = select(Refund).join(Card, Card.id == Refund.card_id).order_by(Refund.due_on, Refund.id).limit(limit)
    if principal.role == "merchant":
        query = query.where(Card.merchant_id == principal.id)
    elif principal.role == "consumer":
        query = query.where(Card.consumer_id == principal.id)
    if status is not None:
        query = query.where(Refund.status == status)
    if overdue:
        today = business_date(utcnow(), settings.business_timezone)
        query = query.where(Refund.status.in_(("approved", "instructed")), Refund.due_on < today)
    return list(await session.scalars(query))


# --- background work -------------------------------------------------------------------------------------


async def handle_expired_cards(session: AsyncSession, settings: Settings, now: datetime, limit: int) -> tuple[int, int]:
    """Cards past their validity with value left are extended or refunded (setting), never forfeited.

    Cards with services still awaiting confirmation wait for the next run. Returns (extended, refunded)."""
    today = business_date(now, settings.business_timezone)
    due = list(
        await session.scalars(
            select(Card.id)
            .join(EscrowAccount, EscrowAccount.id == Card.escrow_account_id)
            .where(
                Card.status == "active",
                Card.valid_until < today,
                EscrowAccount.status == "active",
                # cards waiting on a service or a refund decision wait for the next run, without blocking others
                ~select(Consumption.id)
                .where(Consumption.card_id == Card.id, Consumption.status.in_(("pending_confirmation", "disputed")))
                .exists(),
                ~cards.refund_requested(Card.id),
            )
            .order_by(Card.valid_until, Card.id)
            .limit(limit)
        )
    )
    extended = refunded = 0
    for card_id in due:
        card = await cards.lock(session, card_id)
        if (
            card.status != "active"
            or await consumptions.pending_on(session, card.id)
            or await cards.has_refund_requested(session, card.id)
        ):
            continue
        if settings.expiry_action == "extend":  # counted from its last valid day, not from today
            card.valid_until = cards.last_valid_day(settings, card.valid_until, today)
            extended += 1
            continue
        plan = await session.get(Plan, card.plan_id)
        assert plan is not None
        computed = compute_quote(settings, card, plan, "expiry", now)
        refund = await _new_refund(session, card, computed, "card expired with value left")
        await _approve(session, settings, card, refund, "system:expiry", now)
        refunded += 1
    return extended, refunded
