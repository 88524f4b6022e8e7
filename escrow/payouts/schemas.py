from datetime import datetime

from pydantic import BaseModel, Field

from escrow.kit.body import RequestModel
from escrow.kit.money import Money


class Executed(RequestModel):
    bank_transaction_id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_\-.:/]+$")


class Failed(RequestModel):
    reason: str = Field(min_length=1, max_length=500)


class PayoutRunRequest(RequestModel):
    merchant_id: str | None = Field(default=None, description="Regulator only: one merchant's accounts (else all).")


class InstructionOut(BaseModel):
    id: str
    escrow_account_id: str | None = Field(description="None for the fund's payouts (book 'fund').")
    book: str = Field(description="The ledger the money leaves: the escrow account, or 'fund'.")
    bank_id: str
    kind: str = Field(description="payout, refund, transfer (to a successor's escrow account) or fund_payout.")
    status: str
    amount: Money
    beneficiary: str
    refund_id: str | None
    closure_item_id: int | None
    target_card_id: str | None
    bank_transaction_id: str | None
    failure_reason: str | None
    created_at: datetime
    sent_at: datetime | None
    reported_at: datetime | None

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
    instructions: list[InstructionOut]
