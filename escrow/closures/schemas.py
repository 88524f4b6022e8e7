from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

from escrow.kit.body import RequestModel
from escrow.kit.money import Money


class ClosureCreate(RequestModel):
    """A closure to announce (the merchant, with notice) or order (the regulator)."""

    merchant_id: str | None = Field(default=None, description="Regulator only: the merchant to close.")
    effective_on: date | None = Field(
        default=None,
        description="Business date the freeze takes effect. A merchant must give at least closure_notice_days' "
        "notice; the regulator may leave it out to freeze at once (the merchant vanished).",
    )
    reason: str = Field(min_length=1, max_length=500)


class TakeoverProposal(RequestModel):
    """A successor merchant offered to the consumers of a closing merchant, and until when they may answer."""

    successor_merchant_id: str = Field(min_length=1, max_length=40)
    deadline: datetime = Field(description="Consumers who have not answered by then are refunded.")


class TakeoverAnswer(RequestModel):
    """A consumer's answer to a proposed takeover of one card."""

    decision: Literal["accept", "decline"] = Field(
        description="accept: the card moves to the successor with its custodied funds; decline: it is refunded in the "
        "settlement."
    )


class TakeoverDecisionOut(BaseModel):
    """A consumer's recorded answer to a takeover; it may be changed until the deadline."""

    closure_id: str
    card_id: str
    decision: str = Field(description="accept or decline.")
    decided_at: datetime


class SettlementTotals(BaseModel):
    """A closure's settlement plan summed over its items, in fen, by where the money comes from."""

    items: int = Field(description="Items in the plan.")
    done: int = Field(description="Items executed.")
    unused: Money = Field(description="Consumers' unused value (and earlier claims) the closure settles.")
    from_custody: Money = Field(description="Refunded out of the escrow accounts (the cards' custodied value).")
    set_off: Money = Field(description="Paid out of the merchant's unpaid merchant_payable.")
    fund_paid: Money = Field(
        description="Paid by the first-compensation fund, which takes a claim on the merchant for it."
    )
    fund_owed: Money = Field(description="The fund's share it could not pay yet (paid when money comes in).")
    fund_owed_paid: Money = Field(description="Of fund_owed, what the fund has paid since.")
    unpaid: Money = Field(description="Beyond the fund's cap: consumers' remaining claims on the merchant.")
    transferred: Money = Field(description="Custodied funds moved to the successor with the cards taken over.")
    assumed: Money = Field(description="Value outside custody the successor took over with those cards.")


class ClosureOut(BaseModel):
    """A merchant's closure: its stage, dates, any takeover, and the settlement's progress."""

    id: str
    merchant_id: str
    mode: str = Field(
        description="announced (by the merchant, or by the regulator from a later date) or ordered (by the regulator, "
        "at once)."
    )
    status: str = Field(
        description="announced (sales stopped, not yet frozen); frozen (accounts frozen, plan may be computed); "
        "settling (plan fixed, items being executed); settled (all items done); confirmed (surplus paid, merchant "
        "closed)."
    )
    reason: str
    effective_on: date = Field(description="Business date the escrow accounts freeze.")
    announced_at: datetime
    frozen_at: datetime | None
    planned_at: datetime | None
    settling_at: datetime | None
    settled_at: datetime | None
    confirmed_at: datetime | None
    successor_merchant_id: str | None = Field(description="The merchant proposed to take over the cards, if any.")
    takeover_deadline: datetime | None = Field(description="Until when consumers may answer the takeover.")
    progress: dict[str, int] = Field(description="Settlement items done / total.")
    totals: SettlementTotals | None = Field(
        default=None, description="The settlement plan's totals (when reading one closure)."
    )


class ItemOut(BaseModel):
    """One item of a closure's settlement plan: for one card (or one earlier unpaid refund), what each source pays and
    what is left unpaid.
    """

    id: int = Field(
        description="The item's id: the closure_item_id of the instructions that pay it. A line keeps its id when the "
        "plan is computed again (starting the settlement does, to fix the fund's share)."
    )
    seq: int = Field(description="Position in the plan; shares of a short pool are given in this order.")
    kind: str = Field(description="card: a card's unused value; claim: an earlier refund the merchant still owed.")
    decision: str = Field(description="refund (paid back to the consumer) or transfer (moved to the successor).")
    status: str = Field(description="planned, or done once executed.")
    escrow_account_id: str
    consumer_id: str
    card_id: str | None
    refund_id: str | None = Field(description="kind claim: the earlier refund it settles.")
    new_card_id: str | None = Field(description="transfer: the consumer's card at the successor.")
    unused: Money = Field(description="What the consumer is owed: unused value, or the earlier claim.")
    from_custody: Money = Field(description="Paid out of the escrow account.")
    set_off: Money = Field(description="Paid out of the merchant's unpaid merchant_payable.")
    fund_paid: Money = Field(description="Paid by the first-compensation fund.")
    fund_owed: Money = Field(description="The fund's share it could not pay yet.")
    fund_owed_paid: Money = Field(description="Of fund_owed, what the fund has paid since.")
    unpaid: Money = Field(description="Beyond the fund's cap: still the consumer's claim on the merchant.")
    transferred: Money = Field(description="Custodied funds moved to the successor.")
    assumed: Money = Field(description="Value outside custody the successor took over.")
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
    """A confirmed closure, and the instructions paying the merchant its surplus."""

    closure: ClosureOut
    surplus_instructions: list[str] = Field(description="Instructions paying the surplus to the merchant.")
