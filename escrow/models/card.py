"""Plans, cards, services rendered, refunds, bank instructions and deposits: the prepaid card's life.

Amounts are integer fen (``BIGINT``). The ledger holds the money; these rows hold the business state and the
counters the cumulative-rounding rules of domain.md §4 need. Check constraints keep the counters sane even
for writes that bypass Python.
"""

from datetime import date, datetime
from typing import Literal

from sqlalchemy import BigInteger, CheckConstraint, Date, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from escrow.models.base import Base
from escrow.models.party import _in

PLAN_KINDS = ("sessions", "stored_value", "period")
CARD_STATES = (
    "awaiting_payment",
    "active",
    "exhausted",
    "refunded",
    "expired_refunded",
    "closed_settled",
    "transferred",
    "cancelled",
)
CONSUMPTION_STATES = ("pending_confirmation", "disputed", "confirmed", "voided")
REFUND_STATES = ("requested", "approved", "instructed", "paid", "rejected")
REFUND_CAUSES = ("cooling_off", "consumer", "merchant", "expiry", "closure")
# payout: released money to the merchant; refund: to a consumer; transfer: a card's custodied funds to a
# successor's escrow account; fund_payout: first compensation from the fund's own account to a consumer
INSTRUCTION_KINDS = ("payout", "refund", "transfer", "fund_payout")
# pending: the bank may pick it up; sent: the bank took it (it can no longer be cancelled); cancelled: withdrawn
# before the bank took it (a closure cancels unsent payouts)
INSTRUCTION_STATES = ("pending", "sent", "executed", "failed", "cancelled")


# The states as types, for query filters (an unknown state is a 422, not an empty list)
CardStatus = Literal[
    "awaiting_payment",
    "active",
    "exhausted",
    "refunded",
    "expired_refunded",
    "closed_settled",
    "transferred",
    "cancelled",
]
ConsumptionStatus = Literal["pending_confirmation", "disputed", "confirmed", "voided"]
# How a confirmed service was confirmed: ``resolved_by`` holds the first four as they are; ``resolution`` is any
# other value (the id of the merchant or regulator who resolved its dispute).
ConfirmationChannel = Literal["consumer", "presence", "auto", "schedule", "resolution"]
RefundStatus = Literal["requested", "approved", "instructed", "paid", "rejected"]
InstructionStatus = Literal["pending", "sent", "executed", "failed", "cancelled"]


class Plan(Base):
    """What a merchant sells; immutable once created (a new price is a new plan)."""

    __tablename__ = "plans"
    __table_args__ = (
        CheckConstraint(_in("kind", PLAN_KINDS), name="kind"),
        CheckConstraint("price > 0", name="price"),
        CheckConstraint("units > 0", name="units"),
        CheckConstraint("validity_days > 0", name="validity_days"),
        CheckConstraint("kind <> 'stored_value' OR units >= price", name="face_value_covers_price"),
        CheckConstraint("list_unit_price IS NULL OR list_unit_price > 0", name="list_unit_price"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    price: Mapped[int] = mapped_column(BigInteger)  # fen the consumer pays
    # sessions: number of sessions; stored_value: face value in fen; period: days of use
    units: Mapped[int] = mapped_column(BigInteger)
    list_unit_price: Mapped[int | None] = mapped_column(BigInteger)  # fen per session at list price
    validity_days: Mapped[int] = mapped_column(Integer)
    terms: Mapped[str] = mapped_column(Text, server_default="")
    active: Mapped[bool] = mapped_column(server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class Card(Base):
    """One consumer's purchase of one plan, with the custody ratio fixed at sale.

    Counters (all fen unless said): ``units_used`` counts units consumed or held; ``consumed`` is the money
    value of those units (held or released); ``released`` of it is posted to the merchant; ``refunded`` went
    back to the consumer; ``protected_out`` is the custodied part of everything that left the card so far.
    """

    __tablename__ = "cards"
    __table_args__ = (
        CheckConstraint(_in("status", CARD_STATES), name="status"),
        CheckConstraint("custody_ratio_bp BETWEEN 0 AND 10000", name="custody_ratio_bp"),
        CheckConstraint("units_used BETWEEN 0 AND units_total", name="units_used"),
        CheckConstraint("protected_paid BETWEEN 0 AND price", name="protected_paid"),
        CheckConstraint("released >= 0 AND released <= consumed", name="released"),
        CheckConstraint(
            "refunded >= 0 AND consumed >= 0 AND transferred >= 0 AND consumed + refunded + transferred <= price",
            name="conservation",
        ),
        CheckConstraint("protected_out BETWEEN 0 AND protected_paid", name="protected_out"),
        Index("ix_cards_merchant_status", "merchant_id", "status"),
        Index("ix_cards_consumer", "consumer_id"),
        Index("ix_cards_deposit_transaction_id", "deposit_transaction_id"),
        Index("ix_cards_valid_until", "valid_until", postgresql_where=text("status = 'active'")),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"))
    escrow_account_id: Mapped[str] = mapped_column(ForeignKey("escrow_accounts.id"), index=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id"))
    consumer_id: Mapped[str] = mapped_column(ForeignKey("consumers.id"))
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), server_default="awaiting_payment")
    price: Mapped[int] = mapped_column(BigInteger)
    units_total: Mapped[int] = mapped_column(BigInteger)
    units_used: Mapped[int] = mapped_column(BigInteger, server_default="0")
    custody_ratio_bp: Mapped[int] = mapped_column(Integer)  # basis points, fixed at sale
    protected_paid: Mapped[int] = mapped_column(BigInteger)  # custodied part of the price
    consumed: Mapped[int] = mapped_column(BigInteger, server_default="0")
    released: Mapped[int] = mapped_column(BigInteger, server_default="0")
    refunded: Mapped[int] = mapped_column(BigInteger, server_default="0")
    protected_out: Mapped[int] = mapped_column(BigInteger, server_default="0")
    payment_reference: Mapped[str] = mapped_column(String(40), unique=True)
    deposit_transaction_id: Mapped[str | None] = mapped_column(String(100))
    sold_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    paid_at: Mapped[datetime | None]
    starts_on: Mapped[date | None] = mapped_column(Date)  # first business day of use
    valid_until: Mapped[date | None] = mapped_column(Date)  # last business day of use
    days_settled: Mapped[int] = mapped_column(Integer, server_default="0")  # period plans: days released/skipped
    closed_at: Mapped[datetime | None]
    # takeover: value moved to the successor's card (this card ``transferred``), or the card this one continues
    transferred: Mapped[int] = mapped_column(BigInteger, server_default="0")
    predecessor_card_id: Mapped[str | None] = mapped_column(String(40))
    # presence codes (escrow/cards/presence.py): the last time step whose code confirmed services; older and equal
    # steps' codes are refused
    presence_step: Mapped[int | None] = mapped_column(BigInteger)


class Consumption(Base):
    """A service the merchant says it rendered: held on the card until confirmed, or voided after a dispute."""

    __tablename__ = "consumptions"
    __table_args__ = (
        CheckConstraint(_in("status", CONSUMPTION_STATES), name="status"),
        CheckConstraint("units > 0", name="units"),
        CheckConstraint("amount >= 0 AND protected_amount BETWEEN 0 AND amount", name="amount"),
        Index("ix_consumptions_card", "card_id"),
        Index("ix_consumptions_due", "confirm_by", postgresql_where=text("status = 'pending_confirmation'")),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    card_id: Mapped[str] = mapped_column(ForeignKey("cards.id"))
    escrow_account_id: Mapped[str] = mapped_column(String(40))
    units: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)  # money value in fen
    protected_amount: Mapped[int] = mapped_column(BigInteger)  # custodied part of it
    status: Mapped[str] = mapped_column(String(24))
    hold_entry_id: Mapped[int | None] = mapped_column(BigInteger)
    service_date: Mapped[date | None] = mapped_column(Date)  # period plans: the day released
    note: Mapped[str | None] = mapped_column(String(500))
    recorded_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    confirm_by: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    resolved_by: Mapped[str | None] = mapped_column(String(40))  # consumer, presence, auto, schedule, or a principal id
    dispute_reason: Mapped[str | None] = mapped_column(String(500))


class Refund(Base):
    """A refund of a card's unused value, with the computation shown to the consumer kept as it was."""

    __tablename__ = "refunds"
    __table_args__ = (
        CheckConstraint(_in("status", REFUND_STATES), name="status"),
        CheckConstraint(_in("cause", REFUND_CAUSES), name="cause"),
        CheckConstraint(
            "amount >= 0 AND from_custody >= 0 AND set_off >= 0 AND from_fund >= 0 AND merchant_owes >= 0"
            " AND amount = from_custody + set_off + from_fund + merchant_owes",
            name="amount_parts",
        ),
        Index("uq_refunds_open_per_card", "card_id", unique=True, postgresql_where=text("status = 'requested'")),
        Index("ix_refunds_due", "due_on", postgresql_where=text("status IN ('approved', 'instructed')")),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    card_id: Mapped[str] = mapped_column(ForeignKey("cards.id"), index=True)
    escrow_account_id: Mapped[str] = mapped_column(String(40))
    consumer_id: Mapped[str] = mapped_column(String(40))
    cause: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    amount: Mapped[int] = mapped_column(BigInteger)  # what the consumer gets back
    from_custody: Mapped[int] = mapped_column(BigInteger)  # paid by the bank out of the escrow account
    set_off: Mapped[int] = mapped_column(BigInteger)  # unprotected part paid from the merchant's payable
    # closure refunds: what the first-compensation fund pays (now, or owes until it has money); its claim
    from_fund: Mapped[int] = mapped_column(BigInteger, server_default="0")
    merchant_owes: Mapped[int] = mapped_column(BigInteger)  # unprotected part left as a claim on the merchant
    retained: Mapped[int] = mapped_column(BigInteger)  # delivered value repriced, released to the merchant
    computation: Mapped[dict] = mapped_column(JSONB)
    reason: Mapped[str | None] = mapped_column(String(500))
    requested_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    approved_at: Mapped[datetime | None]
    due_on: Mapped[date | None] = mapped_column(Date)
    paid_at: Mapped[datetime | None]


class Instruction(Base):
    """An order to a custodian bank to move money out of an escrow account or out of the fund's account
    (held on the ledger of ``book`` from the moment it is made, until the bank reports it done)."""

    __tablename__ = "instructions"
    __table_args__ = (
        CheckConstraint(_in("kind", INSTRUCTION_KINDS), name="kind"),
        CheckConstraint(_in("status", INSTRUCTION_STATES), name="status"),
        CheckConstraint("amount > 0", name="amount"),
        CheckConstraint("(book = 'fund') = (escrow_account_id IS NULL)", name="book"),
        Index("ix_instructions_account_status", "escrow_account_id", "status"),
        Index("ix_instructions_bank_status", "bank_id", "status"),
        Index(
            "uq_instructions_refund_open",
            "refund_id",
            unique=True,
            postgresql_where=text("status NOT IN ('failed', 'cancelled')"),
        ),
        Index("ix_instructions_closure_item", "closure_item_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    escrow_account_id: Mapped[str | None] = mapped_column(ForeignKey("escrow_accounts.id"))
    book: Mapped[str] = mapped_column(String(40))  # the ledger book the money leaves: escrow account id or 'fund'
    bank_id: Mapped[str] = mapped_column(ForeignKey("banks.id"))  # the bank that carries it out
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), server_default="pending")
    amount: Mapped[int] = mapped_column(BigInteger)
    beneficiary: Mapped[str] = mapped_column(String(200))  # masked: merchant settlement account, or original payment
    refund_id: Mapped[str | None] = mapped_column(ForeignKey("refunds.id"))
    closure_item_id: Mapped[int | None] = mapped_column(ForeignKey("closure_items.id"))
    target_card_id: Mapped[str | None] = mapped_column(String(40))  # transfer: the successor's card it pays
    hold_entry_id: Mapped[int] = mapped_column(BigInteger)
    bank_transaction_id: Mapped[str | None] = mapped_column(String(100))
    failure_reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    sent_at: Mapped[datetime | None]
    reported_at: Mapped[datetime | None]


class UnappliedDeposit(Base):
    """A deposit the bank reported that could not be applied (unknown reference, wrong amount): kept for
    reconciliation, never applied to a card."""

    __tablename__ = "unapplied_deposits"

    bank_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    bank_transaction_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    payment_reference: Mapped[str] = mapped_column(String(100))
    amount: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(40))
    detail: Mapped[str] = mapped_column(String(500))
    received_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class JobRun(Base):
    """Runs of scheduled work that must happen once per business date (the daily payout run)."""

    __tablename__ = "job_runs"

    job: Mapped[str] = mapped_column(String(40), primary_key=True)
    business_date: Mapped[date] = mapped_column(Date, primary_key=True)
    ran_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    detail: Mapped[dict | None] = mapped_column(JSONB)


class PresenceFailure(Base):
    """A wrong presence code a merchant gave for a card. Kept although its request is refused (the unit of work
    writes it after the rollback), so guessing a card's code is bounded: past ESCROW_PRESENCE_CODE_FAILURES_PER_HOUR
    the card takes no presence code for the hour."""

    __tablename__ = "presence_failures"
    __table_args__ = (Index("ix_presence_failures_card_at", "card_id", "at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    card_id: Mapped[str] = mapped_column(String(40))
    merchant_id: Mapped[str] = mapped_column(String(40))
    at: Mapped[datetime] = mapped_column(server_default=text("now()"))
