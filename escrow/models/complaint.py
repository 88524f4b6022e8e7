"""Complaints (投诉): a consumer's complaint about a merchant, the merchant's answer and the regulator's mediation."""

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from escrow.models.base import Base

COMPLAINT_CATEGORIES = ("service_not_delivered", "refund_refused", "closure", "contract_terms", "other")
COMPLAINT_STATES = ("filed", "answered", "mediated")
COMPLAINT_OUTCOMES = ("upheld", "partly_upheld", "rejected")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Complaint(Base):
    """One complaint: ``filed → answered → mediated`` (or ``filed → mediated``). The merchant must answer by
    ``answer_due_at`` (filed_at + ``complaint_answer_hours``); a ``filed`` one past it is overdue, one answered
    after it was answered late. Kept flat (merchant, category, state, outcome, times) so that warnings and grades
    can count them with one query."""

    __tablename__ = "complaints"
    __table_args__ = (
        CheckConstraint(_in("category", COMPLAINT_CATEGORIES), name="category"),
        CheckConstraint(_in("state", COMPLAINT_STATES), name="state"),
        CheckConstraint(f"outcome IS NULL OR {_in('outcome', COMPLAINT_OUTCOMES)}", name="outcome"),
        CheckConstraint("(state = 'mediated') = (outcome IS NOT NULL AND mediated_at IS NOT NULL)", name="mediated"),
        CheckConstraint("(answered_at IS NULL) = (answer IS NULL)", name="answered"),
        CheckConstraint("state <> 'answered' OR answered_at IS NOT NULL", name="answered_state"),
        Index("ix_complaints_merchant_filed", "merchant_id", "filed_at"),
        Index("ix_complaints_consumer", "consumer_id", "id"),
        Index("ix_complaints_overdue", "answer_due_at", postgresql_where=text("state = 'filed'")),
        Index("ix_complaints_outcome", "merchant_id", "mediated_at", postgresql_where=text("outcome IS NOT NULL")),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    consumer_id: Mapped[str] = mapped_column(ForeignKey("consumers.id"))
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"))
    card_id: Mapped[str | None] = mapped_column(ForeignKey("cards.id"))
    consumption_id: Mapped[str | None] = mapped_column(ForeignKey("consumptions.id"))
    category: Mapped[str] = mapped_column(String(30))
    text: Mapped[str] = mapped_column(String(2000))
    state: Mapped[str] = mapped_column(String(20), server_default="filed")
    filed_at: Mapped[datetime]
    answer_due_at: Mapped[datetime]
    answer: Mapped[str | None] = mapped_column(String(2000))
    answered_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(20))
    mediation_note: Mapped[str | None] = mapped_column(String(2000))
    mediated_at: Mapped[datetime | None]
    mediated_by: Mapped[str | None] = mapped_column(String(40))
