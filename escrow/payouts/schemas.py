from datetime import datetime

from pydantic import BaseModel, Field

from escrow.kit.body import RequestModel
from escrow.kit.money import Money


class Executed(RequestModel):
    """The bank's report that it carried out an instruction."""

    bank_transaction_id: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9_\-.:/]+$",
        description="The bank's own reference of the transfer.",
    )


class Failed(RequestModel):
    """The bank's report that it could not carry out an instruction, and why."""

    reason: str = Field(min_length=1, max_length=500)


class PayoutRunRequest(RequestModel):
    """Which merchant's released money to pay out now."""

    merchant_id: str | None = Field(default=None, description="Regulator only: one merchant's accounts (else all).")


class InstructionOut(BaseModel):
    """An order to the bank to move money out of an escrow account (or the fund's account), and where it stands."""

    id: str
    escrow_account_id: str | None = Field(description="None for the fund's payouts (book 'fund').")
    book: str = Field(description="The ledger the money leaves: the escrow account, or 'fund'.")
    bank_id: str
    kind: str = Field(description="payout, refund, transfer (to a successor's escrow account) or fund_payout.")
    status: str = Field(
        description="pending (made, the bank has not taken it); sent (the bank took it, it can't be cancelled); "
        "executed (money moved); failed (not moved, hold released); cancelled (withdrawn by a closure before the bank "
        "took it)."
    )
    amount: Money
    beneficiary: str = Field(
        description="Who receives the money, in words: the merchant's settlement account (masked), the original "
        "payment of a refunded card, a successor's escrow account, or a consumer paid by the fund."
    )
    refund_id: str | None = Field(description="The refund it pays (kind refund).")
    closure_item_id: int | None = Field(description="The closure settlement item it carries out.")
    target_card_id: str | None = Field(description="Transfers: the successor's card this money activates.")
    bank_transaction_id: str | None = Field(description="The bank's reference, once executed.")
    failure_reason: str | None = Field(description="The bank's reason, once failed.")
    created_at: datetime
    sent_at: datetime | None = Field(description="When the bank reported it took it.")
    reported_at: datetime | None = Field(description="When the bank reported it executed or failed.")

    @classmethod
    def of(cls, i) -> "InstructionOut":  # type: ignore[no-untyped-def]
        return cls(
            id=i.id,
            escrow_account_id=i.escrow_account_id,
            book=i.book,
            bank_id=i.bank_id,
            kind=i.kind,
            status=i.status,
            amount=Money(amount=i.amount),
            beneficiary=i.beneficiary,
            refund_id=i.refund_id,
            closure_item_id=i.closure_item_id,
            target_card_id=i.target_card_id,
            bank_transaction_id=i.bank_transaction_id,
            failure_reason=i.failure_reason,
            created_at=i.created_at,
            sent_at=i.sent_at,
            reported_at=i.reported_at,
        )


class PayoutRun(BaseModel):
    """The payout instructions one run made."""

    instructions: list[InstructionOut]
