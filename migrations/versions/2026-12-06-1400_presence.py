"""Presence codes (核销): the last time step whose presence code confirmed services on a card
(``cards.presence_step``), so that a code is not accepted twice. A service confirmed by a presence code is
``resolved_by = 'presence'`` (the column already says how a service was confirmed: consumer, auto, schedule, or the
resolver's id).

Revision ID: 0010_presence
Revises: 0008_closure_figures
Create Date: 2026-12-06 14:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_presence"
down_revision: str | None = "0009_consumer_channel"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("cards", sa.Column("presence_step", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("cards", "presence_step")
