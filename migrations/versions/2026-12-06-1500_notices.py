"""Notices to consumers (issue #13 §5): ``notices`` rows written with the movement they tell of, rendered into the SMS
outbox by a job; ``consumers.phone_enc`` keeps the phone (encrypted, context ``consumers.phone:<id>``) so that it
can be sent to.

Revision ID: 0011_notices
Revises: 0010_presence
Create Date: 2026-12-06 15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011_notices"
down_revision: str | None = "0010_presence"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("consumers", sa.Column("phone_enc", sa.String(length=200), nullable=True))
    op.create_table(
        "notices",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("consumer_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("card_id", sa.String(length=40), nullable=True),
        sa.Column(
            "params", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("dedup_key", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["consumer_id"], ["consumers.id"], name=op.f("fk_notices_consumer_id_consumers")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notices")),
        sa.UniqueConstraint("dedup_key", name=op.f("uq_notices_dedup_key")),
    )
    op.create_index(op.f("ix_notices_consumer_id"), "notices", ["consumer_id"], unique=False)
    op.create_index("ix_notices_due", "notices", ["id"], unique=False, postgresql_where=sa.text("queued_at IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_notices_due", table_name="notices")
    op.drop_index(op.f("ix_notices_consumer_id"), table_name="notices")
    op.drop_table("notices")
    op.drop_column("consumers", "phone_enc")
