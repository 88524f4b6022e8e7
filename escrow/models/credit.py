"""Credit grades (issue #14 §2): the regulator's penalties, each computed grade kept as history, and overrides."""

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from escrow.models.base import Base
from escrow.models.party import CREDIT_RATINGS, _in

PENALTY_KINDS = ("warning", "fine", "confiscation", "suspension", "licence_revoked", "other")


class Penalty(Base):
    """An administrative penalty (行政处罚) the regulator decided against a merchant, as recorded by it."""

    __tablename__ = "penalties"
    __table_args__ = (
        CheckConstraint(_in("kind", PENALTY_KINDS), name="kind"),
        UniqueConstraint("merchant_id", "decision_number", name="uq_penalties_merchant_decision"),
        Index("ix_penalties_merchant_decided", "merchant_id", "decided_on"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"))
    kind: Mapped[str] = mapped_column(String(20))
    decided_on: Mapped[date] = mapped_column(Date)
    decision_number: Mapped[str] = mapped_column(String(100))
    major: Mapped[bool] = mapped_column(Boolean)
    note: Mapped[str | None] = mapped_column(Text)
    recorded_by: Mapped[str] = mapped_column(String(40))
    recorded_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class CreditGrade(Base):
    """One computation of a merchant's grade: the computed grade with its score and every factor (count, weight,
    points), the effective grade then (an override's while it held), and the white-list status then."""

    __tablename__ = "credit_grades"
    __table_args__ = (
        CheckConstraint(_in("grade", CREDIT_RATINGS), name="grade"),
        CheckConstraint(_in("effective_grade", CREDIT_RATINGS), name="effective_grade"),
        CheckConstraint("score BETWEEN 0 AND 100", name="score"),
        Index("ix_credit_grades_merchant_computed", "merchant_id", "computed_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"))
    computed_at: Mapped[datetime]
    grade: Mapped[str] = mapped_column(String(1))
    score: Mapped[int]
    factors: Mapped[list] = mapped_column(JSONB)  # [{"factor", "count", "weight", "points"}]
    effective_grade: Mapped[str] = mapped_column(String(1))
    white_list: Mapped[bool] = mapped_column(Boolean)
    white_list_reasons: Mapped[list] = mapped_column(JSONB)  # why not, [] when on it


class CreditOverride(Base):
    """The regulator's grade for a merchant with its reason, holding until ``lapses_on`` (exclusive): the effective
    grade from ``set_at`` to the day before ``lapses_on``; the latest one set wins. ``lapsed_at``: when a run or the
    lapse job put the computed grade back on the merchant."""

    __tablename__ = "credit_overrides"
    __table_args__ = (
        CheckConstraint(_in("grade", CREDIT_RATINGS), name="grade"),
        CheckConstraint(_in("previous_rating", CREDIT_RATINGS), name="previous_rating"),
        Index("ix_credit_overrides_merchant_set", "merchant_id", "set_at"),
        Index("ix_credit_overrides_lapsing", "lapses_on", postgresql_where=text("lapsed_at IS NULL")),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"))
    grade: Mapped[str] = mapped_column(String(1))
    reason: Mapped[str] = mapped_column(String(1000))
    lapses_on: Mapped[date] = mapped_column(Date)
    previous_rating: Mapped[str] = mapped_column(String(1))  # the rating before it, put back if nothing was computed
    set_by: Mapped[str] = mapped_column(String(40))
    set_at: Mapped[datetime]
    lapsed_at: Mapped[datetime | None]
