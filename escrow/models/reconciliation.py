"""Bank reconciliation: the banks' daily statements and their lines, the ledger's custody movements they are
matched against, the matches, and the breaks left over with their resolution.

Amounts are integer fen. Statement lines are evidence: once stored they are never changed (a trigger refuses
it); a corrected statement is a new version beside the old one. ``custody_movements`` is a projection of the
journal's posted ``custody_cash`` postings (one row per posting, filled by the matching run) so that matching
is a join of two plain tables; the journal stays the only source of balances.
"""

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from escrow.models.base import Base
from escrow.models.party import _in

STATEMENT_FORMATS = ("json", "camt053")
STATEMENT_STATES = ("current", "superseded")
DIRECTIONS = ("credit", "debit")  # as the bank books it: credit = money into the escrow account
# how a movement came to be linked to a line: the three automatic rules in the order they run, and the links a
# resolution makes (an adjusting entry, a deposit attached to a card, a pair of entries that cancel out)
MATCH_RULES = ("service_reference", "bank_reference", "amount_date", "adjustment", "attached", "offset")
PRIMARY_RULES = ("service_reference", "bank_reference", "amount_date", "attached")  # at most one per line
BREAK_KINDS = ("amount_mismatch", "not_in_ledger", "not_on_statement", "balance_mismatch")
BREAK_STATES = ("open", "resolved")
# accepted: the regulator explained it with a note; adjusted: an adjusting entry made the ledger agree;
# attached: an unmatched deposit paid a card awaiting payment; cleared: a later matching run found it agrees
# after all (a late report, the missing line on a later statement); superseded: its statement was corrected
RESOLUTIONS = ("accepted", "adjusted", "attached", "cleared", "superseded")
OWNERS = ("bank", "regulator")


def _max_fen(column: str) -> str:
    return f"{column} > 0 AND {column} < 1000000000000000"


class BankStatement(Base):
    """One bank's statement of one escrow account for one business date, in one version.

    Re-sending the same content changes nothing; different content for the same account and date is a
    correction: a new version becomes ``current`` and the earlier one is kept, ``superseded``. The ``ledger_*``,
    ``expected_*`` and ``accepted_*`` columns are the balance check of the latest matching run."""

    __tablename__ = "bank_statements"
    __table_args__ = (
        CheckConstraint(_in("format", STATEMENT_FORMATS), name="format"),
        CheckConstraint(_in("status", STATEMENT_STATES), name="status"),
        CheckConstraint("version >= 1", name="version"),
        CheckConstraint("line_count >= 0 AND credits >= 0 AND debits >= 0", name="totals"),
        # the bank's own arithmetic: what it says it booked takes the opening balance to the closing one
        CheckConstraint("opening_balance + credits - debits = closing_balance", name="balances_add_up"),
        CheckConstraint("(status = 'superseded') = (superseded_at IS NOT NULL)", name="superseded"),
        Index("uq_bank_statements_version", "escrow_account_id", "business_date", "version", unique=True),
        Index(
            "uq_bank_statements_current",
            "escrow_account_id",
            "business_date",
            unique=True,
            postgresql_where=text("status = 'current'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    escrow_account_id: Mapped[str] = mapped_column(ForeignKey("escrow_accounts.id"))
    bank_id: Mapped[str] = mapped_column(ForeignKey("banks.id"))
    business_date: Mapped[date] = mapped_column(Date)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    format: Mapped[str] = mapped_column(String(10))
    bank_statement_id: Mapped[str | None] = mapped_column(String(100))  # the bank's own id (camt Stmt/Id)
    message_id: Mapped[str | None] = mapped_column(String(100))  # camt GrpHdr/MsgId
    opening_balance: Mapped[int] = mapped_column(BigInteger)  # fen, negative for a debit balance
    closing_balance: Mapped[int] = mapped_column(BigInteger)
    line_count: Mapped[int] = mapped_column(Integer)
    credits: Mapped[int] = mapped_column(BigInteger)  # fen booked into the account
    debits: Mapped[int] = mapped_column(BigInteger)  # fen booked out of it
    digest: Mapped[str] = mapped_column(String(64))  # SHA-256 of the content: the same statement sent again
    received_by: Mapped[str] = mapped_column(String(40))
    received_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    superseded_at: Mapped[datetime | None]
    superseded_by: Mapped[str | None] = mapped_column(String(40))
    # balance check, end of the day before (opening) and end of the statement's day (closing), in fen
    ledger_opening: Mapped[int | None] = mapped_column(BigInteger)  # custody_cash as of then
    ledger_closing: Mapped[int | None] = mapped_column(BigInteger)
    expected_opening: Mapped[int | None] = mapped_column(BigInteger)  # the ledger less what the bank hasn't booked
    expected_closing: Mapped[int | None] = mapped_column(BigInteger)
    accepted_opening: Mapped[int | None] = mapped_column(BigInteger)  # differences the regulator accepted
    accepted_closing: Mapped[int | None] = mapped_column(BigInteger)
    checked_at: Mapped[datetime | None]


class BankStatementLine(Base):
    """One booking on a statement, as the bank sent it (never changed afterwards)."""

    __tablename__ = "bank_statement_lines"
    __table_args__ = (
        CheckConstraint(_in("direction", DIRECTIONS), name="direction"),
        CheckConstraint(_max_fen("amount"), name="amount"),
        CheckConstraint("line_no >= 1", name="line_no"),
    )

    # deferred: the lines of a statement are copied in before its row, whose totals they make
    statement_id: Mapped[str] = mapped_column(
        ForeignKey("bank_statements.id", deferrable=True, initially="DEFERRED"), primary_key=True
    )
    line_no: Mapped[int] = mapped_column(Integer, primary_key=True)  # 1-based position on the statement
    escrow_account_id: Mapped[str] = mapped_column(String(40))  # the statement's (the shard key)
    bank_transaction_id: Mapped[str] = mapped_column(String(100))  # the bank's reference (camt AcctSvcrRef)
    end_to_end_id: Mapped[str | None] = mapped_column(String(100))  # the reference we issued, as quoted
    direction: Mapped[str] = mapped_column(String(6))
    amount: Mapped[int] = mapped_column(BigInteger)  # fen, positive
    value_date: Mapped[date] = mapped_column(Date)
    booking_date: Mapped[date] = mapped_column(Date)
    text: Mapped[str | None] = mapped_column(String(500))


class CustodyMovement(Base):
    """A posted movement of an escrow account's ``custody_cash``, as the bank should see it (a projection of the
    journal, with the references a statement may quote)."""

    __tablename__ = "custody_movements"
    __table_args__ = (
        CheckConstraint(_in("direction", DIRECTIONS), name="direction"),
        CheckConstraint(_max_fen("amount"), name="amount"),
        Index("ix_custody_movements_account_date", "escrow_account_id", "business_date"),
    )

    posting_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    entry_id: Mapped[int] = mapped_column(BigInteger)
    escrow_account_id: Mapped[str] = mapped_column(String(40))
    direction: Mapped[str] = mapped_column(String(6))
    amount: Mapped[int] = mapped_column(BigInteger)
    business_date: Mapped[date] = mapped_column(Date)  # the entry's business date
    entry_kind: Mapped[str] = mapped_column(String(64))
    service_ref: Mapped[str | None] = mapped_column(String(100))  # payment reference or instruction id we issued
    bank_ref: Mapped[str | None] = mapped_column(String(100))  # the bank transaction id the bank reported


class ReconciliationMatch(Base):
    """A movement linked to a statement line (or, for a balance adjustment, to the statement itself)."""

    __tablename__ = "reconciliation_matches"
    __table_args__ = (
        CheckConstraint(_in("rule", MATCH_RULES), name="rule"),
        # automatic rules link a line; an adjustment a line or a statement's balance; an offset pairs entries
        CheckConstraint(
            "CASE rule WHEN 'offset' THEN statement_id IS NULL AND break_id IS NOT NULL"
            " WHEN 'adjustment' THEN statement_id IS NOT NULL AND break_id IS NOT NULL"
            " WHEN 'attached' THEN line_no IS NOT NULL AND break_id IS NOT NULL"
            " ELSE line_no IS NOT NULL AND break_id IS NULL END",
            name="target",
        ),
        CheckConstraint("line_no IS NULL OR statement_id IS NOT NULL", name="line"),
        ForeignKeyConstraint(
            ["statement_id", "line_no"],
            ["bank_statement_lines.statement_id", "bank_statement_lines.line_no"],
            name="fk_reconciliation_matches_line",
        ),
        Index(
            "uq_reconciliation_matches_primary",
            "statement_id",
            "line_no",
            unique=True,
            postgresql_where=text(f"rule IN ({', '.join(repr(r) for r in PRIMARY_RULES)})"),
        ),
        # a line's state and a statement's replacement read matches by line, whatever their rule; runs by account
        Index("ix_reconciliation_matches_line", "statement_id", "line_no"),
        Index("ix_reconciliation_matches_account", "escrow_account_id"),
    )

    posting_id: Mapped[int] = mapped_column(ForeignKey("custody_movements.posting_id"), primary_key=True)
    escrow_account_id: Mapped[str] = mapped_column(String(40))
    statement_id: Mapped[str | None] = mapped_column(ForeignKey("bank_statements.id"))
    line_no: Mapped[int | None] = mapped_column(Integer)
    rule: Mapped[str] = mapped_column(String(20))
    break_id: Mapped[str | None] = mapped_column(ForeignKey("reconciliation_breaks.id"))
    matched_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class ReconciliationBreak(Base):
    """A difference between a bank's statement and the ledger that matching could not explain.

    ``amount`` is the signed difference in fen as the bank sees it (bank minus ledger; for a movement missing
    from the statement, minus the movement). A break is ``open`` until the regulator resolves it — with a note,
    an adjusting entry or a card the deposit pays — or a later matching run finds it cleared."""

    __tablename__ = "reconciliation_breaks"
    __table_args__ = (
        CheckConstraint(_in("kind", BREAK_KINDS), name="kind"),
        CheckConstraint(_in("state", BREAK_STATES), name="state"),
        CheckConstraint(_in("owner", OWNERS), name="owner"),
        CheckConstraint(f"resolution IS NULL OR {_in('resolution', RESOLUTIONS)}", name="resolution"),
        CheckConstraint("(state = 'resolved') = (resolution IS NOT NULL AND resolved_at IS NOT NULL)", name="resolved"),
        CheckConstraint("resolution NOT IN ('accepted', 'adjusted', 'attached') OR note IS NOT NULL", name="note"),
        CheckConstraint("amount <> 0 OR state = 'resolved'", name="amount"),
        # what each kind is about: a line (and the movement it matched), a movement, or a statement's balance
        CheckConstraint(
            "CASE kind WHEN 'not_in_ledger' THEN line_no IS NOT NULL AND posting_id IS NULL"
            " WHEN 'amount_mismatch' THEN line_no IS NOT NULL AND posting_id IS NOT NULL"
            " WHEN 'not_on_statement' THEN line_no IS NULL AND posting_id IS NOT NULL"
            " ELSE line_no IS NULL AND posting_id IS NULL END",
            name="subject",
        ),
        ForeignKeyConstraint(
            ["statement_id", "line_no"],
            ["bank_statement_lines.statement_id", "bank_statement_lines.line_no"],
            name="fk_reconciliation_breaks_line",
        ),
        # one break per line, per movement, per statement balance, whatever became of it
        Index(
            "uq_reconciliation_breaks_line",
            "statement_id",
            "line_no",
            unique=True,
            postgresql_where=text("line_no IS NOT NULL"),
        ),
        Index(
            "uq_reconciliation_breaks_movement",
            "posting_id",
            unique=True,
            postgresql_where=text("kind = 'not_on_statement'"),
        ),
        Index(
            "uq_reconciliation_breaks_balance",
            "statement_id",
            unique=True,
            postgresql_where=text("kind = 'balance_mismatch'"),
        ),
        Index(
            "ix_reconciliation_breaks_open",
            "escrow_account_id",
            "business_date",
            postgresql_where=text("state = 'open'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    escrow_account_id: Mapped[str] = mapped_column(ForeignKey("escrow_accounts.id"))
    bank_id: Mapped[str] = mapped_column(ForeignKey("banks.id"))
    kind: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(10), server_default="open")
    owner: Mapped[str] = mapped_column(String(10))  # who must explain it
    business_date: Mapped[date] = mapped_column(Date)  # the day it belongs to
    statement_id: Mapped[str | None] = mapped_column(ForeignKey("bank_statements.id"))
    line_no: Mapped[int | None] = mapped_column(Integer)
    posting_id: Mapped[int | None] = mapped_column(ForeignKey("custody_movements.posting_id"))
    amount: Mapped[int] = mapped_column(BigInteger)  # signed fen, bank minus ledger
    detected_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    resolved_at: Mapped[datetime | None]
    resolved_by: Mapped[str | None] = mapped_column(String(40))
    resolution: Mapped[str | None] = mapped_column(String(20))
    note: Mapped[str | None] = mapped_column(String(1000))
    adjustment_entry_id: Mapped[int | None] = mapped_column(BigInteger)
    card_id: Mapped[str | None] = mapped_column(ForeignKey("cards.id"))


class ReconciliationAccount(Base):
    """Per escrow account: how far the movement projection has read the journal, and the last matching run."""

    __tablename__ = "reconciliation_accounts"

    escrow_account_id: Mapped[str] = mapped_column(ForeignKey("escrow_accounts.id"), primary_key=True)
    # entries of transactions below this id (a pg_snapshot_xmin, as text-cast bigint) are all in the projection
    synced_xmin: Mapped[int] = mapped_column(BigInteger, server_default="0")
    last_run_at: Mapped[datetime | None]
    runs: Mapped[int] = mapped_column(Integer, server_default="0")
