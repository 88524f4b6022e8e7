from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, StrictInt

from escrow.errors import FieldInvalid
from escrow.kit.body import RequestModel
from escrow.kit.money import Money


class PlanCreate(RequestModel):
    """A plan to sell: exactly one of `sessions`, `face_value` or `days`, as its kind requires."""

    name: str = Field(min_length=1, max_length=200, examples=["20 personal-training sessions"])
    kind: Literal["sessions", "stored_value", "period"]
    price: Money = Field(description="What the consumer pays.")
    sessions: StrictInt | None = Field(default=None, ge=1, le=100_000, description="sessions plans: how many.")
    face_value: Money | None = Field(default=None, description="stored_value plans: value spendable, ≥ price.")
    days: StrictInt | None = Field(default=None, ge=1, le=3650, description="period plans: days of unlimited use.")
    list_price_per_session: Money | None = Field(
        default=None,
        description="sessions plans: the single-session list price, used to price delivered sessions when the "
        "consumer ends the card early (defaults to the card's own price per session).",
    )
    validity_days: StrictInt = Field(ge=1, le=3650, description="Days the card may be used from payment.")
    terms: str = Field(default="", max_length=4000, description="Terms shown to the consumer.")


def check_fields(plan: PlanCreate) -> None:
    """Cross-field rules of a plan, each refused with the field it is about."""
    wanted = {"sessions": "sessions", "stored_value": "face_value", "period": "days"}[plan.kind]
    for name in ("sessions", "face_value", "days"):
        given = getattr(plan, name) is not None
        if name == wanted and not given:
            raise FieldInvalid(name, f"{plan.kind} plans need {name}")
        if name != wanted and given:
            raise FieldInvalid(name, f"is not a field of {plan.kind} plans")
    if plan.price.amount < 1:
        raise FieldInvalid("price", "must be at least 1 fen")
    if plan.face_value is not None and plan.face_value.amount < plan.price.amount:
        raise FieldInvalid("face_value", "must be at least the price (gifted credit comes on top, never below)")
    if plan.sessions is not None and plan.price.amount < plan.sessions:
        raise FieldInvalid("price", "must be at least 1 fen per session")
    if plan.days is not None and plan.price.amount < plan.days:
        raise FieldInvalid("price", "must be at least 1 fen per day")
    if plan.list_price_per_session is not None:
        if plan.kind != "sessions":
            raise FieldInvalid("list_price_per_session", "belongs to sessions plans")
        if plan.list_price_per_session.amount * (plan.sessions or 1) < plan.price.amount:
            raise FieldInvalid("list_price_per_session", "can't be below the card's own price per session")


class PlanOut(BaseModel):
    """A plan a merchant sells; immutable once sold (a price change makes a new plan)."""

    id: str
    merchant_id: str
    name: str
    kind: str
    price: Money
    sessions: int | None
    face_value: Money | None
    days: int | None
    list_price_per_session: Money | None
    validity_days: int
    terms: str
    active: bool
    created_at: datetime

    @classmethod
    def of(cls, plan) -> "PlanOut":  # type: ignore[no-untyped-def]
        return cls(
            id=plan.id,
            merchant_id=plan.merchant_id,
            name=plan.name,
            kind=plan.kind,
            price=Money(amount=plan.price),
            sessions=plan.units if plan.kind == "sessions" else None,
            face_value=Money(amount=plan.units) if plan.kind == "stored_value" else None,
            days=plan.units if plan.kind == "period" else None,
            list_price_per_session=Money(amount=plan.list_unit_price) if plan.list_unit_price else None,
            validity_days=plan.validity_days,
            terms=plan.terms,
            active=plan.active,
            created_at=plan.created_at,
        )
