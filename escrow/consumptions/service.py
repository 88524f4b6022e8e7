"""Services rendered: the merchant records one, its value is held on the card, and it is released to the merchant
when the consumer confirms it or the confirmation window passes; a dispute keeps it held until the merchant or
the regulator confirms or voids it. Period memberships release day by day on their own.

Locks are always taken card first, then consumption, so concurrent confirmations, disputes, refunds and the
background jobs never wait on each other in a cycle.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from escrow import db, ledger, notices
from escrow.auth.tokens import Principal
from escrow.cards import presence
from escrow.cards import service as cards
from escrow.cards.pricing import day_value, unit_value
from escrow.config import Settings
from escrow.consumptions.schemas import ConsumptionCreate
from escrow.errors import Conflict, FieldInvalid, NotFound
from escrow.kit.clock import business_date, utcnow
from escrow.kit.crypto import Keyring
from escrow.kit.ids import new_id
from escrow.models import Card, Consumption, EscrowAccount, PresenceFailure


class InvalidState(Conflict):
    code = "invalid_state"
    title = "Not possible in the service record's state"


class ExceedsRemaining(Conflict):
    code = "exceeds_remaining"
    title = "More than the card has left"


class PresenceCodeRefused(FieldInvalid):
    """A presence code that is not the card's current (or previous) one, or one already used: nothing is recorded."""


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


def mark_exhausted(card: Card | db.Row) -> bool:
    """Close a card whose whole price was delivered and released; whether it did now."""
    if card.consumed + card.refunded == card.price and card.released == card.consumed and card.status == "active":
        card.status = "exhausted"
        card.closed_at = utcnow()
        return True
    return False


@dataclass(frozen=True, slots=True)
class Service:
    """One service to record: on a sessions card, the sessions used; on a stored-value card, the face value."""

    card_id: str
    sessions: int | None = None
    face_value: int | None = None  # fen
    presence_code: str | None = None  # the consumer's code: the service is confirmed at once


@dataclass(frozen=True, slots=True)
class _Held:
    """A service about to be recorded: its id, its card (counters already advanced), what it takes."""

    id: str
    card: db.Row
    units: int
    amount: int
    protected: int
    legs: list[ledger.Leg]
    present: bool  # confirmed by the consumer's presence code


_LOCK_CARDS = "SELECT * FROM cards WHERE id = ANY($1::text[]) AND merchant_id = $2 ORDER BY id FOR NO KEY UPDATE"
# Read after the cards are locked (so refund requests and freezes committed meanwhile are seen).
_MOVEMENT_STATES = (
    "SELECT k.id, a.status AS account_status,"
    " EXISTS (SELECT 1 FROM refunds r WHERE r.card_id = k.id AND r.status = 'requested') AS refund_requested"
    " FROM cards k JOIN escrow_accounts a ON a.id = k.escrow_account_id WHERE k.id = ANY($1::text[])"
)
# The cards' new counters and the held services, set-based, in one round trip.
_RECORD = (
    "WITH counters AS (UPDATE cards SET units_used = u.units_used, consumed = u.consumed,"
    "   protected_out = u.protected_out, presence_step = u.presence_step"
    "   FROM unnest($10::text[], $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[])"
    "     AS u(id, units_used, consumed, protected_out, presence_step)"
    "   WHERE cards.id = u.id)"
    " INSERT INTO consumptions (id, card_id, escrow_account_id, units, amount, protected_amount, status,"
    "   hold_entry_id, note, confirm_by)"
    " SELECT u.id, u.card_id, u.book, u.units, u.amount, u.protected, 'pending_confirmation', u.hold, $8, $9"
    " FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])"
    "   AS u(id, card_id, book, units, amount, protected, hold)"
    " RETURNING *"
)


async def record(
    session: AsyncSession,
    settings: Settings,
    keyring: Keyring,
    principal: Principal,
    card_id: str,
    data: ConsumptionCreate,
) -> db.Row:
    service = Service(card_id, data.sessions, data.face_value.amount if data.face_value else None, data.presence_code)
    return (await record_many(session, settings, keyring, principal, [service], data.note, in_batch=False))[0]


async def record_many(
    session: AsyncSession,
    settings: Settings,
    keyring: Keyring,
    principal: Principal,
    services: Sequence[Service],
    note: str | None,
    *,
    in_batch: bool = True,
) -> list[db.Row]:
    """Record services rendered (one, or a class's worth at once): each is held on its card; all or none. A service
    given its consumer's presence code is then confirmed at once, as the consumer's confirmation does.

    Refusals name the item at fault (``services[i]…``) when ``in_batch``."""
    locked = await db.fetch(session, _LOCK_CARDS, sorted({s.card_id for s in services}), principal.id)
    by_id = {row["id"]: db.Row(row.items()) for row in locked}
    states = {row["id"]: row for row in await db.fetch(session, _MOVEMENT_STATES, list(by_id))}
    now = utcnow()
    today = business_date(now, settings.business_timezone)
    held: list[_Held] = []
    used_before = {card_id: card.presence_step for card_id, card in by_id.items()}  # before this request
    for index, service in enumerate(services):
        at = f"services[{index}]." if in_batch else ""
        card = by_id.get(service.card_id)
        if card is None:
            raise NotFound(
                f"no card {service.card_id}", errors=_item(at, "card_id", f"no card {service.card_id}", "exists")
            )
        units, field = _units(card, service, at)
        _check(card, states[card.id], units, field, at, today, settings)
        if service.presence_code is not None:
            await _presence_not_locked(session, settings, card, at)
            step = _presence(keyring, settings, card, service.presence_code, used_before[card.id], at)
            card.presence_step = step if card.presence_step is None else max(step, card.presence_step)
        amount = unit_value(card.price, card.units_total, card.units_used, units, card.consumed)
        protected, unprotected = cards.take(card, amount)
        card.units_used += units
        card.consumed += amount
        held.append(
            _Held(
                new_id("csm"),
                card,
                units,
                amount,
                protected,
                cards.release_legs(card, protected, unprotected),
                service.presence_code is not None,
            )
        )
    entries = [
        ledger.Entry(
            h.card.escrow_account_id,
            "consumption",
            h.legs,
            refs={"card_id": h.card.id, "consumption_id": h.id},
            principal=principal.id,
        )
        for h in held
        if h.amount
    ]
    holds = iter(await ledger.post_many(session, entries, pending=True))
    changed = list(by_id.values())
    recorded = await db.fetch(
        session,
        _RECORD,
        [h.id for h in held],
        [h.card.id for h in held],
        [h.card.escrow_account_id for h in held],
        [h.units for h in held],
        [h.amount for h in held],
        [h.protected for h in held],
        [next(holds) if h.amount else None for h in held],  # in order: a service worth nothing holds nothing
        note,
        now + timedelta(seconds=settings.confirmation_window_seconds),
        [c.id for c in changed],
        [c.units_used for c in changed],
        [c.consumed for c in changed],
        [c.protected_out for c in changed],
        [c.presence_step for c in changed],
    )
    by_service = {row["id"]: db.Row(row.items()) for row in recorded}
    confirm_by = now + timedelta(seconds=settings.confirmation_window_seconds)
    await notices.add_many(  # a service confirmed at once by a presence code needs no answer: no notice
        session,
        notices.SERVICE_RECORDED,
        [(h.card.id, {"amount": h.amount, "confirm_by": confirm_by}, h.id) for h in held if not h.present],
    )
    for h in held:
        if h.present:  # the one way a service is confirmed (the cards are ours, and locked already)
            confirmed = await _confirm(
                session, h.id, visible=_ANYONE, viewer=principal.id, by="presence", expected="pending_confirmation"
            )
            assert confirmed is not None  # recorded pending just now, under the card's lock
            by_service[h.id] = confirmed
    return [by_service[h.id] for h in held]  # in the order given (RETURNING promises no order)


_RECENT_FAILURES = "SELECT count(*) FROM presence_failures WHERE card_id = $1 AND at > now() - interval '1 hour'"


async def _presence_not_locked(session: AsyncSession, settings: Settings, card: db.Row, at: str) -> None:
    """Refuse any presence code for a card that took too many wrong ones in the last hour (read only when a code
    is given: services without one cost nothing more)."""
    if await db.fetchval(session, _RECENT_FAILURES, card.id) >= settings.presence_code_failures_per_hour:
        raise PresenceCodeRefused(
            f"{at}presence_code",
            f"too many wrong presence codes for this card in the last hour (at most "
            f"{settings.presence_code_failures_per_hour}); record the service without one and the consumer confirms "
            "it",
            rule="presence_code_locked",
        )


def _presence(keyring: Keyring, settings: Settings, card: db.Row, code: str, used: int | None, at: str) -> int:
    """The time step of the card's presence ``code``, if it is the current or the previous step's code and that
    step is later than the last one accepted for the card before this request (``used``); else refused."""
    field = f"{at}presence_code"
    step = presence.accepted_step(
        keyring.presence_key,
        card.id,
        code,
        presence.now(),
        settings.presence_code_step_seconds,
        settings.presence_code_digits,
    )
    if step is None:
        raise PresenceCodeRefused(
            field,
            "not the card's current presence code (wrong or expired)",
            rule="presence_code",
            keep=[PresenceFailure(card_id=card.id, merchant_id=card.merchant_id)],  # counted though refused
        )
    if used is not None and step <= used:
        raise PresenceCodeRefused(
            field, "this presence code was already used; the consumer shows the next one", rule="presence_code_used"
        )
    return step


def _item(at: str, field: str, message: str, rule: str = "invalid") -> list[dict[str, str]] | None:
    """The ``errors`` of a refusal about one item of a batch (None outside a batch: the detail says it all)."""
    return [{"field": f"{at}{field}", "rule": rule, "message": message}] if at else None


def _units(card: db.Row, service: Service, at: str) -> tuple[int, str]:
    """What a service takes from its locked card: sessions or face value (the card's own state checked first)."""
    if card.status != "active":
        raise cards.CardNotActive(
            f"card {card.id} is {card.status}", errors=_item(at, "card_id", card.status, "card_status")
        )
    if card.kind == "period":
        raise InvalidState(
            "period memberships release day by day on their own; nothing to record",
            errors=_item(at, "card_id", "a period membership", "card_kind"),
        )
    units, field = (service.sessions, "sessions") if card.kind == "sessions" else (service.face_value, "face_value")
    if units is None:
        raise FieldInvalid(f"{at}{field}", f"a service on a {card.kind} card gives {field}")
    if units < 1:
        raise FieldInvalid(f"{at}{field}", "must be at least 1")
    return units, field


def _check(card: db.Row, state: Any, units: int, field: str, at: str, today: date, settings: Settings) -> None:
    """May ``units`` more be taken from this locked card now?"""
    if cards.expired(settings, card.valid_until, today):
        raise cards.CardNotActive(
            f"card {card.id} was valid until {card.valid_until}", errors=_item(at, "card_id", "expired", "valid_until")
        )
    if state["refund_requested"]:
        raise RefundInProgress(
            f"card {card.id} has a refund request open", errors=_item(at, "card_id", "refund requested", "refund_open")
        )
    cards.check_account_status(
        card.id, state["account_status"], _item(at, "card_id", "escrow account not active", "account_status")
    )
    if card.units_used + units > card.units_total:
        left = card.units_total - card.units_used
        raise ExceedsRemaining(
            f"card {card.id} has {left} {field.replace('_', ' ')} left, not {units}",
            errors=[{"field": f"{at}{field}", "rule": "units_left", "message": f"at most {left}"}],
        )


# In one statement: the card's lock first (the fixed order; others' cards are never locked: {visible} is the
# caller's), then — only if the service record is still in the state the confirmation expects ($5), which an
# UPDATE sees as last committed — the record confirmed (with the resolver's note $6, if one) and the release counted
# on the card. No row: not the caller's; NULL ``id``: not in that state.
_CONFIRM = (
    "WITH card AS (SELECT * FROM cards"
    "   WHERE id = (SELECT card_id FROM consumptions WHERE id = $1) AND {visible} FOR NO KEY UPDATE),"
    " confirmed AS (UPDATE consumptions SET status = 'confirmed', resolved_at = $3, resolved_by = $4,"
    "   note = coalesce($6, note)"
    "   WHERE id = $1 AND status = $5 AND card_id = (SELECT id FROM card) RETURNING *),"
    " counted AS (UPDATE cards SET released = cards.released + confirmed.amount FROM confirmed"
    "   WHERE cards.id = confirmed.card_id RETURNING cards.released)"
    " SELECT confirmed.*, card.id AS card_id_locked, card.status AS card_status, card.price AS card_price,"
    "   card.consumed AS card_consumed, card.refunded AS card_refunded, counted.released AS card_released"
    " FROM card LEFT JOIN confirmed ON true LEFT JOIN counted ON true"
)
_ANYONE = "$2::text IS NOT NULL"  # the background jobs see every card


async def _confirm(
    session: AsyncSession,
    consumption_id: str,
    *,
    visible: str,
    viewer: str,
    by: str,
    expected: str,
    note: str | None = None,
) -> db.Row | None:
    """Release a held service to the merchant (entry 2 of domain.md §4) if it is ``expected``-ly held — the one way
    a service is confirmed, by its consumer, by the window passing, or by a dispute's resolution. Returns the
    confirmed record, or None when it is not in that state; 404 when the card is not ``viewer``'s to see."""
    found = await db.one(
        session, _CONFIRM.format(visible=visible), consumption_id, viewer, utcnow(), by, expected, note
    )
    if found is None:
        raise NotFound(f"no service record {consumption_id}")
    if found.id is None:
        return None
    card = db.Row(
        id=found.pop("card_id_locked"), status=found.pop("card_status"), price=found.pop("card_price"),
        consumed=found.pop("card_consumed"), refunded=found.pop("card_refunded"), released=found.pop("card_released"),
    )  # fmt: skip
    if found.hold_entry_id is not None:
        await ledger.post_pending(session, found.hold_entry_id, principal=by, refs={"consumption_id": found.id})
    if mark_exhausted(card):
        await cards.save_row(session, card, "status", "closed_at")
    return found


async def _current(session: AsyncSession, consumption_id: str) -> db.Row:
    consumption = await db.one(session, "SELECT * FROM consumptions WHERE id = $1", consumption_id)
    assert consumption is not None
    return consumption


async def confirm(session: AsyncSession, principal: Principal, consumption_id: str) -> db.Row:
    visible = cards.visible_sql(principal, "$2")
    confirmed = await _confirm(
        session, consumption_id, visible=visible, viewer=principal.id, by="consumer", expected="pending_confirmation"
    )
    if confirmed is not None:
        return confirmed
    consumption = await _current(session, consumption_id)
    if consumption.status == "confirmed":  # confirming again changes nothing
        return consumption
    raise InvalidState(f"service record {consumption.id} is {consumption.status}")


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
    if outcome == "confirm":
        visible = cards.visible_sql(principal, "$2")
        confirmed = await _confirm(
            session, consumption_id, visible=visible, viewer=principal.id, by=principal.id, expected="disputed",
            note=note or None,
        )  # fmt: skip
        if confirmed is not None:
            await _resolved(session, confirmed.card_id, confirmed.id, confirmed.amount, "confirmed")
            return confirmed
        consumption = await _current(session, consumption_id)
        raise InvalidState(f"service record {consumption.id} is {consumption.status}, not disputed")
    card, consumption = await _lock(session, principal, consumption_id)
    if consumption.status != "disputed":
        raise InvalidState(f"service record {consumption.id} is {consumption.status}, not disputed")
    await void(session, card, consumption, principal.id)
    if note:
        consumption.note = note
    await session.flush()
    await _resolved(session, consumption.card_id, consumption.id, consumption.amount, "voided")
    return consumption


async def _resolved(session: AsyncSession, card_id: str, consumption_id: str, amount: int, outcome: str) -> None:
    await notices.add(
        session, notices.DISPUTE_RESOLVED, card_id, {"amount": amount, "outcome": outcome}, consumption_id
    )


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


# How a confirmed service was confirmed (``confirmed_via``), as ``resolved_by`` records it; any other value of
# ``resolved_by`` on a confirmed service is the id of whoever resolved its dispute.
CHANNELS = ("consumer", "presence", "auto", "schedule")


async def list_visible(
    session: AsyncSession,
    principal: Principal,
    *,
    status: str | None,
    card_id: str | None,
    limit: int,
    confirmed_via: str | None = None,
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
    if confirmed_via == "resolution":
        query = query.where(Consumption.status == "confirmed", Consumption.resolved_by.not_in(CHANNELS))
    elif confirmed_via is not None:
        query = query.where(Consumption.status == "confirmed", Consumption.resolved_by == confirmed_via)
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
    due = (
        await session.execute(
            select(Consumption.id, Consumption.card_id)
            .join(EscrowAccount, EscrowAccount.id == Consumption.escrow_account_id)
            .where(
                Consumption.status == "pending_confirmation",
                Consumption.confirm_by <= now,
                EscrowAccount.status == "active",
            )
            .order_by(Consumption.confirm_by)
            .limit(limit)
        )
    ).all()
    if not due:
        return 0
    # Every card of the batch is locked first, in id order, as a class roll locks its cards: a batch that locked
    # them one by one in another order could hold one a roll waits for while waiting for one the roll holds.
    await db.fetch(session, _LOCK_IN_ORDER, sorted({card_id for _, card_id in due}))
    done = []
    for consumption_id, _ in due:
        confirmed = await _confirm(
            session, consumption_id, visible=_ANYONE, viewer="system:auto", by="auto", expected="pending_confirmation"
        )
        if confirmed is not None:  # else answered meanwhile
            done.append((confirmed.card_id, {"amount": confirmed.amount}, confirmed.id))
    await notices.add_many(session, notices.SERVICE_AUTO_CONFIRMED, done)
    return len(done)


_LOCK_IN_ORDER = "SELECT id FROM cards WHERE id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE"


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
