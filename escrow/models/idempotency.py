from datetime import datetime

from sqlalchemy import LargeBinary, SmallInteger, String, text
from sqlalchemy.orm import Mapped, mapped_column

from escrow.models.base import Base


class IdempotencyKey(Base):
    """The first successful response to a state-changing request, stored in the transaction that made the change."""

    __tablename__ = "idempotency_keys"

    caller: Mapped[str] = mapped_column(String(100), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))  # hex SHA-256 of method, path, query and body
    status: Mapped[int] = mapped_column(SmallInteger)
    content_type: Mapped[str] = mapped_column(String(100))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    expires_at: Mapped[datetime] = mapped_column(index=True)
