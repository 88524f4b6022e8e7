"""Complaints (issue #14 §3): a consumer's complaint about a merchant, its answer within the deadline and the
regulator's mediation, kept flat so that warnings and grades can count them.

Revision ID: 0013_complaints
Revises: 0011_notices
Create Date: 2026-12-06 17:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_complaints"
down_revision: str | None = "0012_warnings"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "complaints",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("consumer_id", sa.String(length=40), nullable=False),
        sa.Column("merchant_id", sa.String(length=40), nullable=False),
        sa.Column("card_id", sa.String(length=40), nullable=True),
        sa.Column("consumption_id", sa.String(length=40), nullable=True),
        sa.Column("category", sa.String(length=30), nullable=False),
        sa.Column("text", sa.String(length=2000), nullable=False),
        sa.Column("state", sa.String(length=20), server_default="filed", nullable=False),
        sa.Column("filed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("answer_due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("answer", sa.String(length=2000), nullable=True),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=20), nullable=True),
        sa.Column("mediation_note", sa.String(length=2000), nullable=True),
        sa.Column("mediated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("mediated_by", sa.String(length=40), nullable=True),
        sa.CheckConstraint(
            "category IN ('service_not_delivered', 'refund_refused', 'closure', 'contract_terms', 'other')",
            name=op.f("ck_complaints_category"),
        ),
        sa.CheckConstraint("state IN ('filed', 'answered', 'mediated')", name=op.f("ck_complaints_state")),
        sa.CheckConstraint(
            "outcome IS NULL OR outcome IN ('upheld', 'partly_upheld', 'rejected')", name=op.f("ck_complaints_outcome")
        ),
        sa.CheckConstraint(
            "(state = 'mediated') = (outcome IS NOT NULL AND mediated_at IS NOT NULL)",
            name=op.f("ck_complaints_mediated"),
        ),
        sa.CheckConstraint("(answered_at IS NULL) = (answer IS NULL)", name=op.f("ck_complaints_answered")),
        sa.CheckConstraint("state <> 'answered' OR answered_at IS NOT NULL", name=op.f("ck_complaints_answered_state")),
        sa.ForeignKeyConstraint(["card_id"], ["cards.id"], name=op.f("fk_complaints_card_id_cards")),
        sa.ForeignKeyConstraint(["consumer_id"], ["consumers.id"], name=op.f("fk_complaints_consumer_id_consumers")),
        sa.ForeignKeyConstraint(
            ["consumption_id"], ["consumptions.id"], name=op.f("fk_complaints_consumption_id_consumptions")
        ),
        sa.ForeignKeyConstraint(["merchant_id"], ["merchants.id"], name=op.f("fk_complaints_merchant_id_merchants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_complaints")),
    )
    op.create_index("ix_complaints_merchant_filed", "complaints", ["merchant_id", "filed_at"], unique=False)
    op.create_index("ix_complaints_consumer", "complaints", ["consumer_id", "id"], unique=False)
    op.create_index(
        "ix_complaints_overdue",
        "complaints",
        ["answer_due_at"],
        unique=False,
        postgresql_where=sa.text("state = 'filed'"),
    )
    op.create_index(
        "ix_complaints_outcome",
        "complaints",
        ["merchant_id", "mediated_at"],
        unique=False,
        postgresql_where=sa.text("outcome IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_complaints_outcome", table_name="complaints")
    op.drop_index("ix_complaints_overdue", table_name="complaints")
    op.drop_index("ix_complaints_consumer", table_name="complaints")
    op.drop_index("ix_complaints_merchant_filed", table_name="complaints")
    op.drop_table("complaints")
