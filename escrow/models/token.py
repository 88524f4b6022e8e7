from datetime import datetime

from sqlalchemy import CheckConstraint, String, text
from sqlalchemy.orm import Mapped, mapped_column

from escrow.models.base import Base

ROLES = ("regulator", "bank", "merchant", "consumer")


class ApiToken(Base):
    """A bearer token; only its SHA-256 is stored, the secret is shown once when issued."""

    __tablename__ = "api_tokens"
    __table_args__ = (CheckConstraint("role IN ('regulator', 'bank', 'merchant', 'consumer')", name="role"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    role: Mapped[str] = mapped_column(String(20))
    principal_id: Mapped[str] = mapped_column(String(40), index=True)  # whom the token acts for
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # hex SHA-256 of the secret
    hint: Mapped[str] = mapped_column(String(20))  # readable prefix and last characters, for listings
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    revoked_at: Mapped[datetime | None]
