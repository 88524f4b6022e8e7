from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

from escrow.kit.money import Money, SignedMoney


class CardSale(BaseModel):
    plan_id: str = Field(min_length=1, max_length=40)
    consumer_id: str = Field(min_length=1, max_length=40, description="A consumer the merchant registered.")
    escrow_account_id: str | None = Field(
        default=None, max_length=40, description="Needed only when the merchant has more than one active account."
    )


class DepositReport(BaseModel):
    payment_reference: str = Field(min_length=1, max_length=100, description="The reference the sale issued.")
    amount: Money
    bank_transaction_id: str = Field(
        min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_\-.:/]+$", description="The bank's own reference."
    )


class PaymentDetails(BaseModel):
    """Where the consumer pays: the escrow account at the bank, never the merchant."""

    bank_name: str
    escrow_account_number_masked: str
    payment_reference: str = Field(description="Quote it with the payment; the bank reports the deposit with it.")
    amount: Money


class CardOut(BaseModel):
    id: str
    merchant_id: str
    escrow_account_id: str
    plan_id: str
    consumer_id: str
    kind: Literal["sessions", "stored_value", "period"]
    status: str
    price: Money
    custody_ratio_bp: int = Field(description="Share of the price held in custody, in basis points (10000 = 100 %).")
    units_total: int = Field(description="Sessions; face value in fen (stored value); days (period).")
    units_remaining: int
    payment_reference: str
    sold_at: datetime
    paid_at: datetime | None
    starts_on: date | None
    valid_until: date | None


class CardSold(BaseModel):
    card: CardOut
    payment: PaymentDetails


class PendingService(BaseModel):
    consumption_id: str
    units: int
    value: Money
    status: Literal["pending_confirmation", "disputed"]
    recorded_at: datetime
    confirm_by: datetime | None


class CardDetail(CardOut):
    value_remaining: Money = Field(description="Unused value: custodied plus unprotected, pending services included.")
    protected: Money = Field(description="The part of the unused value held in custody at the bank.")
    unprotected: Money = Field(description="The part not in custody: a claim on the merchant.")
    pending: Money = Field(description="Held by services awaiting confirmation or in dispute.")
    released: Money = Field(description="Paid over to the merchant for services confirmed.")
    refunded: Money
    pending_services: list[PendingService]


class HistoryLine(BaseModel):
    entry_id: int
    occurred_at: datetime
    event: str = Field(description="card_paid, consumption, release, void, refund, ...")
    amount: Money
    protected: Money
    refs: dict


class AccountTotals(BaseModel):
    escrow_account_id: str
    custody_cash: Money = Field(description="What the bank should hold in the escrow account.")
    cards_protected: Money = Field(description="Σ custodied unused value of the account's cards.")
    cards_unprotected: Money
    merchant_payable: Money = Field(description="Released, not yet paid out (payouts in flight included).")
    refund_payable: Money
    payouts_in_flight: Money
    custody_difference: SignedMoney = Field(
        description="Reconciliation adjustments the regulator booked (ledger account custody_difference): positive, "
        "money in custody nobody is owed yet; negative, money missing from custody. It is why custody_cash may "
        "differ from cards_protected + merchant_payable + refund_payable (+ funds of closures in flight)."
    )
    cards_active: int
    cards_awaiting_payment: int


class UnappliedDepositOut(BaseModel):
    bank_id: str
    bank_transaction_id: str
    payment_reference: str
    amount: Money
    reason: str
    detail: str
    received_at: datetime
