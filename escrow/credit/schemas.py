from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from escrow.kit.body import RequestModel

Grade = Literal["A", "B", "C", "D"]
PenaltyKind = Literal["warning", "fine", "confiscation", "suspension", "licence_revoked", "other"]


class PenaltyCreate(RequestModel):
    """An administrative penalty (行政处罚) the regulator decided against the merchant."""

    kind: PenaltyKind
    decided_on: date = Field(description="Date of the decision (not in the future).")
    decision_number: str = Field(min_length=1, max_length=100, examples=["深市监罚(2026)118号"])
    major: bool = Field(description="A major penalty: counts heavier in the grade and keeps it off the white list.")
    note: str | None = Field(default=None, max_length=2000)


class PenaltyOut(BaseModel):
    """A penalty the regulator recorded against a merchant."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    merchant_id: str
    kind: PenaltyKind
    decided_on: date
    decision_number: str
    major: bool
    note: str | None
    recorded_by: str
    recorded_at: datetime


class OverrideCreate(RequestModel):
    """The regulator's grade for a merchant, with its reason (kept in the audit trail), until it lapses."""

    grade: Grade
    reason: str = Field(min_length=1, max_length=1000)
    lapses_on: date = Field(description="First day the override no longer holds (after today).")


class OverrideOut(BaseModel):
    """A grade the regulator set by hand: the effective grade until the day before ``lapses_on``."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    grade: Grade
    reason: str
    lapses_on: date
    set_by: str
    set_at: datetime


class FactorOut(BaseModel):
    """One factor of a computed grade: its count, the weight of one and the points it moved the score by
    (negative: taken off)."""

    factor: str
    count: int
    weight: int
    points: int


class ComputedGrade(BaseModel):
    """The latest computed grade: score 0 to 100 and every factor."""

    grade: Grade
    score: int
    computed_at: datetime
    factors: list[FactorOut]


class WhiteListReason(BaseModel):
    """Why a merchant is not on the white list."""

    reason: Literal[
        "grade_not_a", "major_penalty", "overdue_refund", "money_complaint", "closure", "credit_repair", "not_graded"
    ]
    description: str


class WhiteListOut(BaseModel):
    """White-list (无事不扰) status as read now, and why not."""

    on_list: bool
    reasons: list[WhiteListReason] = Field(description="Why not; empty when on the list.")
    last_break_on: date | None = Field(description="The latest day a white-list condition was broken.")
    repair_until: date | None = Field(description="While the credit-repair period keeps it off: the day it ends.")


class CreditOut(BaseModel):
    """A merchant's credit: the effective grade (an override's while it holds, else the computed one, else the
    rating given at onboarding), the latest computation, the override and the white-list status."""

    merchant_id: str
    grade: Grade = Field(description="The effective grade; it sets the custody ratio of new sales on the ratio model.")
    computed: ComputedGrade | None = Field(description="The latest computed grade; null before the first run.")
    override: OverrideOut | None = Field(description="The override holding now, if any.")
    white_list: WhiteListOut


class CreditRunOut(BaseModel):
    """What a grading run did: merchants graded, by computed grade, effective ratings changed, white-listed."""

    computed_at: datetime
    merchants: int
    by_grade: dict[str, int]
    ratings_changed: int
    white_list: int


class WhiteListEntry(BaseModel):
    """A merchant on the white list, for the off-site inspection plan."""

    merchant_id: str
    name: str
    category: str
    region: str | None
    grade: Grade
    score: int | None = Field(description="Score of the latest computed grade (null: graded by override only).")
    computed_at: datetime | None
