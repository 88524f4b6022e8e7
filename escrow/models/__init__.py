"""All tables on one metadata, so Alembic sees everything."""

from escrow.models.base import Base
from escrow.models.idempotency import IdempotencyKey
from escrow.models.token import ApiToken

__all__ = ["ApiToken", "Base", "IdempotencyKey"]
