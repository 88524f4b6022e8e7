"""Text messages: the transactional outbox they leave through, and the development sink that stands for a gateway."""

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, Identity, Index, SmallInteger, String
from sqlalchemy import text as sql
from sqlalchemy.orm import Mapped, mapped_column

from escrow.models.base import Base

SMS_STATES = ("pending", "sent", "dead")


class SmsOutbox(Base):
    """A message to send, written in the transaction that decided to send it; delivered after commit."""

    __tablename__ = "sms_outbox"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'sent', 'dead')", name="status"),
        Index("ix_sms_outbox_due", "next_attempt_at", postgresql_where=sql("status = 'pending'")),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    dedup_key: Mapped[str] = mapped_column(String(200), unique=True)  # a retry of the same cause sends nothing more
    phone_enc: Mapped[str] = mapped_column(String(200))  # AES-GCM under the service key, context sms_outbox.phone:id
    phone_hash: Mapped[str] = mapped_column(String(64), index=True)
    text: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(10), server_default="pending")
    attempts: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=sql("now()"))
    locked_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(server_default=sql("now()"))
    sent_at: Mapped[datetime | None]


class SmsSink(Base):
    """Development only: where ``DevSmsSink`` keeps the messages a gateway would have sent. No API exposes it; the
    operator reads it with ``escrow sms outbox``."""

    __tablename__ = "sms_sink"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    phone_masked: Mapped[str] = mapped_column(String(20))
    phone_hash: Mapped[str] = mapped_column(String(64), index=True)
    text: Mapped[str] = mapped_column(String(500))
    request_id: Mapped[str] = mapped_column(String(200))  # the outbox row's dedup key
    created_at: Mapped[datetime] = mapped_column(server_default=sql("now()"))
