"""Services rendered: the merchant records one, its value is held on the card, and it is released to the merchant
when the consumer confirms it or the confirmation window passes; a dispute keeps it held until the merchant or
the regulator confirms or voids it. Period memberships release day by day on their own.

Locks are always taken card first, then consumption, so concurrent confirmations, disputes, refunds and the
background jobs never wait on each other in a cycle.
"""

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from escrow import ledger
from escrow.auth.tokens import Principal
from escrow.cards import service as cards
from escrow.cards.pricing import day_value, unit_value
from escrow.config import Settings
from escrow.consumptions.schemas import ConsumptionCreate
from escrow.errors import Conflict, FieldInvalid, NotFound
from escrow.kit.clock import business_date, utcnow
from escrow.kit.ids import new_id
from escrow.models import Card, Consumption, EscrowAccount


class InvalidState(Conflict):
    code = "invalid_state"
    title = "Not possible in the service record's state"


class ExceedsRemaining(Conflict):
    code = "exceeds_remaining"
    title = "More than the card has left"


class RefundInProgress(Conflict):
    code = "refund_in_progress"
    title = "A refund of this card is under way"


async def _visible(session: AsyncSession, principal: Principal, consumption: Consumption) -> bool:
    card = await session.get(Card, consumption.card_id)
    return card is not None and await cards.visible(session, principal, card)


async def get(session: AsyncSession, principal: Principal, consumption_id: str) -> Consumption:
    consumption = await session.get(Consumption, consumption_id)
    if consumption is None or not await _visible(session, principal, consumption):
        raise NotFound(f"no service record {consumption_id}")
    return consumption


async def _lock(session: AsyncSession, principal: Principal, consumption_id: str) -> tuple[Card, Consumption]:
    """Lock the card, then the service record (the fixed order)."""
    consumption = await get(session, principal, consumption_id)
    card = await cards.lock(session, consumption.card_id)
    consumption = await session.get(Consumption, consumption_id, with_for_update=True, populate_existing=True)
    assert consumption is not None
    return card, consumption


def mark_exhausted(card: Card) -> None:
    if card.consumed + card.refunded == card.price and card.released == card.consumed and card.status == "active":
        card.status = "exhausted"
        card.closed_at = utcnow()


async def record(
    session: AsyncSession, settings: Settings, principal: Principal, card_id: str, data: ConsumptionCreate
) -> Consumption:
    card = await cards.get(session, principal, card_id, for_update=True)
    if card.status != "active":
        raise cards.CardNotActive(f"card {card.id} is {card.status}")
    if card.kind == "period":
        raise InvalidState("period memberships release day by day on their own; nothing to record")
    units = data.sessions if card.kind == "sessions" else (data.face_value.amount if data.face_value else None)
    field = "sessions" if card.kind == "sessions" else "face_value"
    if units is None:
        raise FieldInvalid(field, f"a service on a {card.kind} card gives {field}")
    if units < 1:
        raise FieldInvalid(field, "must be at least 1")
    now = utcnow()
    if card.valid_until is not None and business_date(now, settings.business_timezone) > card.valid_until:
        raise cards.CardNotActive(f"card {card.id} was valid until {card.valid_until}")
    if await cards.has_refund_requested(session, card.id):
        raise RefundInProgress(f"card {card.id} has a refund request open")
    await cards.check_account_active(session, card)
    if card.units_used + units > card.units_total:
        raise ExceedsRemaining(
            f"card {card.id} has {card.units_total - card.units_used} {field.replace('_', ' ')} left, not {units}",
            errors=[{"field": field, "message": f"at most {card.units_total - card.units_used}"}],
        )
    amount = unit_value(card.price, card.units_total, card.units_used, units, card.consumed)
    protected, unprotected = cards.take(card, amount)
    card.units_used += units
    card.consumed += amount
    consumption = Consumption(
        id=new_id("csm"),
        card_id=card.id,
        escrow_account_id=card.escrow_account_id,
        units=units,
        amount=amount,
        protected_amount=protected,
        status="pending_confirmation",
        note=data.note,
        confirm_by=now + timedelta(seconds=settings.confirmation_window_seconds),
    )
    if amount:
        consumption.hold_entry_id = await ledger.hold(
            session,
            ledger.Entry(
                card.escrow_account_id,
                "consumption",
                cards.release_legs(card, protected, unprotected),
                refs={"card_id": card.id, "consumption_id": consumption.id},
                principal=principal.id,
            ),
        )
    session.add(consumption)
    await session.flush()
    return consumption


async def _release(session: AsyncSession, card: Card, consumption: Consumption, by: str) -> None:
    if consumption.hold_entry_id is not None:
        await ledger.post_pending(
            session, consumption.hold_entry_id, principal=by, refs={"consumption_id": consumption.id}
        )
    card.released += consumption.amount
    consumption.status = "confirmed"
    consumption.resolved_at = utcnow()
    consumption.resolved_by = by
    mark_exhausted(card)


async def confirm(session: AsyncSession, principal: Principal, consumption_id: str) -> Consumption:
    card, consumption = await _lock(session, principal, consumption_id)
    if consumption.status == "confirmed":
        return consumption
    if consumption.status != "pending_confirmation":
        raise InvalidState(f"service record {consumption.id} is {consumption.status}")
    await _release(session, card, consumption, "consumer")
    await session.flush()
    return consumption


async def dispute(session: AsyncSession, principal: Principal, consumption_id: str, reason: str) -> Consumption:
    _, consumption = await _lock(session, principal, consumption_id)
    if consumption.status != "pending_confirmation":
        raise InvalidState(f"service record {consumption.id} is {consumption.status}: it can't be disputed")
    if consumption.confirm_by is not None and consumption.confirm_by <= utcnow():
        raise InvalidState(f"the confirmation window of {consumption.id} has passed")
    consumption.status = "disputed"
    consumption.dispute_reason = reason
    await session.flush()
    return consumption


async def resolve(
    session: AsyncSession, principal: Principal, consumption_id: str, outcome: str, note: str | None
) -> Consumption:
    """The merchant or the regulator settles a dispute: the service stands (confirm) or is taken back (void)."""
    card, consumption = await _lock(session, principal, consumption_id)
    if consumption.status != "disputed":
        raise InvalidState(f"service record {consumption.id} is {consumption.status}, not disputed")
    if outcome == "confirm":
        await _release(session, card, consumption, principal.id)
    else:
        await void(session, card, consumption, principal.id)
    if note:
        consumption.note = note
    await session.flush()
    return consumption


async def void(session: AsyncSession, card: Card, consumption: Consumption, by: str) -> None:
    """Take back a service still held on a locked card: its hold is released and the card gets its value back."""
    if consumption.hold_entry_id is not None:
        await ledger.void_pending(
            session, consumption.hold_entry_id, principal=by, refs={"consumption_id": consumption.id}
        )
    card.units_used -= consumption.units
    card.consumed -= consumption.amount
    card.protected_out -= consumption.protected_amount
    consumption.status = "voided"
    consumption.resolved_at = utcnow()
    consumption.resolved_by = by


async def list_visible(
    session: AsyncSession, principal: Principal, *, status: str | None, card_id: str | None, limit: int
) -> list[Consumption]:
    query = select(Consumption).join(Card, Card.id == Consumption.card_id).order_by(Consumption.id).limit(limit)
    if principal.role == "merchant":
        query = query.where(Card.merchant_id == principal.id)
    elif principal.role == "consumer":
        query = query.where(Card.consumer_id == principal.id)
    if status is not None:
        query = query.where(Consumption.status == status)
    if card_id is not None:
        query = query.where(Consumption.card_id == card_id)
    return list(await session.scalars(query))


async def pending_on(session: AsyncSession, card_id: str) -> list[Consumption]:
    return list(
        await session.scalars(
            select(Consumption)
            .where(Consumption.card_id == card_id, Consumption.status.in_(("pending_confirmation", "disputed")))
            .order_by(Consumption.id)
        )
    )


# --- background work -------------------------------------------------------------------------------------


async def auto_confirm(session: AsyncSession, now: datetime, limit: int) -> int:
    """Confirm services whose window passed unanswered. Returns how many were confirmed."""
    due = list(
        await session.scalars(
            select(Consumption.id)
            .join(EscrowAccount, EscrowAccount.id == Consumption.escrow_account_id)
            .where(
                Consumption.status == "pending_confirmation",
                Consumption.confirm_by <= now,
                EscrowAccount.status == "active",
            )
            .order_by(Consumption.confirm_by)
            .limit(limit)
        )
    )
    done = 0
    for consumption_id in due:
        consumption = await session.get(Consumption, consumption_id)
        assert consumption is not None
        card = await cards.lock(session, consumption.card_id)
        consumption = await session.get(Consumption, consumption_id, with_for_update=True, populate_existing=True)
        if consumption is None or consumption.status != "pending_confirmation":
            continue  # answered meanwhile
        await _release(session, card, consumption, "auto")
        done += 1
    await session.flush()
    return done


@dataclass(frozen=True)
class PeriodOutcome:
    released_days: int
    skipped_days: int
    cards: int = 1


def days_completed(card: Card, today: date) -> int:
    """Days of a membership fully past before ``today`` (a day in progress is not yet delivered)."""
    if card.starts_on is None:
        return 0
    return max(0, min((today - card.starts_on).days, card.units_total))


async def settle_period_days(
    session: AsyncSession, card: Card, today: date, frozen: bool, up_to_day: int | None = None
) -> PeriodOutcome:
    """Release a locked membership card's completed days (up to ``up_to_day``); days passed while frozen are
    skipped for good (their value stays the consumer's)."""
    last = days_completed(card, today) if up_to_day is None else min(up_to_day, days_completed(card, today))
    first = card.days_settled + 1
    if last < first or card.status != "active":
        return PeriodOutcome(0, 0, 0)
    card.days_settled = last
    if frozen:
        return PeriodOutcome(0, last - first + 1)
    amount = sum(day_value(card.price, card.units_total, day) for day in range(first, last + 1))
    protected, unprotected = cards.take(card, amount)
    card.units_used += last - first + 1
    card.consumed += amount
    card.released += amount
    consumption = Consumption(
        id=new_id("csm"),
        card_id=card.id,
        escrow_account_id=card.escrow_account_id,
        units=last - first + 1,
        amount=amount,
        protected_amount=protected,
        status="confirmed",
        service_date=card.starts_on + timedelta(days=last - 1) if card.starts_on else None,
        note=f"membership days {first}-{last}",
        resolved_at=utcnow(),
        resolved_by="schedule",
    )
    if amount:
        await ledger.post(
            session,
            ledger.Entry(
                card.escrow_account_id,
                "release",
                cards.release_legs(card, protected, unprotected),
                refs={"card_id": card.id, "consumption_id": consumption.id, "days": [first, last]},
                principal="system:period",
                idempotency_ref=f"period:{card.id}:{last}",
            ),
        )
    session.add(consumption)
    mark_exhausted(card)
    return PeriodOutcome(last - first + 1, 0)


async def release_period_days(session: AsyncSession, settings: Settings, now: datetime, limit: int) -> PeriodOutcome:
    """The daily membership release for up to ``limit`` cards with days to settle."""
    today = business_date(now, settings.business_timezone)
    rows = (
        await session.execute(
            select(Card.id, EscrowAccount.status)
            .join(EscrowAccount, EscrowAccount.id == Card.escrow_account_id)
            .where(
                Card.kind == "period",
                Card.status == "active",
                Card.days_settled < Card.units_total,
                Card.starts_on + Card.days_settled < today,
                ~cards.refund_requested(Card.id),
            )
            .order_by(Card.id)
            .limit(limit)
        )
    ).all()
    released = skipped = 0
    for card_id, account_status in rows:
        card = await cards.lock(session, card_id)
        outcome = await settle_period_days(session, card, today, frozen=account_status != "active")
        released += outcome.released_days
        skipped += outcome.skipped_days
    await session.flush()
    return PeriodOutcome(released, skipped, len(rows))
