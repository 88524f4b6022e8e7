"""Banks, merchants, escrow accounts and consumers: who holds, owns and pays into the custodied money."""

from datetime import date, datetime

from sqlalchemy import CheckConstraint, Date, ForeignKey, Index, Integer, SmallInteger, String, text
from sqlalchemy.orm import Mapped, mapped_column

from escrow.models.base import Base

MERCHANT_CATEGORIES = ("gym", "salon", "training", "other")
CREDIT_RATINGS = ("A", "B", "C", "D")
MERCHANT_STATES = ("active", "suspended", "closing", "closed")
ESCROW_STATES = ("pending", "active", "frozen", "closed", "rejected")
SIGNING_ALGORITHMS = ("hmac-sha256", "hmac-sm3")
CUSTODY_MODELS = ("full", "ratio")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Bank(Base):
    __tablename__ = "banks"
    __table_args__ = (CheckConstraint(_in("signing_algorithm", SIGNING_ALGORITHMS), name="signing_algorithm"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    code: Mapped[str] = mapped_column(String(20), unique=True)
    signing_algorithm: Mapped[str] = mapped_column(String(20))
    signing_secret_enc: Mapped[str] = mapped_column(String(200))  # AES-GCM under the service key
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class Merchant(Base):
    __tablename__ = "merchants"
    __table_args__ = (
        CheckConstraint(_in("category", MERCHANT_CATEGORIES), name="category"),
        CheckConstraint(_in("credit_rating", CREDIT_RATINGS), name="credit_rating"),
        CheckConstraint(_in("status", MERCHANT_STATES), name="status"),
        CheckConstraint(_in("custody_model", CUSTODY_MODELS), name="custody_model"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(20))
    uscc: Mapped[str] = mapped_column(String(18), unique=True)  # unified social credit code, validated
    credit_rating: Mapped[str] = mapped_column(String(1))
    settlement_account_enc: Mapped[str] = mapped_column(String(300))  # AES-GCM under the service key
    settlement_account_masked: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), server_default="active")
    # full: 100 % custody; ratio: the custody ratio of the merchant's credit rating (domain.md §5), opt-in
    custody_model: Mapped[str] = mapped_column(String(10), server_default="full")
    opened_on: Mapped[date] = mapped_column(Date)
    # 行政区划代码 of the county-level division it trades in (escrow/risk/regions.csv); NULL: not given yet
    region: Mapped[str | None] = mapped_column(String(6), index=True)
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class EscrowAccount(Base):
    """One per merchant per custodian bank: ``pending`` until the bank activates it with its account number."""

    __tablename__ = "escrow_accounts"
    __table_args__ = (
        CheckConstraint(_in("status", ESCROW_STATES), name="status"),
        Index(
            "uq_escrow_accounts_merchant_bank",
            "merchant_id",
            "bank_id",
            unique=True,
            postgresql_where=text("status NOT IN ('rejected', 'closed')"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), index=True)
    bank_id: Mapped[str] = mapped_column(ForeignKey("banks.id"), index=True)
    status: Mapped[str] = mapped_column(String(20), server_default="pending")
    bank_account_enc: Mapped[str | None] = mapped_column(String(300))
    bank_account_masked: Mapped[str | None] = mapped_column(String(40))
    rejection_reason: Mapped[str | None] = mapped_column(String(500))
    freeze_reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    activated_at: Mapped[datetime | None]


class Consumer(Base):
    """A card holder, known only by a keyed hash of the phone number and its masked form."""

    __tablename__ = "consumers"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    phone_hash: Mapped[str] = mapped_column(String(64), unique=True)  # HMAC-SHA256 under the service key
    phone_masked: Mapped[str] = mapped_column(String(20))
    # AES-GCM under the service key, context consumers.phone:<id>: filled when the phone is seen in clear (sign-in,
    # a merchant's registration), so notices can be sent; NULL: no notices by SMS
    phone_enc: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class ConsumerLink(Base):
    """A merchant met this consumer at its point of sale (and may therefore sell to them and see them)."""

    __tablename__ = "consumer_links"

    consumer_id: Mapped[str] = mapped_column(ForeignKey("consumers.id"), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class ConsumerCode(Base):
    """A one-time sign-in code sent by SMS to a phone (known as a consumer or not yet): stored hashed, a few
    attempts, then burnt. An unknown phone becomes a consumer only when it signs in with a valid code."""

    __tablename__ = "consumer_codes"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    phone_hash: Mapped[str] = mapped_column(String(64), index=True)  # the phone's look-up hash
    code_hash: Mapped[str] = mapped_column(String(64))
    issued_by: Mapped[str] = mapped_column(String(40))  # "sms": codes are only ever sent to the phone
    attempts: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class BankNonce(Base):
    """Nonces of signed bank requests seen within the replay window."""

    __tablename__ = "bank_nonces"

    bank_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(128), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(server_default=text("now()"), index=True)


class RateCount(Base):
    """Requests counted per kind (``code_phone``, ``code_address``), key (a look-up hash) and fixed window, in the
    database so that a limit holds across workers and restarts."""

    __tablename__ = "rate_counts"

    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(primary_key=True, index=True)
    count: Mapped[int] = mapped_column(Integer, server_default="0")
