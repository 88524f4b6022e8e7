from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

from escrow.kit.money import Money


class ClosureCreate(BaseModel):
    merchant_id: str | None = Field(default=None, description="Regulator only: the merchant to close.")
    effective_on: date | None = Field(
        default=None,
        description="Business date the freeze takes effect. A merchant must give at least closure_notice_days' "
        "notice; the regulator may leave it out to freeze at once (the merchant vanished).",
    )
    reason: str = Field(min_length=1, max_length=500)


class TakeoverProposal(BaseModel):
    successor_merchant_id: str = Field(min_length=1, max_length=40)
    deadline: datetime = Field(description="Consumers who have not answered by then are refunded.")


class TakeoverAnswer(BaseModel):
    decision: Literal["accept", "decline"]


class TakeoverDecisionOut(BaseModel):
    closure_id: str
    card_id: str
    decision: str
    decided_at: datetime


class SettlementTotals(BaseModel):
    items: int
    done: int
    unused: Money = Field(description="Consumers' unused value (and earlier claims) the closure settles.")
    from_custody: Money
    set_off: Money = Field(description="Paid out of the merchant's unpaid merchant_payable.")
    fund_paid: Money
    fund_owed: Money = Field(description="The fund's share it could not pay yet (paid when money comes in).")
    fund_owed_paid: Money
    unpaid: Money = Field(description="Beyond the fund's cap: consumers' remaining claims on the merchant.")
    transferred: Money = Field(description="Custodied funds moved to the successor with the cards taken over.")
    assumed: Money = Field(description="Value outside custody the successor took over with those cards.")


class ClosureOut(BaseModel):
    id: str
    merchant_id: str
    mode: str
    status: str
    reason: str
    effective_on: date
    announced_at: datetime
    frozen_at: datetime | None
    planned_at: datetime | None
    settling_at: datetime | None
    settled_at: datetime | None
    confirmed_at: datetime | None
    successor_merchant_id: str | None
    takeover_deadline: datetime | None
    progress: dict[str, int] = Field(description="Settlement items done / total.")
    totals: SettlementTotals | None = None


class ItemOut(BaseModel):
    id: int = Field(
        description="The item's id: the closure_item_id of the instructions that pay it. A line keeps its id when the "
        "plan is computed again (starting the settlement does, to fix the fund's share)."
    )
    seq: int
    kind: str = Field(description="card: a card's unused value; claim: an earlier refund the merchant still owed.")
    decision: str
    status: str
    escrow_account_id: str
    consumer_id: str
    card_id: str | None
    refund_id: str | None
    new_card_id: str | None
    unused: Money
    from_custody: Money
    set_off: Money
    fund_paid: Money
    fund_owed: Money
    fund_owed_paid: Money
    unpaid: Money
    transferred: Money
    assumed: Money
    done_at: datetime | None = Field(description="When the settlement made its movements and instructions.")
    paid_at: datetime | None = Field(
        description="When every part the banks were told to pay for it (custody, set-off, the fund's payments, a "
        "transfer) was executed; null until then."
    )
    revised_at: datetime | None = Field(
        description="When a computation of the plan after the first changed this line's figures or added it (equal "
        "to the closure's planned_at if the last one did); null: as first computed."
    )


class ConfirmationOut(BaseModel):
    closure: ClosureOut
    surplus_instructions: list[str] = Field(description="Instructions paying the surplus to the merchant.")
