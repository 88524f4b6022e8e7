"""Early warnings (issue #14 §1): ``merchants.region`` (county-level 行政区划代码) and the ``warnings`` table, one
live warning per merchant and signal kind.

Revision ID: 0012_warnings
Revises: 0011_notices
Create Date: 2026-12-06 16:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012_warnings"
down_revision: str | None = "0011_notices"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = (
    "sales_surge",
    "deep_discount",
    "service_collapse",
    "unprotected_exposure",
    "refund_rate",
    "dispute_rate",
    "refund_overdue",
    "presence",
    "money_trail",
)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.add_column("merchants", sa.Column("region", sa.String(length=6), nullable=True))
    op.create_index(op.f("ix_merchants_region"), "merchants", ["region"], unique=False)
    op.create_table(
        "warnings",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("merchant_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=30), nullable=False),
        sa.Column("level", sa.String(length=10), nullable=False),
        sa.Column("figures", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("period_end", sa.Date(), nullable=False),
        sa.Column("state", sa.String(length=12), server_default="open", nullable=False),
        sa.Column("notes", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False),
        sa.Column("runs", sa.Integer(), server_default="1", nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("last_raised_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closing_note", sa.Text(), nullable=True),
        sa.CheckConstraint(_in("kind", KINDS), name=op.f("ck_warnings_kind")),
        sa.CheckConstraint("level IN ('attention', 'alert')", name=op.f("ck_warnings_level")),
        sa.CheckConstraint(
            "state IN ('open', 'acknowledged', 'resolved', 'escalated')", name=op.f("ck_warnings_state")
        ),
        sa.CheckConstraint("period_start <= period_end", name=op.f("ck_warnings_period")),
        sa.ForeignKeyConstraint(["merchant_id"], ["merchants.id"], name=op.f("fk_warnings_merchant_id_merchants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_warnings")),
    )
    op.create_index(op.f("ix_warnings_merchant_id"), "warnings", ["merchant_id"], unique=False)
    op.create_index("ix_warnings_state_kind", "warnings", ["state", "kind"], unique=False)
    op.create_index(
        "uq_warnings_live_per_merchant_kind",
        "warnings",
        ["merchant_id", "kind"],
        unique=True,
        postgresql_where=sa.text("state IN ('open', 'acknowledged', 'escalated')"),
    )


def downgrade() -> None:
    op.drop_index("uq_warnings_live_per_merchant_kind", table_name="warnings")
    op.drop_index("ix_warnings_state_kind", table_name="warnings")
    op.drop_index(op.f("ix_warnings_merchant_id"), table_name="warnings")
    op.drop_table("warnings")
    op.drop_index(op.f("ix_merchants_region"), table_name="merchants")
    op.drop_column("merchants", "region")
