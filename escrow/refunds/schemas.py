from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

from escrow.kit.money import Money


class RefundQuote(BaseModel):
    card_id: str
    cause: str = Field(description="cooling_off when it applies, else the cause asked for.")
    paid: Money
    delivered_units: int
    delivered_value: Money = Field(description="What was delivered, at the card's own price.")
    delivered_value_charged: Money = Field(description="What the refund charges for it (list price if you ended it).")
    remaining: Money
    amount: Money = Field(description="What you get back. Confirm it by sending it as expected_amount.")
    retained: Money = Field(description="Of the remaining value, what goes to the merchant for delivered value.")
    rule: str


class RefundRequest(BaseModel):
    cause: Literal["consumer", "merchant"] = Field(
        default="consumer",
        description="consumer: you end the card (approved at once); merchant: the merchant failed you (approved by "
        "the merchant or the regulator). Within cooling-off either gives the whole price.",
    )
    expected_amount: Money = Field(description="The amount of the quote you accept.")
    reason: str | None = Field(default=None, max_length=500)


class Rejection(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


class RefundOut(BaseModel):
    id: str
    card_id: str
    consumer_id: str
    cause: str
    status: str = Field(
        description="requested → approved → instructed → paid, or rejected. Approval and the bank instruction are "
        "made in one transaction, so a refund approved now (the consumer's own, or by approve) is answered as "
        "instructed, its approval shown by approved_at; approved is seen only while a refund waits to be "
        "instructed again after its instruction failed. paid: the bank executed it (at once when the bank has "
        "nothing to move)."
    )
    amount: Money
    from_custody: Money = Field(description="Paid by the bank out of the escrow account.")
    set_off: Money = Field(description="Unprotected part paid out of the merchant's released money.")
    from_fund: Money = Field(
        description="Closure refunds: paid by the first-compensation fund (now, or when it has money again); the "
        "fund holds that claim on the merchant."
    )
    merchant_owes: Money = Field(
        description="Unprotected part the merchant still owes you (not what the fund pays: that is its claim)."
    )
    retained: Money
    computation: dict
    reason: str | None
    requested_at: datetime
    approved_at: datetime | None
    due_on: date | None
    paid_at: datetime | None

    @classmethod
    def of(cls, r) -> "RefundOut":  # type: ignore[no-untyped-def]
        return cls(
            id=r.id,
            card_id=r.card_id,
            consumer_id=r.consumer_id,
            cause=r.cause,
            status=r.status,
            amount=Money(amount=r.amount),
            from_custody=Money(amount=r.from_custody),
            set_off=Money(amount=r.set_off),
            from_fund=Money(amount=r.from_fund),
            merchant_owes=Money(amount=r.merchant_owes),
            retained=Money(amount=r.retained),
            computation=r.computation,
            reason=r.reason,
            requested_at=r.requested_at,
            approved_at=r.approved_at,
            due_on=r.due_on,
            paid_at=r.paid_at,
        )
