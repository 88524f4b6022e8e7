from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from escrow.kit.body import RequestModel
from escrow.kit.params import ID_MAX_LENGTH, ID_PATTERN

ComplaintCategory = Literal["service_not_delivered", "refund_refused", "closure", "contract_terms", "other"]
ComplaintState = Literal["filed", "answered", "mediated"]
ComplaintOutcome = Literal["upheld", "partly_upheld", "rejected"]
TEXT_MAX = 2000


def _id(what: str, *, required: bool = False):  # type: ignore[no-untyped-def]
    return Field(
        default=... if required else None,
        pattern=ID_PATTERN,
        max_length=ID_MAX_LENGTH,
        description=f"The {what}'s id.",
    )


class ComplaintFiling(RequestModel):
    """A consumer's complaint about a merchant it holds (or held) a card with, optionally about one of its own cards
    there or a service recorded on it."""

    merchant_id: str = _id("merchant", required=True)
    card_id: str | None = _id("card (one of yours at this merchant)")
    consumption_id: str | None = _id("service record (on one of your cards at this merchant)")
    category: ComplaintCategory = Field(
        description="service_not_delivered, refund_refused, closure, contract_terms or other."
    )
    text: str = Field(min_length=1, max_length=TEXT_MAX, description="What happened, in your words.")


class ComplaintAnswer(RequestModel):
    """The merchant's answer to a complaint about it."""

    answer: str = Field(min_length=1, max_length=TEXT_MAX)


class Mediation(RequestModel):
    """The regulator's mediation of a complaint: its outcome and a note the consumer and the merchant read."""

    outcome: ComplaintOutcome = Field(description="upheld, partly_upheld or rejected.")
    note: str = Field(min_length=1, max_length=TEXT_MAX)


class ComplaintOut(BaseModel):
    """A complaint and each of its steps: filed, answered by the merchant (due by answer_due_at), mediated by the
    regulator."""

    id: str
    consumer_id: str
    merchant_id: str
    card_id: str | None
    consumption_id: str | None
    category: ComplaintCategory
    text: str
    state: ComplaintState = Field(description="filed → answered → mediated, or filed → mediated.")
    filed_at: datetime
    answer_due_at: datetime = Field(description="The merchant must answer by then (filed_at + the answer hours).")
    overdue: bool = Field(description="Still unanswered and not mediated past answer_due_at.")
    answer: str | None
    answered_at: datetime | None
    answered_late: bool = Field(description="Answered after answer_due_at.")
    outcome: ComplaintOutcome | None = Field(description="The mediation's outcome, once mediated.")
    mediation_note: str | None
    mediated_at: datetime | None

    @classmethod
    def of(cls, c, now: datetime) -> "ComplaintOut":  # type: ignore[no-untyped-def]
        return cls(
            id=c.id,
            consumer_id=c.consumer_id,
            merchant_id=c.merchant_id,
            card_id=c.card_id,
            consumption_id=c.consumption_id,
            category=c.category,
            text=c.text,
            state=c.state,
            filed_at=c.filed_at,
            answer_due_at=c.answer_due_at,
            overdue=c.state == "filed" and now > c.answer_due_at,
            answer=c.answer,
            answered_at=c.answered_at,
            answered_late=c.answered_at is not None and c.answered_at > c.answer_due_at,
            outcome=c.outcome,
            mediation_note=c.mediation_note,
            mediated_at=c.mediated_at,
        )
