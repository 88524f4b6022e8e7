"""Reconciliation: bank statements and their lines, the custody movements of the ledger they are matched
against, matches, breaks, and the matching state per escrow account; statement lines are append-only and a
statement's content can't change once stored.

Revision ID: 0007_reconciliation
Revises: 0006_closures
Create Date: 2026-12-01 12:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from escrow.migrate import run_script

revision: str = "0007_reconciliation"
down_revision: str | None = "0006_closures"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "custody_movements",
        sa.Column("posting_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("entry_id", sa.BigInteger(), nullable=False),
        sa.Column("escrow_account_id", sa.String(length=40), nullable=False),
        sa.Column("direction", sa.String(length=6), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("business_date", sa.Date(), nullable=False),
        sa.Column("entry_kind", sa.String(length=64), nullable=False),
        sa.Column("service_ref", sa.String(length=100), nullable=True),
        sa.Column("bank_ref", sa.String(length=100), nullable=True),
        sa.CheckConstraint("direction IN ('credit', 'debit')", name=op.f("ck_custody_movements_direction")),
        sa.CheckConstraint("amount > 0 AND amount < 1000000000000000", name=op.f("ck_custody_movements_amount")),
        sa.PrimaryKeyConstraint("posting_id", name=op.f("pk_custody_movements")),
    )
    op.create_index(
        "ix_custody_movements_account_date", "custody_movements", ["escrow_account_id", "business_date"], unique=False
    )
    op.create_table(
        "bank_statements",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("escrow_account_id", sa.String(length=40), nullable=False),
        sa.Column("bank_id", sa.String(length=40), nullable=False),
        sa.Column("business_date", sa.Date(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("format", sa.String(length=10), nullable=False),
        sa.Column("bank_statement_id", sa.String(length=100), nullable=True),
        sa.Column("message_id", sa.String(length=100), nullable=True),
        sa.Column("opening_balance", sa.BigInteger(), nullable=False),
        sa.Column("closing_balance", sa.BigInteger(), nullable=False),
        sa.Column("line_count", sa.Integer(), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("debits", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("received_by", sa.String(length=40), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("superseded_by", sa.String(length=40), nullable=True),
        sa.Column("ledger_opening", sa.BigInteger(), nullable=True),
        sa.Column("ledger_closing", sa.BigInteger(), nullable=True),
        sa.Column("expected_opening", sa.BigInteger(), nullable=True),
        sa.Column("expected_closing", sa.BigInteger(), nullable=True),
        sa.Column("accepted_opening", sa.BigInteger(), nullable=True),
        sa.Column("accepted_closing", sa.BigInteger(), nullable=True),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(status = 'superseded') = (superseded_at IS NOT NULL)", name=op.f("ck_bank_statements_superseded")
        ),
        sa.CheckConstraint("format IN ('json', 'camt053')", name=op.f("ck_bank_statements_format")),
        sa.CheckConstraint("status IN ('current', 'superseded')", name=op.f("ck_bank_statements_status")),
        sa.CheckConstraint("line_count >= 0 AND credits >= 0 AND debits >= 0", name=op.f("ck_bank_statements_totals")),
        sa.CheckConstraint(
            "opening_balance + credits - debits = closing_balance", name=op.f("ck_bank_statements_balances_add_up")
        ),
        sa.CheckConstraint("version >= 1", name=op.f("ck_bank_statements_version")),
        sa.ForeignKeyConstraint(["bank_id"], ["banks.id"], name=op.f("fk_bank_statements_bank_id_banks")),
        sa.ForeignKeyConstraint(
            ["escrow_account_id"],
            ["escrow_accounts.id"],
            name=op.f("fk_bank_statements_escrow_account_id_escrow_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bank_statements")),
    )
    op.create_index(
        "uq_bank_statements_current",
        "bank_statements",
        ["escrow_account_id", "business_date"],
        unique=True,
        postgresql_where=sa.text("status = 'current'"),
    )
    op.create_index(
        "uq_bank_statements_version", "bank_statements", ["escrow_account_id", "business_date", "version"], unique=True
    )
    op.create_table(
        "reconciliation_accounts",
        sa.Column("escrow_account_id", sa.String(length=40), nullable=False),
        sa.Column("synced_xmin", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("runs", sa.Integer(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["escrow_account_id"],
            ["escrow_accounts.id"],
            name=op.f("fk_reconciliation_accounts_escrow_account_id_escrow_accounts"),
        ),
        sa.PrimaryKeyConstraint("escrow_account_id", name=op.f("pk_reconciliation_accounts")),
    )
    op.create_table(
        "bank_statement_lines",
        sa.Column("statement_id", sa.String(length=40), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("escrow_account_id", sa.String(length=40), nullable=False),
        sa.Column("bank_transaction_id", sa.String(length=100), nullable=False),
        sa.Column("end_to_end_id", sa.String(length=100), nullable=True),
        sa.Column("direction", sa.String(length=6), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("value_date", sa.Date(), nullable=False),
        sa.Column("booking_date", sa.Date(), nullable=False),
        sa.Column("text", sa.String(length=500), nullable=True),
        sa.CheckConstraint("direction IN ('credit', 'debit')", name=op.f("ck_bank_statement_lines_direction")),
        sa.CheckConstraint("amount > 0 AND amount < 1000000000000000", name=op.f("ck_bank_statement_lines_amount")),
        sa.CheckConstraint("line_no >= 1", name=op.f("ck_bank_statement_lines_line_no")),
        sa.ForeignKeyConstraint(
            ["statement_id"],
            ["bank_statements.id"],
            name=op.f("fk_bank_statement_lines_statement_id_bank_statements"),
            deferrable=True,
            initially="DEFERRED",
        ),
        sa.PrimaryKeyConstraint("statement_id", "line_no", name=op.f("pk_bank_statement_lines")),
    )
    op.create_table(
        "reconciliation_breaks",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("escrow_account_id", sa.String(length=40), nullable=False),
        sa.Column("bank_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("state", sa.String(length=10), server_default="open", nullable=False),
        sa.Column("owner", sa.String(length=10), nullable=False),
        sa.Column("business_date", sa.Date(), nullable=False),
        sa.Column("statement_id", sa.String(length=40), nullable=True),
        sa.Column("line_no", sa.Integer(), nullable=True),
        sa.Column("posting_id", sa.BigInteger(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("detected_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.String(length=40), nullable=True),
        sa.Column("resolution", sa.String(length=20), nullable=True),
        sa.Column("note", sa.String(length=1000), nullable=True),
        sa.Column("adjustment_entry_id", sa.BigInteger(), nullable=True),
        sa.Column("card_id", sa.String(length=40), nullable=True),
        sa.CheckConstraint(
            "(state = 'resolved') = (resolution IS NOT NULL AND resolved_at IS NOT NULL)",
            name=op.f("ck_reconciliation_breaks_resolved"),
        ),
        sa.CheckConstraint(
            "CASE kind WHEN 'not_in_ledger' THEN line_no IS NOT NULL AND posting_id IS NULL WHEN 'amount_mismatch' THEN line_no IS NOT NULL AND posting_id IS NOT NULL WHEN 'not_on_statement' THEN line_no IS NULL AND posting_id IS NOT NULL ELSE line_no IS NULL AND posting_id IS NULL END",
            name=op.f("ck_reconciliation_breaks_subject"),
        ),
        sa.CheckConstraint("amount <> 0 OR state = 'resolved'", name=op.f("ck_reconciliation_breaks_amount")),
        sa.CheckConstraint(
            "kind IN ('amount_mismatch', 'not_in_ledger', 'not_on_statement', 'balance_mismatch')",
            name=op.f("ck_reconciliation_breaks_kind"),
        ),
        sa.CheckConstraint("owner IN ('bank', 'regulator')", name=op.f("ck_reconciliation_breaks_owner")),
        sa.CheckConstraint(
            "resolution IS NULL OR resolution IN ('accepted', 'adjusted', 'attached', 'cleared', 'superseded')",
            name=op.f("ck_reconciliation_breaks_resolution"),
        ),
        sa.CheckConstraint(
            "resolution NOT IN ('accepted', 'adjusted', 'attached') OR note IS NOT NULL",
            name=op.f("ck_reconciliation_breaks_note"),
        ),
        sa.CheckConstraint("state IN ('open', 'resolved')", name=op.f("ck_reconciliation_breaks_state")),
        sa.ForeignKeyConstraint(["bank_id"], ["banks.id"], name=op.f("fk_reconciliation_breaks_bank_id_banks")),
        sa.ForeignKeyConstraint(["card_id"], ["cards.id"], name=op.f("fk_reconciliation_breaks_card_id_cards")),
        sa.ForeignKeyConstraint(
            ["escrow_account_id"],
            ["escrow_accounts.id"],
            name=op.f("fk_reconciliation_breaks_escrow_account_id_escrow_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["posting_id"],
            ["custody_movements.posting_id"],
            name=op.f("fk_reconciliation_breaks_posting_id_custody_movements"),
        ),
        sa.ForeignKeyConstraint(
            ["statement_id", "line_no"],
            ["bank_statement_lines.statement_id", "bank_statement_lines.line_no"],
            name="fk_reconciliation_breaks_line",
        ),
        sa.ForeignKeyConstraint(
            ["statement_id"], ["bank_statements.id"], name=op.f("fk_reconciliation_breaks_statement_id_bank_statements")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_breaks")),
    )
    op.create_index(
        "ix_reconciliation_breaks_open",
        "reconciliation_breaks",
        ["escrow_account_id", "business_date"],
        unique=False,
        postgresql_where=sa.text("state = 'open'"),
    )
    op.create_index(
        "uq_reconciliation_breaks_balance",
        "reconciliation_breaks",
        ["statement_id"],
        unique=True,
        postgresql_where=sa.text("kind = 'balance_mismatch'"),
    )
    op.create_index(
        "uq_reconciliation_breaks_line",
        "reconciliation_breaks",
        ["statement_id", "line_no"],
        unique=True,
        postgresql_where=sa.text("line_no IS NOT NULL"),
    )
    op.create_index(
        "uq_reconciliation_breaks_movement",
        "reconciliation_breaks",
        ["posting_id"],
        unique=True,
        postgresql_where=sa.text("kind = 'not_on_statement'"),
    )
    op.create_table(
        "reconciliation_matches",
        sa.Column("posting_id", sa.BigInteger(), nullable=False),
        sa.Column("escrow_account_id", sa.String(length=40), nullable=False),
        sa.Column("statement_id", sa.String(length=40), nullable=True),
        sa.Column("line_no", sa.Integer(), nullable=True),
        sa.Column("rule", sa.String(length=20), nullable=False),
        sa.Column("break_id", sa.String(length=40), nullable=True),
        sa.Column("matched_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "CASE rule WHEN 'offset' THEN statement_id IS NULL AND break_id IS NOT NULL WHEN 'adjustment' THEN statement_id IS NOT NULL AND break_id IS NOT NULL WHEN 'attached' THEN line_no IS NOT NULL AND break_id IS NOT NULL ELSE line_no IS NOT NULL AND break_id IS NULL END",
            name=op.f("ck_reconciliation_matches_target"),
        ),
        sa.CheckConstraint(
            "rule IN ('service_reference', 'bank_reference', 'amount_date', 'adjustment', 'attached', 'offset')",
            name=op.f("ck_reconciliation_matches_rule"),
        ),
        sa.CheckConstraint("line_no IS NULL OR statement_id IS NOT NULL", name=op.f("ck_reconciliation_matches_line")),
        sa.ForeignKeyConstraint(
            ["break_id"],
            ["reconciliation_breaks.id"],
            name=op.f("fk_reconciliation_matches_break_id_reconciliation_breaks"),
        ),
        sa.ForeignKeyConstraint(
            ["posting_id"],
            ["custody_movements.posting_id"],
            name=op.f("fk_reconciliation_matches_posting_id_custody_movements"),
        ),
        sa.ForeignKeyConstraint(
            ["statement_id", "line_no"],
            ["bank_statement_lines.statement_id", "bank_statement_lines.line_no"],
            name="fk_reconciliation_matches_line",
        ),
        sa.ForeignKeyConstraint(
            ["statement_id"],
            ["bank_statements.id"],
            name=op.f("fk_reconciliation_matches_statement_id_bank_statements"),
        ),
        sa.PrimaryKeyConstraint("posting_id", name=op.f("pk_reconciliation_matches")),
    )
    op.create_index(
        "uq_reconciliation_matches_primary",
        "reconciliation_matches",
        ["statement_id", "line_no"],
        unique=True,
        postgresql_where=sa.text("rule IN ('service_reference', 'bank_reference', 'amount_date', 'attached')"),
    )
    # a line's state and a statement's replacement read matches by line, whatever their rule; runs by account
    op.create_index("ix_reconciliation_matches_line", "reconciliation_matches", ["statement_id", "line_no"])
    op.create_index("ix_reconciliation_matches_account", "reconciliation_matches", ["escrow_account_id"])
    run_script(op.get_bind(), EVIDENCE)


# What the bank sent is evidence: lines are never changed or deleted, and a statement keeps its content (only its
# status moves from current to superseded, once, and the matching run rewrites its balance check).
EVIDENCE = r"""
CREATE FUNCTION reconciliation_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % refused: bank statements are evidence and are never changed', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'check_violation', CONSTRAINT = 'statement_evidence';
END $$;
CREATE TRIGGER bank_statement_lines_append_only BEFORE UPDATE OR DELETE ON bank_statement_lines
    FOR EACH ROW EXECUTE FUNCTION reconciliation_refuse_change();
CREATE TRIGGER bank_statement_lines_no_truncate BEFORE TRUNCATE ON bank_statement_lines
    FOR EACH STATEMENT EXECUTE FUNCTION reconciliation_refuse_change();
CREATE TRIGGER bank_statements_no_delete BEFORE DELETE ON bank_statements
    FOR EACH ROW EXECUTE FUNCTION reconciliation_refuse_change();
CREATE TRIGGER bank_statements_content_fixed BEFORE UPDATE ON bank_statements
    FOR EACH ROW WHEN ((NEW.id, NEW.escrow_account_id, NEW.bank_id, NEW.business_date, NEW.version, NEW.format,
                        NEW.opening_balance, NEW.closing_balance, NEW.line_count, NEW.credits, NEW.debits,
                        NEW.digest, NEW.received_at)
                       IS DISTINCT FROM (OLD.id, OLD.escrow_account_id, OLD.bank_id, OLD.business_date,
                                         OLD.version, OLD.format, OLD.opening_balance, OLD.closing_balance,
                                         OLD.line_count, OLD.credits, OLD.debits, OLD.digest, OLD.received_at)
                       OR (OLD.status = 'superseded' AND NEW.status <> 'superseded'))
    EXECUTE FUNCTION reconciliation_refuse_change();
"""


def downgrade() -> None:
    op.execute("DROP TRIGGER bank_statements_content_fixed ON bank_statements")
    op.execute("DROP TRIGGER bank_statements_no_delete ON bank_statements")
    op.drop_index("ix_reconciliation_matches_account", table_name="reconciliation_matches")
    op.drop_index("ix_reconciliation_matches_line", table_name="reconciliation_matches")
    op.drop_index(
        "uq_reconciliation_matches_primary",
        table_name="reconciliation_matches",
        postgresql_where=sa.text("rule IN ('service_reference', 'bank_reference', 'amount_date', 'attached')"),
    )
    op.drop_table("reconciliation_matches")
    op.drop_index(
        "uq_reconciliation_breaks_movement",
        table_name="reconciliation_breaks",
        postgresql_where=sa.text("kind = 'not_on_statement'"),
    )
    op.drop_index(
        "uq_reconciliation_breaks_line",
        table_name="reconciliation_breaks",
        postgresql_where=sa.text("line_no IS NOT NULL"),
    )
    op.drop_index(
        "uq_reconciliation_breaks_balance",
        table_name="reconciliation_breaks",
        postgresql_where=sa.text("kind = 'balance_mismatch'"),
    )
    op.drop_index(
        "ix_reconciliation_breaks_open", table_name="reconciliation_breaks", postgresql_where=sa.text("state = 'open'")
    )
    op.drop_table("reconciliation_breaks")
    op.drop_table("bank_statement_lines")
    op.drop_table("reconciliation_accounts")
    op.drop_index("uq_bank_statements_version", table_name="bank_statements")
    op.drop_index(
        "uq_bank_statements_current", table_name="bank_statements", postgresql_where=sa.text("status = 'current'")
    )
    op.drop_table("bank_statements")
    op.drop_index("ix_custody_movements_account_date", table_name="custody_movements")
    op.drop_table("custody_movements")
    op.execute("DROP FUNCTION reconciliation_refuse_change()")
