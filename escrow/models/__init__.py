"""All tables on one metadata, so Alembic sees everything."""

from escrow.models.base import Base
from escrow.models.idempotency import IdempotencyKey

__all__ = ["Base", "IdempotencyKey"]
