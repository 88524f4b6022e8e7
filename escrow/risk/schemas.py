from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from escrow.kit.body import RequestModel

WarningKind = Literal[
    "sales_surge",
    "deep_discount",
    "service_collapse",
    "unprotected_exposure",
    "refund_rate",
    "dispute_rate",
    "refund_overdue",
    "presence",
    "money_trail",
]
WarningState = Literal["open", "acknowledged", "resolved", "escalated"]


class WarningNote(BaseModel):
    """One step of the regulator's handling of a warning."""

    at: datetime
    by: str = Field(description="The regulator who took the step.")
    action: Literal["acknowledge", "resolve", "escalate"]
    note: str


class WarningOut(BaseModel):
    """An early warning: the signal that crossed its threshold for a merchant, the figures that raised it (as the
    latest run computed them; amounts in fen) and the period they cover, and the regulator's handling."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    merchant_id: str
    kind: WarningKind
    level: Literal["attention", "alert"]
    figures: dict[str, Any] = Field(description="The figures that raised it and the thresholds they crossed.")
    period_start: date
    period_end: date
    state: WarningState
    notes: list[WarningNote]
    runs: int = Field(description="Runs that found the condition (a rerun updates the warning instead of opening one).")
    opened_at: datetime
    last_raised_at: datetime
    updated_at: datetime
    closed_at: datetime | None


class WarningAction(RequestModel):
    """The regulator's note on a step of a warning's handling."""

    note: str = Field(min_length=1, max_length=2000)


class WarningRun(BaseModel):
    """What a run of the signals did: warnings opened and live warnings updated, per signal kind."""

    opened: dict[str, int]
    updated: dict[str, int]


class WarningSummaryRow(BaseModel):
    """Live warnings (open, acknowledged, escalated) of one merchant category, region, kind and level."""

    category: str
    region: str | None = Field(description="County-level division code; null for merchants without a region.")
    kind: WarningKind
    level: Literal["attention", "alert"]
    warnings: int
