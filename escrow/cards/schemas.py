from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

from escrow.kit.body import RequestModel
from escrow.kit.money import Money, SignedMoney


class CardSale(RequestModel):
    """A sale of one plan to one registered consumer, into one of the merchant's active escrow accounts."""

    plan_id: str = Field(min_length=1, max_length=40, description="An active plan of the merchant's.")
    consumer_id: str = Field(min_length=1, max_length=40, description="A consumer the merchant registered.")
    escrow_account_id: str | None = Field(
        default=None, max_length=40, description="Needed only when the merchant has more than one active account."
    )


class DepositReport(RequestModel):
    """A consumer's payment as the bank booked it into the escrow account."""

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
    """A consumer's prepaid card: one purchase of one plan, with the custody ratio fixed at its sale."""

    id: str
    merchant_id: str
    escrow_account_id: str
    plan_id: str
    consumer_id: str
    kind: Literal["sessions", "stored_value", "period"]
    status: str = Field(
        description="awaiting_payment (sold, unpaid); active (paid, usable); exhausted (all used); refunded or "
        "expired_refunded (the balance went back to the consumer); closed_settled (settled in the merchant's "
        "closure); transferred (moved to a successor merchant); cancelled (unpaid when the merchant closed)."
    )
    price: Money = Field(description="What the consumer pays for the card.")
    custody_ratio_bp: int = Field(description="Share of the price held in custody, in basis points (10000 = 100 %).")
    units_total: int = Field(description="Sessions; face value in fen (stored value); days (period).")
    units_remaining: int = Field(
        description="units_total less the units of the services recorded, pending ones included (a voided service "
        "gives its units back)."
    )
    payment_reference: str = Field(
        description="The reference the consumer quotes with the payment (PE…); the bank reports the deposit with it."
    )
    sold_at: datetime
    paid_at: datetime | None = Field(description="When the bank's report of the deposit activated the card.")
    starts_on: date | None = Field(description="First day of use (business date); set at payment.")
    valid_until: date | None = Field(description="Last day of use (business date); set at payment.")


class CardSold(BaseModel):
    """The card just sold, and where the consumer pays for it."""

    card: CardOut
    payment: PaymentDetails


class PendingService(BaseModel):
    """A service recorded against the card that still holds part of its balance: awaiting the consumer's confirmation,
    or in dispute.
    """

    consumption_id: str
    units: int = Field(description="Units the service uses: sessions, fen (stored value) or days (period).")
    value: Money = Field(description="The part of the card's value the service holds.")
    status: Literal["pending_confirmation", "disputed"] = Field(
        description="pending_confirmation: the consumer may still confirm or dispute it; disputed: awaiting the "
        "regulator."
    )
    recorded_at: datetime
    confirm_by: datetime | None = Field(
        description="When it confirms itself if the consumer neither confirms nor disputes it."
    )


class CardDetail(CardOut):
    """A card with its balances: what is left, how much of it is protected by custody, what is held by services awaiting
    confirmation, released and refunded.
    """

    value_remaining: Money = Field(description="Unused value: custodied plus unprotected, pending services included.")
    protected: Money = Field(description="The part of the unused value held in custody at the bank.")
    unprotected: Money = Field(description="The part not in custody: a claim on the merchant.")
    pending: Money = Field(description="Held by services awaiting confirmation or in dispute.")
    released: Money = Field(description="Paid over to the merchant for services confirmed.")
    refunded: Money = Field(description="Paid back, or owed, to the consumer by refunds.")
    pending_services: list[PendingService]


class PresenceCode(BaseModel):
    """The consumer's presence code for one card, to show at the counter: the merchant records the service with it
    and the service is confirmed at once."""

    code: str = Field(
        description="Digits (6 by default) that change every step (60 s by default); the code of the step before is "
        "still accepted. One code confirms the services of one request.",
        examples=["482913"],
    )
    valid_until: datetime = Field(description="When this code stops being accepted (the end of the next step).")
    rotates_at: datetime = Field(description="When the next code appears: fetch it then.")
    qr_svg: str = Field(
        description="A QR code of `card_id:code` as a standalone SVG image, for the merchant's scanner.",
        examples=['<svg xmlns="http://www.w3.org/2000/svg" …</svg>'],
    )


class HistoryLine(BaseModel):
    """One movement of a card's balance, from one journal entry."""

    entry_id: int = Field(description="The journal entry's id; entries are listed newest first.")
    occurred_at: datetime
    event: str = Field(description="card_paid, consumption, release, void, refund, ...")
    amount: Money = Field(description="What the entry moved on the card: custodied and unprotected parts together.")
    protected: Money = Field(description="The custodied part of amount.")
    refs: dict = Field(
        description="References of the entry (card, consumption, refund, instruction, bank transaction…)."
    )


class AccountTotals(BaseModel):
    """Ledger totals of one escrow account, in fen, and how many of its cards are live."""

    escrow_account_id: str
    custody_cash: Money = Field(description="What the bank should hold in the escrow account.")
    cards_protected: Money = Field(description="Σ custodied unused value of the account's cards.")
    cards_unprotected: Money = Field(
        description="Σ unused value of the account's cards that is not in custody (a claim on the merchant)."
    )
    merchant_payable: Money = Field(description="Released, not yet paid out (payouts in flight included).")
    refund_payable: Money = Field(description="Refunds approved, not yet paid by the bank.")
    payouts_in_flight: Money = Field(description="Payouts to the merchant instructed but not yet reported executed.")
    custody_difference: SignedMoney = Field(
        description="Reconciliation adjustments the regulator booked (ledger account custody_difference): positive, "
        "money in custody nobody is owed yet; negative, money missing from custody. It is why custody_cash may "
        "differ from cards_protected + merchant_payable + refund_payable (+ funds of closures in flight)."
    )
    cards_active: int = Field(description="Cards paid and usable.")
    cards_awaiting_payment: int = Field(description="Cards sold and not yet paid.")


class UnappliedDepositOut(BaseModel):
    """A deposit a bank reported that the service refused to put on a card; it awaits reconciliation."""

    bank_id: str
    bank_transaction_id: str
    payment_reference: str
    amount: Money
    reason: str = Field(
        description="Why it was refused: unknown_reference, amount_mismatch, already_paid, card_cancelled, "
        "transaction_already_applied or account_not_active."
    )
    detail: str = Field(description="The refusal in words.")
    received_at: datetime
