"""Cards: plans, cards, services rendered, refunds, bank instructions, unapplied deposits, job runs; the
merchant's custody model.

Revision ID: 0005_cards
Revises: 0004_parties
Create Date: 2026-11-25 13:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_cards"
down_revision: str | None = "0004_parties"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_runs",
        sa.Column("job", sa.String(length=40), nullable=False),
        sa.Column("business_date", sa.Date(), nullable=False),
        sa.Column("ran_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("detail", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.PrimaryKeyConstraint("job", "business_date", name=op.f("pk_job_runs")),
    )
    op.create_table(
        "unapplied_deposits",
        sa.Column("bank_id", sa.String(length=40), nullable=False),
        sa.Column("bank_transaction_id", sa.String(length=100), nullable=False),
        sa.Column("payment_reference", sa.String(length=100), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=40), nullable=False),
        sa.Column("detail", sa.String(length=500), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("bank_id", "bank_transaction_id", name=op.f("pk_unapplied_deposits")),
    )
    op.create_table(
        "plans",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("merchant_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("price", sa.BigInteger(), nullable=False),
        sa.Column("units", sa.BigInteger(), nullable=False),
        sa.Column("list_unit_price", sa.BigInteger(), nullable=True),
        sa.Column("validity_days", sa.Integer(), nullable=False),
        sa.Column("terms", sa.Text(), server_default="", nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("kind <> 'stored_value' OR units >= price", name=op.f("ck_plans_face_value_covers_price")),
        sa.CheckConstraint("kind IN ('sessions', 'stored_value', 'period')", name=op.f("ck_plans_kind")),
        sa.CheckConstraint("list_unit_price IS NULL OR list_unit_price > 0", name=op.f("ck_plans_list_unit_price")),
        sa.CheckConstraint("price > 0", name=op.f("ck_plans_price")),
        sa.CheckConstraint("units > 0", name=op.f("ck_plans_units")),
        sa.CheckConstraint("validity_days > 0", name=op.f("ck_plans_validity_days")),
        sa.ForeignKeyConstraint(["merchant_id"], ["merchants.id"], name=op.f("fk_plans_merchant_id_merchants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plans")),
    )
    op.create_index(op.f("ix_plans_merchant_id"), "plans", ["merchant_id"], unique=False)
    op.create_table(
        "cards",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("merchant_id", sa.String(length=40), nullable=False),
        sa.Column("escrow_account_id", sa.String(length=40), nullable=False),
        sa.Column("plan_id", sa.String(length=40), nullable=False),
        sa.Column("consumer_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), server_default="awaiting_payment", nullable=False),
        sa.Column("price", sa.BigInteger(), nullable=False),
        sa.Column("units_total", sa.BigInteger(), nullable=False),
        sa.Column("units_used", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("custody_ratio_bp", sa.Integer(), nullable=False),
        sa.Column("protected_paid", sa.BigInteger(), nullable=False),
        sa.Column("consumed", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("released", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("refunded", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("protected_out", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("payment_reference", sa.String(length=40), nullable=False),
        sa.Column("deposit_transaction_id", sa.String(length=100), nullable=True),
        sa.Column("sold_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("starts_on", sa.Date(), nullable=True),
        sa.Column("valid_until", sa.Date(), nullable=True),
        sa.Column("days_settled", sa.Integer(), server_default="0", nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('awaiting_payment', 'active', 'exhausted', 'refunded', 'expired_refunded', 'closed_settled', 'transferred', 'cancelled')",
            name=op.f("ck_cards_status"),
        ),
        sa.CheckConstraint("custody_ratio_bp BETWEEN 0 AND 10000", name=op.f("ck_cards_custody_ratio_bp")),
        sa.CheckConstraint("protected_out BETWEEN 0 AND protected_paid", name=op.f("ck_cards_protected_out")),
        sa.CheckConstraint("protected_paid BETWEEN 0 AND price", name=op.f("ck_cards_protected_paid")),
        sa.CheckConstraint(
            "refunded >= 0 AND consumed >= 0 AND consumed + refunded <= price", name=op.f("ck_cards_conservation")
        ),
        sa.CheckConstraint("released >= 0 AND released <= consumed", name=op.f("ck_cards_released")),
        sa.CheckConstraint("units_used BETWEEN 0 AND units_total", name=op.f("ck_cards_units_used")),
        sa.ForeignKeyConstraint(["consumer_id"], ["consumers.id"], name=op.f("fk_cards_consumer_id_consumers")),
        sa.ForeignKeyConstraint(
            ["escrow_account_id"], ["escrow_accounts.id"], name=op.f("fk_cards_escrow_account_id_escrow_accounts")
        ),
        sa.ForeignKeyConstraint(["merchant_id"], ["merchants.id"], name=op.f("fk_cards_merchant_id_merchants")),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], name=op.f("fk_cards_plan_id_plans")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cards")),
        sa.UniqueConstraint("payment_reference", name=op.f("uq_cards_payment_reference")),
    )
    op.create_index("ix_cards_consumer", "cards", ["consumer_id"], unique=False)
    op.create_index("ix_cards_deposit_transaction_id", "cards", ["deposit_transaction_id"], unique=False)
    op.create_index(op.f("ix_cards_escrow_account_id"), "cards", ["escrow_account_id"], unique=False)
    op.create_index("ix_cards_merchant_status", "cards", ["merchant_id", "status"], unique=False)
    op.create_index(
        "ix_cards_valid_until", "cards", ["valid_until"], unique=False, postgresql_where=sa.text("status = 'active'")
    )
    op.create_table(
        "consumptions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("card_id", sa.String(length=40), nullable=False),
        sa.Column("escrow_account_id", sa.String(length=40), nullable=False),
        sa.Column("units", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("protected_amount", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("hold_entry_id", sa.BigInteger(), nullable=True),
        sa.Column("service_date", sa.Date(), nullable=True),
        sa.Column("note", sa.String(length=500), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("confirm_by", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.String(length=40), nullable=True),
        sa.Column("dispute_reason", sa.String(length=500), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending_confirmation', 'disputed', 'confirmed', 'voided')", name=op.f("ck_consumptions_status")
        ),
        sa.CheckConstraint(
            "amount >= 0 AND protected_amount BETWEEN 0 AND amount", name=op.f("ck_consumptions_amount")
        ),
        sa.CheckConstraint("units > 0", name=op.f("ck_consumptions_units")),
        sa.ForeignKeyConstraint(["card_id"], ["cards.id"], name=op.f("fk_consumptions_card_id_cards")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consumptions")),
    )
    op.create_index("ix_consumptions_card", "consumptions", ["card_id"], unique=False)
    op.create_index(
        "ix_consumptions_due",
        "consumptions",
        ["confirm_by"],
        unique=False,
        postgresql_where=sa.text("status = 'pending_confirmation'"),
    )
    op.create_table(
        "refunds",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("card_id", sa.String(length=40), nullable=False),
        sa.Column("escrow_account_id", sa.String(length=40), nullable=False),
        sa.Column("consumer_id", sa.String(length=40), nullable=False),
        sa.Column("cause", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("from_custody", sa.BigInteger(), nullable=False),
        sa.Column("set_off", sa.BigInteger(), nullable=False),
        sa.Column("merchant_owes", sa.BigInteger(), nullable=False),
        sa.Column("retained", sa.BigInteger(), nullable=False),
        sa.Column("computation", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("due_on", sa.Date(), nullable=True),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("cause IN ('cooling_off', 'consumer', 'merchant', 'expiry')", name=op.f("ck_refunds_cause")),
        sa.CheckConstraint(
            "status IN ('requested', 'approved', 'instructed', 'paid', 'rejected')", name=op.f("ck_refunds_status")
        ),
        sa.CheckConstraint(
            "amount >= 0 AND from_custody >= 0 AND set_off >= 0 AND merchant_owes >= 0 AND amount = from_custody + set_off + merchant_owes",
            name=op.f("ck_refunds_amount_parts"),
        ),
        sa.ForeignKeyConstraint(["card_id"], ["cards.id"], name=op.f("fk_refunds_card_id_cards")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refunds")),
    )
    op.create_index(op.f("ix_refunds_card_id"), "refunds", ["card_id"], unique=False)
    op.create_index(
        "ix_refunds_due",
        "refunds",
        ["due_on"],
        unique=False,
        postgresql_where=sa.text("status IN ('approved', 'instructed')"),
    )
    op.create_index(
        "uq_refunds_open_per_card",
        "refunds",
        ["card_id"],
        unique=True,
        postgresql_where=sa.text("status = 'requested'"),
    )
    op.create_table(
        "instructions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("escrow_account_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), server_default="pending", nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("beneficiary", sa.String(length=200), nullable=False),
        sa.Column("refund_id", sa.String(length=40), nullable=True),
        sa.Column("hold_entry_id", sa.BigInteger(), nullable=False),
        sa.Column("bank_transaction_id", sa.String(length=100), nullable=True),
        sa.Column("failure_reason", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('payout', 'refund')", name=op.f("ck_instructions_kind")),
        sa.CheckConstraint("status IN ('pending', 'executed', 'failed')", name=op.f("ck_instructions_status")),
        sa.CheckConstraint("amount > 0", name=op.f("ck_instructions_amount")),
        sa.ForeignKeyConstraint(
            ["escrow_account_id"],
            ["escrow_accounts.id"],
            name=op.f("fk_instructions_escrow_account_id_escrow_accounts"),
        ),
        sa.ForeignKeyConstraint(["refund_id"], ["refunds.id"], name=op.f("fk_instructions_refund_id_refunds")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instructions")),
    )
    op.create_index("ix_instructions_account_status", "instructions", ["escrow_account_id", "status"], unique=False)
    op.create_index(
        "uq_instructions_refund_open",
        "instructions",
        ["refund_id"],
        unique=True,
        postgresql_where=sa.text("status <> 'failed'"),
    )
    op.add_column("merchants", sa.Column("custody_model", sa.String(length=10), server_default="full", nullable=False))
    op.create_check_constraint(op.f("ck_merchants_custody_model"), "merchants", "custody_model IN ('full', 'ratio')")


def downgrade() -> None:
    op.drop_constraint(op.f("ck_merchants_custody_model"), "merchants", type_="check")
    op.drop_column("merchants", "custody_model")
    op.drop_index(
        "uq_instructions_refund_open", table_name="instructions", postgresql_where=sa.text("status <> 'failed'")
    )
    op.drop_index("ix_instructions_account_status", table_name="instructions")
    op.drop_table("instructions")
    op.drop_index("uq_refunds_open_per_card", table_name="refunds", postgresql_where=sa.text("status = 'requested'"))
    op.drop_index(
        "ix_refunds_due", table_name="refunds", postgresql_where=sa.text("status IN ('approved', 'instructed')")
    )
    op.drop_index(op.f("ix_refunds_card_id"), table_name="refunds")
    op.drop_table("refunds")
    op.drop_index(
        "ix_consumptions_due", table_name="consumptions", postgresql_where=sa.text("status = 'pending_confirmation'")
    )
    op.drop_index("ix_consumptions_card", table_name="consumptions")
    op.drop_table("consumptions")
    op.drop_index("ix_cards_valid_until", table_name="cards", postgresql_where=sa.text("status = 'active'"))
    op.drop_index("ix_cards_merchant_status", table_name="cards")
    op.drop_index(op.f("ix_cards_escrow_account_id"), table_name="cards")
    op.drop_index("ix_cards_deposit_transaction_id", table_name="cards")
    op.drop_index("ix_cards_consumer", table_name="cards")
    op.drop_table("cards")
    op.drop_index(op.f("ix_plans_merchant_id"), table_name="plans")
    op.drop_table("plans")
    op.drop_table("unapplied_deposits")
    op.drop_table("job_runs")
