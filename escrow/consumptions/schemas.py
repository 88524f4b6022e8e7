from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, StrictInt, StrictStr

from escrow.kit.body import RequestModel
from escrow.kit.money import Money


def _presence_code() -> Any:
    return Field(
        default=None,
        pattern=r"^[0-9]+$",
        min_length=1,
        max_length=8,
        description="The consumer's presence code (GET /v1/cards/{card_id}/presence-code), shown at the counter: "
        "the service is confirmed at once and its value released to the merchant. A wrong, expired or already used "
        "code is refused (422, rule `presence_code` or `presence_code_used`) and nothing is recorded. Without it the "
        "service awaits the consumer's confirmation.",
        examples=["482913"],
    )


class ConsumptionCreate(RequestModel):
    """A service rendered on one card: sessions for a sessions card, face value for a stored-value card."""

    sessions: StrictInt | None = Field(default=None, ge=1, le=100_000, description="Sessions cards: sessions used.")
    face_value: Money | None = Field(default=None, description="Stored-value cards: face value spent.")
    note: str | None = Field(default=None, max_length=500, examples=["Spin class 19:00"])
    presence_code: StrictStr | None = _presence_code()


MAX_BATCH = 200  # services per batch: a class, a lesson, a day's appointments


class ServiceRendered(RequestModel):
    """One service of a batch: the card, and sessions or face value as its kind requires."""

    card_id: str = Field(min_length=1, max_length=40)
    sessions: StrictInt | None = Field(default=None, ge=1, le=100_000, description="Sessions cards: sessions used.")
    face_value: Money | None = Field(default=None, description="Stored-value cards: face value spent.")
    presence_code: StrictStr | None = _presence_code()


class ConsumptionBatch(RequestModel):
    """Services rendered to many cards at once — a class, a lesson — recorded all together or not at all."""

    services: list[ServiceRendered] = Field(min_length=1, max_length=MAX_BATCH)
    note: str | None = Field(default=None, max_length=500, examples=["Yoga class, Tuesday 19:00"])


class Dispute(RequestModel):
    """The consumer's reason for disputing a service."""

    reason: str = Field(min_length=1, max_length=500)


class DisputeResolution(RequestModel):
    """How a disputed service is settled: it stands (confirm) or is taken back (void)."""

    outcome: Literal["confirm", "void"] = Field(
        description="confirm: the service stands and its value is released; void: it is taken back and the card gets "
        "its value back."
    )
    note: str | None = Field(default=None, max_length=500, description="Kept with the service record.")


class ConsumptionOut(BaseModel):
    """A service the merchant recorded on a card, and where it stands."""

    id: str
    card_id: str
    units: int = Field(description="Units the service took: sessions, fen of face value, or days (period memberships).")
    value: Money = Field(description="What the service is worth out of the card's price.")
    protected: Money = Field(description="The custodied part of that value.")
    status: str = Field(
        description="pending_confirmation (value held; the consumer may confirm or dispute); confirmed (value "
        "released to the merchant); disputed (held until resolved); voided (taken back, value returned to the card)."
    )
    note: str | None
    service_date: date | None = Field(
        description="Period memberships: the day this record released (they release day by day on their own)."
    )
    recorded_at: datetime
    confirm_by: datetime | None = Field(
        description="When it confirms itself unless the consumer confirms or disputes it first."
    )
    resolved_at: datetime | None
    resolved_by: str | None = Field(
        description="Who settled it: `consumer`, `presence` (confirmed at the counter by the consumer's presence "
        "code), `auto` (the confirmation window passed), `schedule` (a period membership's day), or the id of the "
        "merchant or regulator who resolved the dispute."
    )
    dispute_reason: str | None = Field(description="The consumer's reason, when disputed.")

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
    """The services recorded by one batch."""

    consumptions: list[ConsumptionOut] = Field(description="One per service, in the order given.")
