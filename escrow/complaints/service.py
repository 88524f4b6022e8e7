"""Complaints (投诉, issue #14 §3): a consumer complains about a merchant, the merchant answers within
``complaint_answer_hours`` (24 by default), the regulator mediates (upheld, partly upheld, rejected).

- Who may complain about whom: a consumer only about a merchant it holds or held a card with — any card of theirs
  there, in any state (awaiting payment, active, ended, refunded, transferred to a successor). The service only
  knows a consumer through its cards, and this keeps the complaints a merchant is graded on to its own customers.
  A complaint may name one of the consumer's own cards at that merchant and a service recorded on it.
- States: ``filed → answered → mediated``, or ``filed → mediated`` (the regulator need not wait for the answer).
  The merchant answers once, late or not; an answer after ``answer_due_at`` is kept and shown as late.
- Who sees what: a consumer its own complaints, a merchant those about it, the regulator all; others' are 404.

Every function takes ``now`` (the request's clock by default) so that tests can move time; nothing here commits.
"""

from datetime import datetime, timedelta

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.auth.tokens import Principal
from escrow.config import Settings
from escrow.errors import Conflict, FieldInvalid, NotFound
from escrow.kit.clock import utcnow
from escrow.kit.ids import new_id
from escrow.kit.pagination import decode_cursor
from escrow.models import Card, Complaint, Consumption, Merchant


class InvalidState(Conflict):
    code = "invalid_state"
    title = "Not possible in the complaint's state"


def visible(query, principal: Principal):  # type: ignore[no-untyped-def]
    """Narrow a query on complaints to what the principal may see."""
    if principal.role == "consumer":
        return query.where(Complaint.consumer_id == principal.id)
    if principal.role == "merchant":
        return query.where(Complaint.merchant_id == principal.id)
    if principal.role == "regulator":
        return query
    return query.where(False)


async def get(session: AsyncSession, principal: Principal, complaint_id: str, *, lock: bool = False) -> Complaint:
    query = visible(select(Complaint).where(Complaint.id == complaint_id), principal)
    if lock:
        query = query.with_for_update()
    complaint = await session.scalar(query)
    if complaint is None:
        raise NotFound(f"No complaint {complaint_id}.")
    return complaint


async def file(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    *,
    merchant_id: str,
    card_id: str | None,
    consumption_id: str | None,
    category: str,
    text: str,
    now: datetime | None = None,
) -> Complaint:
    """A consumer's complaint about a merchant it holds or held a card with (422 otherwise, naming the field)."""
    now = now or utcnow()
    if await session.get(Merchant, merchant_id) is None:
        raise FieldInvalid("merchant_id", "no such merchant", rule="merchant_exists")
    mine = select(Card.id).where(Card.consumer_id == principal.id, Card.merchant_id == merchant_id)
    if not await session.scalar(select(exists(mine))):
        raise FieldInvalid(
            "merchant_id", "you can complain only about a merchant you hold or held a card with", rule="card_holder"
        )
    if consumption_id is not None:
        on_card = await session.scalar(
            select(Consumption.card_id)
            .join(Card, Card.id == Consumption.card_id)
            .where(Consumption.id == consumption_id, Card.consumer_id == principal.id, Card.merchant_id == merchant_id)
        )
        if on_card is None:
            raise FieldInvalid(
                "consumption_id", "is not a service on one of your cards at this merchant", rule="own_service"
            )
        if card_id is not None and card_id != on_card:
            raise FieldInvalid("consumption_id", "is not a service on the card named", rule="own_service")
        card_id = on_card
    elif card_id is not None and not await session.scalar(select(exists(mine.where(Card.id == card_id)))):
        raise FieldInvalid("card_id", "is not one of your cards at this merchant", rule="own_card")
    complaint = Complaint(
        id=new_id("cpl"),
        consumer_id=principal.id,
        merchant_id=merchant_id,
        card_id=card_id,
        consumption_id=consumption_id,
        category=category,
        text=text,
        state="filed",
        filed_at=now,
        answer_due_at=now + timedelta(hours=settings.complaint_answer_hours),
    )
    session.add(complaint)
    await session.flush()
    return complaint


async def answer(
    session: AsyncSession, principal: Principal, complaint_id: str, text: str, now: datetime | None = None
) -> Complaint:
    """The merchant's one answer to a complaint about it (late or not); 409 ``invalid_state`` unless ``filed``."""
    complaint = await get(session, principal, complaint_id, lock=True)
    if complaint.state != "filed":
        raise InvalidState(f"The complaint is {complaint.state}: it can be answered only while filed.")
    complaint.state, complaint.answer, complaint.answered_at = "answered", text, now or utcnow()
    await session.flush()
    return complaint


async def mediate(
    session: AsyncSession,
    principal: Principal,
    complaint_id: str,
    outcome: str,
    note: str,
    now: datetime | None = None,
) -> Complaint:
    """The regulator's mediation, answered or not; 409 ``invalid_state`` once mediated."""
    complaint = await get(session, principal, complaint_id, lock=True)
    if complaint.state == "mediated":
        raise InvalidState("The complaint is already mediated.")
    complaint.state, complaint.outcome, complaint.mediation_note = "mediated", outcome, note
    complaint.mediated_at, complaint.mediated_by = now or utcnow(), principal.id
    await session.flush()
    return complaint


async def list_visible(
    session: AsyncSession,
    principal: Principal,
    *,
    state: str | None,
    merchant_id: str | None,
    overdue: bool,
    cursor: str | None,
    limit: int,
    now: datetime | None = None,
) -> list[Complaint]:
    """Up to ``limit + 1`` complaints in id (filing) order after the cursor's; ``overdue``: filed, unanswered
    and past their answer deadline."""
    query = visible(select(Complaint), principal).order_by(Complaint.id).limit(limit + 1)
    after = decode_cursor(cursor)
    if after is not None:
        query = query.where(Complaint.id > after)
    if state is not None:
        query = query.where(Complaint.state == state)
    if merchant_id is not None:
        query = query.where(Complaint.merchant_id == merchant_id)
    if overdue:
        query = query.where(Complaint.state == "filed", Complaint.answer_due_at < (now or utcnow()))
    return list(await session.scalars(query))
