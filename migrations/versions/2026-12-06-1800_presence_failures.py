"""Wrong presence codes per card, kept though their requests are refused, to bound guessing.

Revision ID: 0014_presence_failures
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014_presence_failures"
down_revision: str | None = "0013_complaints"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE presence_failures (
            id bigserial PRIMARY KEY,
            card_id varchar(40) NOT NULL,
            merchant_id varchar(40) NOT NULL,
            at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX ix_presence_failures_card_at ON presence_failures (card_id, at)")


def downgrade() -> None:
    op.execute("DROP TABLE presence_failures")
