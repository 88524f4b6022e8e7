from datetime import datetime

from sqlalchemy import BigInteger, Identity, SmallInteger, String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from escrow.models.base import Base


class AuditRecord(Base):
    """Who did what to which object, and how it ended; append-only like the journal (a trigger refuses edits)."""

    __tablename__ = "audit_records"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    at: Mapped[datetime] = mapped_column(server_default=text("now()"), index=True)
    principal_id: Mapped[str | None] = mapped_column(String(40), index=True)
    role: Mapped[str | None] = mapped_column(String(20))
    token_id: Mapped[str | None] = mapped_column(String(40), index=True)  # the token that acted
    action: Mapped[str] = mapped_column(String(200), index=True)  # e.g. "POST /v1/escrow-accounts/{id}/activate"
    object_id: Mapped[str | None] = mapped_column(String(80), index=True)
    request_id: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[int] = mapped_column(SmallInteger)  # the HTTP status the request ended with
    outcome: Mapped[str] = mapped_column(String(20))  # done, refused or failed
    detail: Mapped[dict | None] = mapped_column(JSONB)
