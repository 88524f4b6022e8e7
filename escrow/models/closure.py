"""Closures and the first-compensation fund: a merchant's closure, its settlement plan (one item per consumer
claim), consumers' takeover decisions, and the fund's bank account, contributions and recoveries.

Amounts are integer fen. Each settlement item says where every fen of one consumer's unused value comes from;
check constraints keep the parts adding up even for writes that bypass Python.
"""

from datetime import date, datetime

from sqlalchemy import BigInteger, CheckConstraint, Date, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from escrow.models.base import Base
from escrow.models.party import _in

CLOSURE_MODES = ("announced", "ordered")
# announced: sales stopped, services go on until the effective date; frozen: no releases, payouts or services,
# the plan can be computed; settling: the plan is fixed and being executed; settled: every consumer settled;
# confirmed: the regulator confirmed the settlement (the surplus is paid out to the merchant)
CLOSURE_STATES = ("announced", "frozen", "settling", "settled", "confirmed")
ITEM_KINDS = ("card", "claim")  # a card's unused value, or an earlier refund the merchant still owes
ITEM_DECISIONS = ("refund", "transfer")
ITEM_STATES = ("planned", "done")
CONTRIBUTION_SOURCES = ("insurer", "government", "guarantee_deposit", "other")
TAKEOVER_DECISIONS = ("accept", "decline")


class Closure(Base):
    __tablename__ = "closures"
    __table_args__ = (
        CheckConstraint(_in("mode", CLOSURE_MODES), name="mode"),
        CheckConstraint(_in("status", CLOSURE_STATES), name="status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), unique=True)  # a merchant closes once
    mode: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(String(500))
    requested_by: Mapped[str] = mapped_column(String(40))
    announced_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    effective_on: Mapped[date] = mapped_column(Date)  # business date the freeze takes effect
    frozen_at: Mapped[datetime | None]
    planned_at: Mapped[datetime | None]
    settling_at: Mapped[datetime | None]
    settled_at: Mapped[datetime | None]
    confirmed_at: Mapped[datetime | None]
    confirmed_by: Mapped[str | None] = mapped_column(String(40))
    successor_merchant_id: Mapped[str | None] = mapped_column(ForeignKey("merchants.id"))
    successor_escrow_account_id: Mapped[str | None] = mapped_column(ForeignKey("escrow_accounts.id"))
    takeover_deadline: Mapped[datetime | None]
    items_total: Mapped[int] = mapped_column(Integer, server_default="0")
    items_done: Mapped[int] = mapped_column(Integer, server_default="0")


class ClosureItem(Base):
    """One consumer claim in a closure's settlement: what is owed and where each part comes from.

    ``unused`` = ``from_custody`` + ``set_off`` + ``fund_paid`` + ``fund_owed`` + ``unpaid`` for a refund;
    = ``transferred`` + ``assumed`` for a card taken over by the successor (custodied funds moved; the rest an
    obligation the successor assumes)."""

    __tablename__ = "closure_items"
    __table_args__ = (
        CheckConstraint(_in("kind", ITEM_KINDS), name="kind"),
        CheckConstraint(_in("decision", ITEM_DECISIONS), name="decision"),
        CheckConstraint(_in("status", ITEM_STATES), name="status"),
        CheckConstraint(
            "from_custody >= 0 AND set_off >= 0 AND fund_paid >= 0 AND fund_owed >= 0 AND unpaid >= 0"
            " AND transferred >= 0 AND assumed >= 0"
            " AND unused = from_custody + set_off + fund_paid + fund_owed + unpaid + transferred + assumed",
            name="parts",
        ),
        CheckConstraint("fund_owed_paid BETWEEN 0 AND fund_owed", name="fund_owed_paid"),
        CheckConstraint("decision = 'refund' OR (set_off = 0 AND fund_paid = 0 AND fund_owed = 0)", name="transfer"),
        Index("uq_closure_items_seq", "closure_id", "seq", unique=True),
        Index("ix_closure_items_todo", "closure_id", "seq", postgresql_where=text("status = 'planned'")),
        Index("ix_closure_items_owed", "id", postgresql_where=text("fund_owed_paid < fund_owed")),
        Index("ix_closure_items_consumer", "consumer_id"),
        Index("ix_closure_items_card", "card_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    closure_id: Mapped[str] = mapped_column(ForeignKey("closures.id"))
    seq: Mapped[int] = mapped_column(Integer)  # execution order
    kind: Mapped[str] = mapped_column(String(10))
    decision: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(10), server_default="planned")
    escrow_account_id: Mapped[str] = mapped_column(String(40))
    consumer_id: Mapped[str] = mapped_column(String(40))
    card_id: Mapped[str | None] = mapped_column(String(40))
    refund_id: Mapped[str | None] = mapped_column(String(40))  # claim: the earlier refund; card: the closure's
    unused: Mapped[int] = mapped_column(BigInteger)
    from_custody: Mapped[int] = mapped_column(BigInteger)
    set_off: Mapped[int] = mapped_column(BigInteger)
    fund_paid: Mapped[int] = mapped_column(BigInteger)
    fund_owed: Mapped[int] = mapped_column(BigInteger)  # the fund's share it could not pay yet
    fund_owed_paid: Mapped[int] = mapped_column(BigInteger, server_default="0")  # of it, paid since
    unpaid: Mapped[int] = mapped_column(BigInteger)  # beyond the fund's cap: the consumer's claim on the merchant
    transferred: Mapped[int] = mapped_column(BigInteger, server_default="0")
    assumed: Mapped[int] = mapped_column(BigInteger, server_default="0")
    new_card_id: Mapped[str | None] = mapped_column(String(40))  # transfer: the card at the successor
    done_at: Mapped[datetime | None]
    paid_at: Mapped[datetime | None]  # every part the banks were told to pay (the fund's too) executed
    revised_at: Mapped[datetime | None]  # a recomputation of the plan changed (or added) this line


class TakeoverDecision(Base):
    """A consumer's answer to a proposed takeover of a card by the successor merchant."""

    __tablename__ = "takeover_decisions"
    __table_args__ = (CheckConstraint(_in("decision", TAKEOVER_DECISIONS), name="decision"),)

    closure_id: Mapped[str] = mapped_column(ForeignKey("closures.id"), primary_key=True)
    card_id: Mapped[str] = mapped_column(ForeignKey("cards.id"), primary_key=True)
    decision: Mapped[str] = mapped_column(String(10))
    decided_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class FundAccount(Base):
    """The first-compensation fund's own custody account at a bank (one row)."""

    __tablename__ = "fund_account"
    __table_args__ = (CheckConstraint("id = 1", name="single"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bank_id: Mapped[str] = mapped_column(ForeignKey("banks.id"))
    bank_account_enc: Mapped[str] = mapped_column(String(300))
    bank_account_masked: Mapped[str] = mapped_column(String(40))
    updated_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class FundContribution(Base):
    __tablename__ = "fund_contributions"
    __table_args__ = (
        CheckConstraint(_in("source_kind", CONTRIBUTION_SOURCES), name="source_kind"),
        CheckConstraint("amount > 0", name="amount"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    source_kind: Mapped[str] = mapped_column(String(20))
    source_name: Mapped[str] = mapped_column(String(200))
    amount: Mapped[int] = mapped_column(BigInteger)
    bank_transaction_id: Mapped[str] = mapped_column(String(100), unique=True)
    entry_id: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class FundRecovery(Base):
    """Money recovered on a subrogated claim (the merchant or its liquidator paid the fund back)."""

    __tablename__ = "fund_recoveries"
    __table_args__ = (CheckConstraint("amount > 0", name="amount"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    escrow_account_id: Mapped[str] = mapped_column(ForeignKey("escrow_accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    bank_transaction_id: Mapped[str] = mapped_column(String(100), unique=True)
    note: Mapped[str | None] = mapped_column(String(500))
    received_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
