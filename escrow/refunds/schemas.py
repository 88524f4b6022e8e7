from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

from escrow.kit.body import RequestModel
from escrow.kit.money import Money


class RefundQuote(BaseModel):
    """What a refund of the card would pay now, and how it is computed; request it by quoting `amount` as
    `expected_amount`.
    """

    card_id: str
    cause: str = Field(description="cooling_off when it applies, else the cause asked for.")
    paid: Money = Field(description="The card's price.")
    delivered_units: int = Field(description="Units delivered so far: sessions, fen of face value, or membership days.")
    delivered_value: Money = Field(description="What was delivered, at the card's own price.")
    delivered_value_charged: Money = Field(description="What the refund charges for it (list price if you ended it).")
    remaining: Money = Field(description="Unused value: the price less what was delivered and refunded.")
    amount: Money = Field(description="What you get back. Confirm it by sending it as expected_amount.")
    retained: Money = Field(description="Of the remaining value, what goes to the merchant for delivered value.")
    rule: str = Field(description="The rule that computed amount, in words.")


class RefundRequest(RequestModel):
    """A consumer's request to refund a card at the quoted amount."""

    cause: Literal["consumer", "merchant"] = Field(
        default="consumer",
        description="consumer: you end the card (approved at once); merchant: the merchant failed you (approved by "
        "the merchant or the regulator). Within cooling-off either gives the whole price.",
    )
    expected_amount: Money = Field(description="The amount of the quote you accept.")
    reason: str | None = Field(default=None, max_length=500)


class Rejection(RequestModel):
    """Why the claim that the merchant caused the refund is rejected."""

    reason: str = Field(min_length=1, max_length=500)


class RefundOut(BaseModel):
    """A refund of a card's unused value: how much, how it is paid (from custody, by set-off, or left as the merchant's
    debt) and where it stands.
    """

    id: str
    card_id: str
    consumer_id: str
    cause: str = Field(
        description="consumer (the consumer ended the card), merchant (the merchant caused it), cooling_off, or "
        "expiry (the card expired with value left)."
    )
    status: str = Field(
        description="requested → approved → instructed → paid, or rejected. Approval and the bank instruction are "
        "made in one transaction, so a refund approved now (the consumer's own, or by approve) is answered as "
        "instructed, its approval shown by approved_at; approved is seen only while a refund waits to be "
        "instructed again after its instruction failed. paid: the bank executed it (at once when the bank has "
        "nothing to move)."
    )
    amount: Money = Field(description="The refund: from_custody + set_off + from_fund + merchant_owes.")
    from_custody: Money = Field(description="Paid by the bank out of the escrow account.")
    set_off: Money = Field(description="Unprotected part paid out of the merchant's released money.")
    from_fund: Money = Field(
        description="Closure refunds: paid by the first-compensation fund (now, or when it has money again); the "
        "fund holds that claim on the merchant."
    )
    merchant_owes: Money = Field(
        description="Unprotected part the merchant still owes you (not what the fund pays: that is its claim)."
    )
    retained: Money = Field(
        description="Of the unused value, what was released to the merchant for delivered value instead."
    )
    computation: dict = Field(description="The quote the refund was made from.")
    reason: str | None = Field(description="The consumer's reason, or the rejection's.")
    requested_at: datetime
    approved_at: datetime | None
    due_on: date | None = Field(
        description="The day the bank must have paid by (5 days after approval for cooling-off, else 15, by default)."
    )
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
