"""Consumer channel: sign-in codes go to the phone by SMS, never to a merchant (issue #13 §1).

``consumer_codes`` are keyed by the phone's look-up hash (an unknown phone becomes a consumer only when it signs
in), text messages leave through a transactional outbox (``sms_outbox``; ``sms_sink`` keeps them in development),
code requests are counted per phone and per address in ``rate_counts``, and every audit record names the token
that acted (``audit_records.token_id``).

Revision ID: 0009_consumer_channel
Revises: 0008_closure_figures
Create Date: 2026-12-06 13:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_consumer_channel"
down_revision: str | None = "0008_closure_figures"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # codes by phone: existing ones are of known consumers
    op.add_column("consumer_codes", sa.Column("phone_hash", sa.String(length=64), nullable=True))
    op.execute("UPDATE consumer_codes k SET phone_hash = c.phone_hash FROM consumers c WHERE c.id = k.consumer_id")
    op.alter_column("consumer_codes", "phone_hash", nullable=False)
    op.create_index(op.f("ix_consumer_codes_phone_hash"), "consumer_codes", ["phone_hash"], unique=False)
    op.drop_index(op.f("ix_consumer_codes_consumer_id"), table_name="consumer_codes")
    op.drop_constraint(op.f("fk_consumer_codes_consumer_id_consumers"), "consumer_codes", type_="foreignkey")
    op.drop_column("consumer_codes", "consumer_id")

    op.create_table(
        "sms_outbox",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("dedup_key", sa.String(length=200), nullable=False),
        sa.Column("phone_enc", sa.String(length=200), nullable=False),
        sa.Column("phone_hash", sa.String(length=64), nullable=False),
        sa.Column("text", sa.String(length=500), nullable=False),
        sa.Column("status", sa.String(length=10), server_default="pending", nullable=False),
        sa.Column("attempts", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'sent', 'dead')", name=op.f("ck_sms_outbox_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sms_outbox")),
        sa.UniqueConstraint("dedup_key", name=op.f("uq_sms_outbox_dedup_key")),
    )
    op.create_index(op.f("ix_sms_outbox_phone_hash"), "sms_outbox", ["phone_hash"], unique=False)
    op.create_index(
        "ix_sms_outbox_due", "sms_outbox", ["next_attempt_at"], unique=False, postgresql_where=sa.text("status = 'pending'")
    )
    op.create_table(
        "sms_sink",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("phone_masked", sa.String(length=20), nullable=False),
        sa.Column("phone_hash", sa.String(length=64), nullable=False),
        sa.Column("text", sa.String(length=500), nullable=False),
        sa.Column("request_id", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sms_sink")),
    )
    op.create_index(op.f("ix_sms_sink_phone_hash"), "sms_sink", ["phone_hash"], unique=False)
    op.create_table(
        "rate_counts",
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("kind", "key", "window_start", name=op.f("pk_rate_counts")),
    )
    op.create_index(op.f("ix_rate_counts_window_start"), "rate_counts", ["window_start"], unique=False)

    op.add_column("audit_records", sa.Column("token_id", sa.String(length=40), nullable=True))
    op.create_index(op.f("ix_audit_records_token_id"), "audit_records", ["token_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_records_token_id"), table_name="audit_records")
    # the append-only trigger refuses UPDATE and DELETE, not a dropped column
    op.drop_column("audit_records", "token_id")

    op.drop_index(op.f("ix_rate_counts_window_start"), table_name="rate_counts")
    op.drop_table("rate_counts")
    op.drop_index(op.f("ix_sms_sink_phone_hash"), table_name="sms_sink")
    op.drop_table("sms_sink")
    op.drop_index("ix_sms_outbox_due", table_name="sms_outbox")
    op.drop_index(op.f("ix_sms_outbox_phone_hash"), table_name="sms_outbox")
    op.drop_table("sms_outbox")

    # codes of phones that are not (yet) consumers can't be kept by consumer
    op.add_column("consumer_codes", sa.Column("consumer_id", sa.String(length=40), nullable=True))
    op.execute("UPDATE consumer_codes k SET consumer_id = c.id FROM consumers c WHERE c.phone_hash = k.phone_hash")
    op.execute("DELETE FROM consumer_codes WHERE consumer_id IS NULL")
    op.alter_column("consumer_codes", "consumer_id", nullable=False)
    op.create_foreign_key(
        op.f("fk_consumer_codes_consumer_id_consumers"), "consumer_codes", "consumers", ["consumer_id"], ["id"]
    )
    op.create_index(op.f("ix_consumer_codes_consumer_id"), "consumer_codes", ["consumer_id"], unique=False)
    op.drop_index(op.f("ix_consumer_codes_phone_hash"), table_name="consumer_codes")
    op.drop_column("consumer_codes", "phone_hash")
