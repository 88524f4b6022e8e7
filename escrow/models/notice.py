"""Notices to consumers: written in the transaction of the movement they tell of, turned into text messages later."""

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Identity, Index, String
from sqlalchemy import text as sql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from escrow.models.base import Base


class Notice(Base):
    """Something a consumer is told of (``kind``, with its figures in ``params``), about one card. ``dedup_key``
    names the cause (``service_recorded:<consumption id>``): a retried request or a rerun job adds nothing.
    ``queued_at`` is set when the notices job has rendered it into the SMS outbox (or found no phone to send to)."""

    __tablename__ = "notices"
    __table_args__ = (Index("ix_notices_due", "id", postgresql_where=sql("queued_at IS NULL")),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    consumer_id: Mapped[str] = mapped_column(ForeignKey("consumers.id"), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    card_id: Mapped[str | None] = mapped_column(String(40))
    params: Mapped[dict] = mapped_column(JSONB, server_default=sql("'{}'::jsonb"))
    dedup_key: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(server_default=sql("now()"))
    queued_at: Mapped[datetime | None]
