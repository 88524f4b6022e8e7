"""Parties and access: banks, merchants, escrow accounts, consumers, sign-in codes, bank nonces, audit trail.

Revision ID: 0004_parties
Revises: 0003_api_tokens
Create Date: 2026-11-25 12:30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_parties"
down_revision: str | None = "0003_api_tokens"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_records",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("principal_id", sa.String(length=40), nullable=True),
        sa.Column("role", sa.String(length=20), nullable=True),
        sa.Column("action", sa.String(length=200), nullable=False),
        sa.Column("object_id", sa.String(length=80), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("detail", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_records")),
    )
    op.create_index(op.f("ix_audit_records_action"), "audit_records", ["action"], unique=False)
    op.create_index(op.f("ix_audit_records_at"), "audit_records", ["at"], unique=False)
    op.create_index(op.f("ix_audit_records_object_id"), "audit_records", ["object_id"], unique=False)
    op.create_index(op.f("ix_audit_records_principal_id"), "audit_records", ["principal_id"], unique=False)
    op.create_table(
        "bank_nonces",
        sa.Column("bank_id", sa.String(length=40), nullable=False),
        sa.Column("nonce", sa.String(length=128), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("bank_id", "nonce", name=op.f("pk_bank_nonces")),
    )
    op.create_index(op.f("ix_bank_nonces_seen_at"), "bank_nonces", ["seen_at"], unique=False)
    op.create_table(
        "banks",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("code", sa.String(length=20), nullable=False),
        sa.Column("signing_algorithm", sa.String(length=20), nullable=False),
        sa.Column("signing_secret_enc", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("signing_algorithm IN ('hmac-sha256', 'hmac-sm3')", name=op.f("ck_banks_signing_algorithm")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_banks")),
        sa.UniqueConstraint("code", name=op.f("uq_banks_code")),
    )
    op.create_table(
        "consumers",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("phone_hash", sa.String(length=64), nullable=False),
        sa.Column("phone_masked", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consumers")),
        sa.UniqueConstraint("phone_hash", name=op.f("uq_consumers_phone_hash")),
    )
    op.create_table(
        "merchants",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("category", sa.String(length=20), nullable=False),
        sa.Column("uscc", sa.String(length=18), nullable=False),
        sa.Column("credit_rating", sa.String(length=1), nullable=False),
        sa.Column("settlement_account_enc", sa.String(length=300), nullable=False),
        sa.Column("settlement_account_masked", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), server_default="active", nullable=False),
        sa.Column("opened_on", sa.Date(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("category IN ('gym', 'salon', 'training', 'other')", name=op.f("ck_merchants_category")),
        sa.CheckConstraint("credit_rating IN ('A', 'B', 'C', 'D')", name=op.f("ck_merchants_credit_rating")),
        sa.CheckConstraint("status IN ('active', 'suspended', 'closing', 'closed')", name=op.f("ck_merchants_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_merchants")),
        sa.UniqueConstraint("uscc", name=op.f("uq_merchants_uscc")),
    )
    op.create_table(
        "consumer_codes",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("consumer_id", sa.String(length=40), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("issued_by", sa.String(length=40), nullable=False),
        sa.Column("attempts", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["consumer_id"], ["consumers.id"], name=op.f("fk_consumer_codes_consumer_id_consumers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consumer_codes")),
    )
    op.create_index(op.f("ix_consumer_codes_consumer_id"), "consumer_codes", ["consumer_id"], unique=False)
    op.create_table(
        "consumer_links",
        sa.Column("consumer_id", sa.String(length=40), nullable=False),
        sa.Column("merchant_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["consumer_id"], ["consumers.id"], name=op.f("fk_consumer_links_consumer_id_consumers")
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"], name=op.f("fk_consumer_links_merchant_id_merchants")
        ),
        sa.PrimaryKeyConstraint("consumer_id", "merchant_id", name=op.f("pk_consumer_links")),
    )
    op.create_table(
        "escrow_accounts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("merchant_id", sa.String(length=40), nullable=False),
        sa.Column("bank_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), server_default="pending", nullable=False),
        sa.Column("bank_account_enc", sa.String(length=300), nullable=True),
        sa.Column("bank_account_masked", sa.String(length=40), nullable=True),
        sa.Column("rejection_reason", sa.String(length=500), nullable=True),
        sa.Column("freeze_reason", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'active', 'frozen', 'closed', 'rejected')", name=op.f("ck_escrow_accounts_status")
        ),
        sa.ForeignKeyConstraint(["bank_id"], ["banks.id"], name=op.f("fk_escrow_accounts_bank_id_banks")),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"], name=op.f("fk_escrow_accounts_merchant_id_merchants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_escrow_accounts")),
    )
    op.create_index(op.f("ix_escrow_accounts_bank_id"), "escrow_accounts", ["bank_id"], unique=False)
    op.create_index(op.f("ix_escrow_accounts_merchant_id"), "escrow_accounts", ["merchant_id"], unique=False)
    op.create_index(
        "uq_escrow_accounts_merchant_bank",
        "escrow_accounts",
        ["merchant_id", "bank_id"],
        unique=True,
        postgresql_where=sa.text("status NOT IN ('rejected', 'closed')"),
    )
    # the audit trail is append-only, like the journal
    op.execute(
        "CREATE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE ON audit_records"
        " FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records"
        " FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()"
    )


def downgrade() -> None:
    op.drop_index(
        "uq_escrow_accounts_merchant_bank",
        table_name="escrow_accounts",
        postgresql_where=sa.text("status NOT IN ('rejected', 'closed')"),
    )
    op.drop_index(op.f("ix_escrow_accounts_merchant_id"), table_name="escrow_accounts")
    op.drop_index(op.f("ix_escrow_accounts_bank_id"), table_name="escrow_accounts")
    op.drop_table("escrow_accounts")
    op.drop_table("consumer_links")
    op.drop_index(op.f("ix_consumer_codes_consumer_id"), table_name="consumer_codes")
    op.drop_table("consumer_codes")
    op.drop_table("merchants")
    op.drop_table("consumers")
    op.drop_table("banks")
    op.drop_index(op.f("ix_bank_nonces_seen_at"), table_name="bank_nonces")
    op.drop_table("bank_nonces")
    op.drop_index(op.f("ix_audit_records_principal_id"), table_name="audit_records")
    op.drop_index(op.f("ix_audit_records_object_id"), table_name="audit_records")
    op.drop_index(op.f("ix_audit_records_at"), table_name="audit_records")
    op.drop_index(op.f("ix_audit_records_action"), table_name="audit_records")
    op.drop_table("audit_records")
