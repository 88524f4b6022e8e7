"""Closure figures: a closure refund's part paid by the first-compensation fund (``refunds.from_fund``), so that
``merchant_owes`` is only what the merchant still owes the consumer; when every part of a closure item was
executed by the banks (``closure_items.paid_at``); when a recomputation of the plan changed a line
(``closure_items.revised_at``: lines keep their ids); instructions refer to existing closure items.

Revision ID: 0008_closure_figures
Revises: 0007_reconciliation
Create Date: 2026-12-08 12:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_closure_figures"
down_revision: str | None = "0007_reconciliation"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW_PARTS = (
    "amount >= 0 AND from_custody >= 0 AND set_off >= 0 AND from_fund >= 0 AND merchant_owes >= 0"
    " AND amount = from_custody + set_off + from_fund + merchant_owes"
)
OLD_PARTS = (
    "amount >= 0 AND from_custody >= 0 AND set_off >= 0 AND merchant_owes >= 0"
    " AND amount = from_custody + set_off + merchant_owes"
)


def upgrade() -> None:
    op.add_column("refunds", sa.Column("from_fund", sa.BigInteger(), server_default="0", nullable=False))
    op.drop_constraint(op.f("ck_refunds_amount_parts"), "refunds", type_="check")
    # closure refunds settled before: what the fund pays (now or when it has money) is no longer the merchant's
    op.execute(
        "UPDATE refunds r SET from_fund = i.fund_paid + i.fund_owed, merchant_owes = r.merchant_owes - i.fund_paid"
        " - i.fund_owed FROM closure_items i WHERE r.cause = 'closure' AND i.kind = 'card' AND i.refund_id = r.id"
        " AND i.fund_paid + i.fund_owed > 0"
    )
    op.create_check_constraint(op.f("ck_refunds_amount_parts"), "refunds", NEW_PARTS)
    op.add_column("closure_items", sa.Column("paid_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("closure_items", sa.Column("revised_at", sa.DateTime(timezone=True), nullable=True))
    # items settled before whose instructions were all executed (and nothing is owed by the fund) are paid
    op.execute(
        "UPDATE closure_items i SET paid_at = coalesce(i.done_at, now()) WHERE i.status = 'done'"
        " AND i.fund_owed_paid = i.fund_owed AND i.from_custody + i.set_off + i.fund_paid + i.fund_owed"
        " + i.transferred = (SELECT coalesce(sum(x.amount), 0) FROM instructions x"
        "   WHERE x.closure_item_id = i.id AND x.status = 'executed')"
    )
    op.create_foreign_key(
        op.f("fk_instructions_closure_item_id_closure_items"),
        "instructions",
        "closure_items",
        ["closure_item_id"],
        ["id"],
    )


def downgrade() -> None:
    op.drop_constraint(op.f("fk_instructions_closure_item_id_closure_items"), "instructions", type_="foreignkey")
    op.drop_column("closure_items", "revised_at")
    op.drop_column("closure_items", "paid_at")
    op.drop_constraint(op.f("ck_refunds_amount_parts"), "refunds", type_="check")
    op.execute("UPDATE refunds SET merchant_owes = merchant_owes + from_fund WHERE from_fund > 0")
    op.create_check_constraint(op.f("ck_refunds_amount_parts"), "refunds", OLD_PARTS)
    op.drop_column("refunds", "from_fund")
