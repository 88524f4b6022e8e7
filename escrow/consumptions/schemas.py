from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field, StrictInt

from escrow.kit.body import RequestModel
from escrow.kit.money import Money


class ConsumptionCreate(RequestModel):
    sessions: StrictInt | None = Field(default=None, ge=1, le=100_000, description="Sessions cards: sessions used.")
    face_value: Money | None = Field(default=None, description="Stored-value cards: face value spent.")
    note: str | None = Field(default=None, max_length=500, examples=["Spin class 19:00"])


MAX_BATCH = 200  # services per batch: a class, a lesson, a day's appointments


class ServiceRendered(RequestModel):
    card_id: str = Field(min_length=1, max_length=40)
    sessions: StrictInt | None = Field(default=None, ge=1, le=100_000, description="Sessions cards: sessions used.")
    face_value: Money | None = Field(default=None, description="Stored-value cards: face value spent.")


class ConsumptionBatch(RequestModel):
    """Services rendered to many cards at once — a class, a lesson — recorded all together or not at all."""

    services: list[ServiceRendered] = Field(min_length=1, max_length=MAX_BATCH)
    note: str | None = Field(default=None, max_length=500, examples=["Yoga class, Tuesday 19:00"])


class Dispute(RequestModel):
    reason: str = Field(min_length=1, max_length=500)


class DisputeResolution(RequestModel):
    outcome: Literal["confirm", "void"]
    note: str | None = Field(default=None, max_length=500)


class ConsumptionOut(BaseModel):
    id: str
    card_id: str
    units: int
    value: Money = Field(description="What the service is worth out of the card's price.")
    protected: Money = Field(description="The custodied part of that value.")
    status: str
    note: str | None
    service_date: date | None
    recorded_at: datetime
    confirm_by: datetime | None
    resolved_at: datetime | None
    resolved_by: str | None
    dispute_reason: str | None

    @classmethod
    def of(cls, c) -> "ConsumptionOut":  # type: ignore[no-untyped-def]
        return cls(
            id=c.id,
            card_id=c.card_id,
            units=c.units,
            value=Money(amount=c.amount),
            protected=Money(amount=c.protected_amount),
            status=c.status,
            note=c.note,
            service_date=c.service_date,
            recorded_at=c.recorded_at,
            confirm_by=c.confirm_by,
            resolved_at=c.resolved_at,
            resolved_by=c.resolved_by,
            dispute_reason=c.dispute_reason,
        )


class ConsumptionBatchOut(BaseModel):
    consumptions: list[ConsumptionOut] = Field(description="One per service, in the order given.")
