"""Credit grades (issue #14 §2): the regulator's penalties, the history of computed grades, and overrides.

Revision ID: 0015_credit
Revises: 0014_presence_failures
Create Date: 2026-12-06 19:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015_credit"
down_revision: str | None = "0014_presence_failures"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GRADES = "('A', 'B', 'C', 'D')"


def upgrade() -> None:
    op.create_table(
        "penalties",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("merchant_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("decided_on", sa.Date(), nullable=False),
        sa.Column("decision_number", sa.String(length=100), nullable=False),
        sa.Column("major", sa.Boolean(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("recorded_by", sa.String(length=40), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "kind IN ('warning', 'fine', 'confiscation', 'suspension', 'licence_revoked', 'other')",
            name=op.f("ck_penalties_kind"),
        ),
        sa.ForeignKeyConstraint(["merchant_id"], ["merchants.id"], name=op.f("fk_penalties_merchant_id_merchants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_penalties")),
        sa.UniqueConstraint("merchant_id", "decision_number", name="uq_penalties_merchant_decision"),
    )
    op.create_index("ix_penalties_merchant_decided", "penalties", ["merchant_id", "decided_on"])
    op.create_table(
        "credit_grades",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("merchant_id", sa.String(length=40), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("grade", sa.String(length=1), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("factors", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("effective_grade", sa.String(length=1), nullable=False),
        sa.Column("white_list", sa.Boolean(), nullable=False),
        sa.Column("white_list_reasons", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.CheckConstraint(f"grade IN {GRADES}", name=op.f("ck_credit_grades_grade")),
        sa.CheckConstraint(f"effective_grade IN {GRADES}", name=op.f("ck_credit_grades_effective_grade")),
        sa.CheckConstraint("score BETWEEN 0 AND 100", name=op.f("ck_credit_grades_score")),
        sa.ForeignKeyConstraint(["merchant_id"], ["merchants.id"], name=op.f("fk_credit_grades_merchant_id_merchants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_grades")),
    )
    op.create_index("ix_credit_grades_merchant_computed", "credit_grades", ["merchant_id", "computed_at"])
    op.create_table(
        "credit_overrides",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("merchant_id", sa.String(length=40), nullable=False),
        sa.Column("grade", sa.String(length=1), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("lapses_on", sa.Date(), nullable=False),
        sa.Column("previous_rating", sa.String(length=1), nullable=False),
        sa.Column("set_by", sa.String(length=40), nullable=False),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lapsed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(f"grade IN {GRADES}", name=op.f("ck_credit_overrides_grade")),
        sa.CheckConstraint(f"previous_rating IN {GRADES}", name=op.f("ck_credit_overrides_previous_rating")),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"], name=op.f("fk_credit_overrides_merchant_id_merchants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_overrides")),
    )
    op.create_index("ix_credit_overrides_merchant_set", "credit_overrides", ["merchant_id", "set_at"])
    op.create_index(
        "ix_credit_overrides_lapsing",
        "credit_overrides",
        ["lapses_on"],
        postgresql_where=sa.text("lapsed_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_credit_overrides_lapsing", table_name="credit_overrides")
    op.drop_index("ix_credit_overrides_merchant_set", table_name="credit_overrides")
    op.drop_table("credit_overrides")
    op.drop_index("ix_credit_grades_merchant_computed", table_name="credit_grades")
    op.drop_table("credit_grades")
    op.drop_index("ix_penalties_merchant_decided", table_name="penalties")
    op.drop_table("penalties")
