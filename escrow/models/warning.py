"""Early warnings (issue #14 §1): a signal computed from the ledger and the cards that crossed its threshold for a
merchant, kept with the figures that raised it and the regulator's handling."""

from datetime import date, datetime

from sqlalchemy import CheckConstraint, Date, ForeignKey, Index, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from escrow.models.base import Base
from escrow.models.party import _in

WARNING_KINDS = (
    "sales_surge",
    "deep_discount",
    "service_collapse",
    "unprotected_exposure",
    "refund_rate",
    "dispute_rate",
    "refund_overdue",
    "presence",
    "money_trail",
)
WARNING_LEVELS = ("attention", "alert")
WARNING_STATES = ("open", "acknowledged", "resolved", "escalated")
# states in which a warning is still live: the same condition on the next run updates it instead of opening another
LIVE_STATES = ("open", "acknowledged", "escalated")


class RiskWarning(Base):
    __tablename__ = "warnings"
    __table_args__ = (
        CheckConstraint(_in("kind", WARNING_KINDS), name="kind"),
        CheckConstraint(_in("level", WARNING_LEVELS), name="level"),
        CheckConstraint(_in("state", WARNING_STATES), name="state"),
        CheckConstraint("period_start <= period_end", name="period"),
        Index(
            "uq_warnings_live_per_merchant_kind",
            "merchant_id",
            "kind",
            unique=True,
            postgresql_where=text("state IN ('open', 'acknowledged', 'escalated')"),
        ),
        Index("ix_warnings_state_kind", "state", "kind"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), index=True)
    kind: Mapped[str] = mapped_column(String(30))
    level: Mapped[str] = mapped_column(String(10))
    figures: Mapped[dict] = mapped_column(JSONB)  # what raised it, as the last run computed it
    period_start: Mapped[date] = mapped_column(Date)
    period_end: Mapped[date] = mapped_column(Date)
    state: Mapped[str] = mapped_column(String(12), server_default="open")
    # [{"at", "by", "action", "note"}], oldest first: the regulator's handling
    notes: Mapped[list] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    runs: Mapped[int] = mapped_column(server_default="1")  # runs that found the condition
    opened_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    last_raised_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    updated_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    closed_at: Mapped[datetime | None]
    closing_note: Mapped[str | None] = mapped_column(Text)
