"""The matching engine: one escrow account's current statements against its custody movements, in SQL.

Every step is one set-based statement over all the account's open lines and movements — never a loop per line:
bring new journal postings into the projection; link the movements of earlier resolutions back to their lines;
pair lines and movements by the reference this service issued, then by the bank's own, then by amount, direction
and value date; turn what is left into breaks (or clear those that agree now); recompute the balance checks.
Pairs are inserted in order of preference under the two unique constraints of ``reconciliation_matches`` (a
movement links one line; a line has one primary match) with ``ON CONFLICT DO NOTHING``, so each side is used at
most once without ranking the candidates twice; a rule runs again only when candidates competed.
"""

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.config import Settings
from escrow.kit.clock import business_date, utcnow
from escrow.models import BankStatement, EscrowAccount, ReconciliationAccount
from escrow.models.reconciliation import PRIMARY_RULES

SYSTEM = "system:reconciliation"
MAX_ROUNDS = 4  # of one rule, when candidates competed or pairs were too far apart
# Rows written in this transaction are invisible to the planner's statistics until someone analyzes the table:
# after a bulk write (a large statement, a first projection, many matches) matching analyzes it itself, or the
# next statement plans for a table of a few rows (nested loops over a million lines).
ANALYZE_AFTER = 10_000


async def analyze_if_many(session: AsyncSession, table: str, written: int) -> None:
    if written >= ANALYZE_AFTER:
        await session.execute(text(f"ANALYZE {table}"))


async def lock_account(session: AsyncSession, account_id: str) -> None:
    """Serialize everything that writes one escrow account's reconciliation (intake, matching, resolution)."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended('reconciliation:' || :account, 0))"),
        {"account": account_id},
    )


# Movements of the journal not yet in the projection: entries of the account from transactions at or after the
# horizon of the last run (``synced_xmin``; every transaction below it had finished then, so its entries were
# seen). Each custody_cash posting carries the references a statement can quote.
_SYNC = text(
    """
INSERT INTO custody_movements (posting_id, entry_id, escrow_account_id, direction, amount, business_date, entry_kind,
                               service_ref, bank_ref)
SELECT p.id, e.id, e.escrow_account_id, CASE p.side WHEN 'D' THEN 'credit' ELSE 'debit' END, p.amount,
       e.business_date, e.kind,
       CASE WHEN e.kind = 'card_paid' THEN coalesce(t.id, c.payment_reference)
            WHEN e.kind = 'reconciliation_adjustment' THEN e.refs->>'break_id'
            ELSE e.refs->>'instruction_id' END,
       e.refs->>'bank_transaction_id'
  FROM ledger_entries e
  JOIN ledger_postings p ON p.entry_id = e.id AND p.kind = 'posted' AND p.account_id = :cash
  LEFT JOIN cards c ON e.kind = 'card_paid' AND c.id = e.refs->>'card_id'
  -- a card taken over is paid by its predecessor's transfer instruction, which the statement quotes
  LEFT JOIN LATERAL (SELECT i.id FROM instructions i WHERE c.predecessor_card_id IS NOT NULL
                        AND i.target_card_id = c.id AND i.kind = 'transfer' AND i.status = 'executed' LIMIT 1) t
         ON true
 WHERE e.escrow_account_id = :account AND e.xid >= CAST(:horizon AS xid8)
ON CONFLICT (posting_id) DO NOTHING
"""
)

# The lines of the account's current statements that no rule matched yet, and the movements linked to nothing,
# from ``tolerance`` days before the first statement on (earlier ones were booked before reconciliation began).
_OPEN = """
WITH open_lines AS (
    SELECT l.statement_id, l.line_no, l.direction, l.amount, l.value_date, l.end_to_end_id, l.bank_transaction_id
      FROM bank_statements s JOIN bank_statement_lines l ON l.statement_id = s.id
     WHERE s.escrow_account_id = :account AND s.status = 'current'
       AND NOT EXISTS (SELECT 1 FROM reconciliation_matches x WHERE x.statement_id = l.statement_id
                          AND x.line_no = l.line_no AND x.rule IN ({primary}))
), open_movements AS (
    SELECT m.posting_id, m.direction, m.amount, m.business_date, m.service_ref, m.bank_ref
      FROM custody_movements m
     WHERE m.escrow_account_id = :account AND m.entry_kind <> 'reconciliation_adjustment'
       AND m.business_date >= CAST(:start AS date) - CAST(:tolerance AS int)
       AND NOT EXISTS (SELECT 1 FROM reconciliation_matches x WHERE x.posting_id = m.posting_id)
)
""".replace("{primary}", ", ".join(f"'{rule}'" for rule in PRIMARY_RULES))


# Rules 1 and 2: candidates by reference, the same amount and the nearest date first; returns (taken, candidates).
_BY_REFERENCE = (
    _OPEN
    + """, candidates AS (
    SELECT l.statement_id, l.line_no, m.posting_id,
           (l.amount <> m.amount)::int * 1000 + abs(l.value_date - m.business_date) AS preference
      FROM open_lines l JOIN open_movements m ON m.direction = l.direction AND {condition}
), taken AS (
    INSERT INTO reconciliation_matches (posting_id, escrow_account_id, statement_id, line_no, rule)
    SELECT posting_id, CAST(:account AS text), statement_id, line_no, CAST(:rule AS text) FROM candidates
     ORDER BY preference, statement_id, line_no, posting_id
    ON CONFLICT DO NOTHING RETURNING 1
)
SELECT (SELECT count(*) FROM taken), (SELECT count(*) FROM candidates)"""
)
_SERVICE_REFERENCE = text(_BY_REFERENCE.replace("{condition}", "m.service_ref = l.end_to_end_id"))
_BANK_REFERENCE = text(_BY_REFERENCE.replace("{condition}", "m.bank_ref = l.bank_transaction_id"))

# Rule 3: the k-th line and the k-th movement of one amount and direction, each in date order, if their dates are
# close enough — a join on (direction, amount, k), linear whatever the number of equal amounts. A line quoting a
# reference that matched nothing meets only movements that have none (it is no licence to take another payment's
# movement): so lines without a reference are paired with every movement, then the others with unreferenced ones.
# Returns (taken, pairs): when some pairs were too far apart it runs again, the rest numbered afresh.
_AMOUNT_DATE = (
    _OPEN
    + """, pairs AS (
    SELECT l.statement_id, l.line_no, m.posting_id,
           abs(l.value_date - m.business_date) <= CAST(:tolerance AS int) AS close
      FROM (SELECT l.*, row_number() OVER (PARTITION BY l.direction, l.amount
                                           ORDER BY l.value_date, l.statement_id, l.line_no) AS k
              FROM open_lines l WHERE {lines}) l
      JOIN (SELECT m.*, row_number() OVER (PARTITION BY m.direction, m.amount
                                           ORDER BY m.business_date, m.posting_id) AS k
              FROM open_movements m WHERE {movements}) m
        ON m.direction = l.direction AND m.amount = l.amount AND m.k = l.k
), taken AS (
    INSERT INTO reconciliation_matches (posting_id, escrow_account_id, statement_id, line_no, rule)
    SELECT posting_id, CAST(:account AS text), statement_id, line_no, 'amount_date' FROM pairs WHERE close
    ON CONFLICT DO NOTHING RETURNING 1
)
SELECT (SELECT count(*) FROM taken), (SELECT count(*) FROM pairs)"""
)
_AMOUNT_DATE_UNQUOTED = text(_AMOUNT_DATE.replace("{lines}", "l.end_to_end_id IS NULL").replace("{movements}", "true"))
_AMOUNT_DATE_QUOTED = text(
    _AMOUNT_DATE.replace("{lines}", "l.end_to_end_id IS NOT NULL").replace("{movements}", "m.service_ref IS NULL")
)

# Resolutions' own movements find their place again after a correction: an adjustment goes back to the current
# line with the bank reference it was made for (or to the current statement of its day, for a balance), with
# the break it resolved.
_RELINK_ADJUSTMENTS = text(
    """
INSERT INTO reconciliation_matches (posting_id, escrow_account_id, statement_id, line_no, rule, break_id)
SELECT DISTINCT ON (m.posting_id) m.posting_id, m.escrow_account_id, s.id, l.line_no, 'adjustment', b.id
  FROM custody_movements m
  JOIN reconciliation_breaks b ON b.id = m.service_ref
  JOIN bank_statements s ON s.escrow_account_id = :account AND s.status = 'current'
                        AND s.business_date = b.business_date
  LEFT JOIN bank_statement_lines l ON l.statement_id = s.id AND l.bank_transaction_id = m.bank_ref
 WHERE m.escrow_account_id = :account AND m.entry_kind = 'reconciliation_adjustment'
   AND b.kind <> 'not_on_statement' AND (m.bank_ref IS NULL) = (l.line_no IS NULL)
   AND NOT EXISTS (SELECT 1 FROM reconciliation_matches x WHERE x.posting_id = m.posting_id)
 ORDER BY m.posting_id, l.line_no
"""
)

# Each current line: what the bank booked, what the ledger has matched with it, and so its outcome. Matching
# computes it once per run into a temporary table; the readers use it as a CTE.
LINE_STATE_QUERY = """
    SELECT l.statement_id, l.line_no, s.business_date,
           CASE l.direction WHEN 'credit' THEN l.amount ELSE -l.amount END AS bank,
           coalesce(x.ledger, 0) AS ledger, x.posting_id,
           CASE l.direction WHEN 'credit' THEN l.amount ELSE -l.amount END - coalesce(x.ledger, 0) AS difference,
           CASE WHEN x.links IS NULL THEN 'not_in_ledger'
                WHEN x.ledger <> CASE l.direction WHEN 'credit' THEN l.amount ELSE -l.amount END THEN 'amount_mismatch'
                ELSE 'matched' END AS outcome
      FROM bank_statements s
      JOIN bank_statement_lines l ON l.statement_id = s.id
      LEFT JOIN (SELECT x.statement_id, x.line_no, count(*) AS links,
                        sum(CASE m.direction WHEN 'credit' THEN m.amount ELSE -m.amount END) AS ledger,
                        coalesce(min(x.posting_id) FILTER (WHERE x.rule <> 'adjustment'), min(x.posting_id))
                            AS posting_id
                   FROM reconciliation_matches x JOIN custody_movements m ON m.posting_id = x.posting_id
                  WHERE x.escrow_account_id = :account AND x.line_no IS NOT NULL
                  GROUP BY x.statement_id, x.line_no) x
        ON x.statement_id = l.statement_id AND x.line_no = l.line_no
     WHERE s.escrow_account_id = :account AND s.status = 'current'"""
LINE_STATE = f"line_state AS ({LINE_STATE_QUERY})"
_LINE_STATE_TABLE = [
    "DROP TABLE IF EXISTS pg_temp.line_state",
    f"CREATE TEMPORARY TABLE line_state ON COMMIT DROP AS {LINE_STATE_QUERY}",
    "CREATE INDEX ON pg_temp.line_state (statement_id, line_no)",
    "ANALYZE pg_temp.line_state",
]

_NEW_ID = "'brk_' || replace(CAST(gen_random_uuid() AS text), '-', '')"

_LINE_BREAKS = [
    # a line that no longer agrees gets a break (one per line, ever) …
    f"""INSERT INTO reconciliation_breaks (id, escrow_account_id, bank_id, kind, owner, business_date, statement_id,
                                   line_no, posting_id, amount)
SELECT {_NEW_ID}, CAST(:account AS text), CAST(:bank AS text), s.outcome, 'bank', s.business_date, s.statement_id,
       s.line_no,
       CASE s.outcome WHEN 'amount_mismatch' THEN s.posting_id END, s.difference
  FROM line_state s
 WHERE s.outcome <> 'matched'
   AND NOT EXISTS (SELECT 1 FROM reconciliation_breaks b WHERE b.statement_id = s.statement_id
                      AND b.line_no = s.line_no)""",
    # … an open one follows what its line became …
    """UPDATE reconciliation_breaks b
   SET kind = s.outcome, amount = s.difference,
       posting_id = CASE s.outcome WHEN 'amount_mismatch' THEN s.posting_id END
  FROM line_state s
 WHERE b.statement_id = s.statement_id AND b.line_no = s.line_no AND b.state = 'open' AND s.outcome <> 'matched'
   AND (b.kind, b.amount, b.posting_id) IS DISTINCT FROM
       (s.outcome, s.difference, CASE s.outcome WHEN 'amount_mismatch' THEN s.posting_id END)""",
]
_CLEAR_LINE_BREAKS = """UPDATE reconciliation_breaks b
   SET state = 'resolved', resolution = 'cleared', resolved_at = now(), resolved_by = :by
  FROM line_state s
 WHERE b.statement_id = s.statement_id AND b.line_no = s.line_no AND b.state = 'open' AND s.outcome = 'matched'"""

_MOVEMENT_BREAKS = [
    # a movement on no statement long enough is a break (an adjustment of the regulator's own at once: its break)
    """INSERT INTO reconciliation_breaks (id, escrow_account_id, bank_id, kind, owner, business_date, posting_id,
                                   amount)
SELECT {new_id}, m.escrow_account_id, CAST(:bank AS text), 'not_on_statement',
       CASE m.entry_kind WHEN 'reconciliation_adjustment' THEN 'regulator' ELSE 'bank' END, m.business_date,
       m.posting_id, CASE m.direction WHEN 'credit' THEN -m.amount ELSE m.amount END
  FROM custody_movements m
 WHERE m.escrow_account_id = :account AND m.business_date >= CAST(:start AS date)
   AND (CAST(:latest AS date) - m.business_date >= CAST(:in_transit AS int)
        OR m.entry_kind = 'reconciliation_adjustment')  -- it followed a line the bank no longer shows
   AND NOT EXISTS (SELECT 1 FROM reconciliation_matches x WHERE x.posting_id = m.posting_id)
   AND NOT EXISTS (SELECT 1 FROM reconciliation_breaks b WHERE b.posting_id = m.posting_id
                      AND b.kind = 'not_on_statement')""".replace("{new_id}", _NEW_ID),
]
_CLEAR_MOVEMENT_BREAKS = """
UPDATE reconciliation_breaks b SET state = 'resolved', resolution = 'cleared', resolved_at = now(), resolved_by = :by
 WHERE b.escrow_account_id = :account AND b.kind = 'not_on_statement' AND b.state = 'open'
   AND EXISTS (SELECT 1 FROM reconciliation_matches x WHERE x.posting_id = b.posting_id)"""

# The balance check of every current statement, set-based: each movement is on the ledger's books from its business
# date, and on the bank's from the date of the statement line it is matched with (a balance adjustment: the day
# before its statement, as it explains the opening balance; one before reconciliation began: its own date).
_CHECKS = """
WITH statements AS (
    SELECT s.id, s.business_date AS d, s.opening_balance, s.closing_balance FROM bank_statements s
     WHERE s.escrow_account_id = :account AND s.status = 'current'
), movements AS (
    SELECT CASE m.direction WHEN 'credit' THEN m.amount ELSE -m.amount END AS signed, m.business_date AS on_ledger,
           CASE WHEN x.statement_id IS NOT NULL THEN s.business_date - CASE WHEN x.line_no IS NULL THEN 1 ELSE 0 END
                WHEN x.posting_id IS NULL AND m.business_date < CAST(:start AS date) THEN m.business_date
           END AS on_bank
      FROM custody_movements m
      LEFT JOIN reconciliation_matches x ON x.posting_id = m.posting_id
      LEFT JOIN bank_statements s ON s.id = x.statement_id
     WHERE m.escrow_account_id = :account
), ledger_days AS (
    SELECT on_ledger AS day, sum(signed) AS amount FROM movements GROUP BY on_ledger
), bank_days AS (
    SELECT on_bank AS day, sum(signed) AS amount FROM movements WHERE on_bank IS NOT NULL GROUP BY on_bank
), per_statement AS (
    SELECT st.id, st.d, st.opening_balance, st.closing_balance,
           coalesce(sum(ls.difference), 0) AS differences,
           coalesce(sum(ls.difference) FILTER (WHERE b.resolution = 'accepted'), 0) AS accepted_lines,
           coalesce((SELECT bb.amount FROM reconciliation_breaks bb WHERE bb.statement_id = st.id
                        AND bb.kind = 'balance_mismatch' AND bb.resolution = 'accepted'), 0) AS accepted_balance
      FROM statements st
      LEFT JOIN line_state ls ON ls.statement_id = st.id
      LEFT JOIN reconciliation_breaks b ON b.statement_id = ls.statement_id AND b.line_no = ls.line_no
     GROUP BY st.id, st.d, st.opening_balance, st.closing_balance
), sums AS (
    SELECT p.*,
           (SELECT coalesce(sum(amount), 0) FROM ledger_days WHERE day <= p.d - 1) AS ledger_opening,
           (SELECT coalesce(sum(amount), 0) FROM ledger_days WHERE day <= p.d) AS ledger_closing,
           (SELECT coalesce(sum(amount), 0) FROM bank_days WHERE day <= p.d - 1) AS expected_opening,
           (SELECT coalesce(sum(amount), 0) FROM bank_days WHERE day <= p.d) AS expected_closing,
           sum(p.differences) OVER w AS differences_closing,
           sum(p.accepted_lines) OVER w AS accepted_lines_closing,
           sum(p.accepted_balance) OVER w AS accepted_balance_closing
      FROM per_statement p
    WINDOW w AS (ORDER BY p.d)
), checked AS (
    SELECT s.*,
           s.opening_balance - s.expected_opening - (s.differences_closing - s.differences) AS unexplained_opening,
           s.closing_balance - s.expected_closing - s.differences_closing AS unexplained_closing
      FROM sums s
)
"""
_BALANCE_CHECKS_TABLE = [
    "DROP TABLE IF EXISTS pg_temp.balance_checks",
    # the unexplained change: the opening balance moved away from the last statement's closing (or, at the first,
    # from the ledger's history) by more than the lines explain
    "CREATE TEMPORARY TABLE balance_checks ON COMMIT DROP AS"
    + _CHECKS
    + " SELECT c.*, c.unexplained_opening - coalesce(lag(c.unexplained_closing) OVER (ORDER BY c.d), 0) AS change"
    " FROM checked c",
]
_STORE_CHECKS = """
UPDATE bank_statements b
   SET ledger_opening = c.ledger_opening, ledger_closing = c.ledger_closing,
       expected_opening = c.expected_opening, expected_closing = c.expected_closing,
       accepted_opening = c.accepted_lines_closing - c.accepted_lines + c.accepted_balance_closing,
       accepted_closing = c.accepted_lines_closing + c.accepted_balance_closing,
       checked_at = now()
  FROM balance_checks c WHERE b.id = c.id"""
# One balance break per statement, its amount following the latest run while open.
_BALANCE_BREAKS = [
    f"""INSERT INTO reconciliation_breaks (id, escrow_account_id, bank_id, kind, owner, business_date, statement_id,
                                   amount)
SELECT {_NEW_ID}, CAST(:account AS text), CAST(:bank AS text), 'balance_mismatch', 'bank', c.d, c.id, c.change
  FROM balance_checks c
 WHERE c.change <> 0
   AND NOT EXISTS (SELECT 1 FROM reconciliation_breaks b WHERE b.statement_id = c.id
                      AND b.kind = 'balance_mismatch')""",
    """UPDATE reconciliation_breaks b SET amount = c.change FROM balance_checks c
 WHERE b.statement_id = c.id AND b.kind = 'balance_mismatch' AND b.state = 'open' AND c.change <> 0
   AND b.amount <> c.change""",
]
_CLEAR_BALANCE_BREAKS = """UPDATE reconciliation_breaks b
   SET state = 'resolved', resolution = 'cleared', resolved_at = now(), resolved_by = :by FROM balance_checks c
 WHERE b.statement_id = c.id AND b.kind = 'balance_mismatch' AND b.state = 'open' AND c.change = 0"""


@dataclass
class RunReport:
    escrow_account_id: str
    movements_read: int = 0
    matched: dict[str, int] = field(default_factory=dict)
    breaks_opened: int = 0
    breaks_cleared: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # per step, for the benchmark


async def _execute(session: AsyncSession, sql: str | Any, params: dict[str, Any]) -> int:
    result = await session.execute(sql if not isinstance(sql, str) else text(sql), params)
    return result.rowcount or 0  # type: ignore[attr-defined]


async def sync_movements(session: AsyncSession, account_id: str) -> int:
    """Bring the account's custody movements into the projection; returns how many were new."""
    state = await session.get(ReconciliationAccount, account_id, with_for_update=True)
    if state is None:
        state = ReconciliationAccount(escrow_account_id=account_id, synced_xmin=0, runs=0)
        session.add(state)
        await session.flush()
    cash = await session.scalar(
        text("SELECT id FROM ledger_accounts WHERE escrow_account_id = :account AND code = 'custody_cash'"),
        {"account": account_id},
    )
    if cash is None:
        return 0
    horizon = await session.scalar(text("SELECT CAST(CAST(pg_snapshot_xmin(pg_current_snapshot()) AS text) AS bigint)"))
    read = await _execute(session, _SYNC, {"cash": cash, "account": account_id, "horizon": state.synced_xmin})
    state.synced_xmin = horizon
    return read


async def run_matching(session: AsyncSession, settings: Settings, account_id: str) -> RunReport:
    """Match the account's current statements against the ledger, update its breaks and balance checks."""
    await lock_account(session, account_id)
    report = RunReport(account_id)
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        report.seconds[step] = report.seconds.get(step, 0.0) + now - clock
        clock = now

    report.movements_read = await sync_movements(session, account_id)
    await analyze_if_many(session, "custody_movements", report.movements_read)
    lap("projection")
    bounds = (
        await session.execute(
            select(func.min(BankStatement.business_date), func.max(BankStatement.business_date)).where(
                BankStatement.escrow_account_id == account_id, BankStatement.status == "current"
            )
        )
    ).one()
    account = await session.get(EscrowAccount, account_id)
    assert account is not None
    state = await session.get(ReconciliationAccount, account_id)
    assert state is not None
    state.last_run_at = utcnow()
    state.runs += 1
    if bounds[0] is None:
        return report
    params: dict[str, Any] = {
        "account": account_id,
        "bank": account.bank_id,
        "start": bounds[0],
        "latest": bounds[1],
        "tolerance": settings.reconciliation_tolerance_days,
        "in_transit": settings.reconciliation_in_transit_days,
        "by": SYSTEM,
    }
    report.matched["adjustment"] = await _execute(session, _RELINK_ADJUSTMENTS, params)
    lap("relink")
    for rule, sql in (
        ("service_reference", _SERVICE_REFERENCE),
        ("bank_reference", _BANK_REFERENCE),
        ("amount_date", _AMOUNT_DATE_UNQUOTED),
        ("amount_date", _AMOUNT_DATE_QUOTED),
    ):
        found = 0
        for _ in range(MAX_ROUNDS):
            taken, offered = (await session.execute(sql, {**params, "rule": rule})).one()
            found += taken
            if not taken or taken == offered:  # nothing more, or nothing competed: another round finds nothing
                break
        report.matched[rule] = report.matched.get(rule, 0) + found
        lap(rule)
    await analyze_if_many(session, "reconciliation_matches", sum(report.matched.values()))
    for sql in _LINE_STATE_TABLE:
        await session.execute(text(sql), params if ":account" in sql else {})
    report.breaks_cleared += await _execute(session, _CLEAR_LINE_BREAKS, params)
    report.breaks_cleared += await _execute(session, _CLEAR_MOVEMENT_BREAKS, params)
    for sql in (*_LINE_BREAKS[:1], *_MOVEMENT_BREAKS):
        report.breaks_opened += await _execute(session, sql, params)
    await _execute(session, _LINE_BREAKS[1], params)
    lap("breaks")
    for sql in _BALANCE_CHECKS_TABLE:
        await session.execute(text(sql), params if ":account" in sql else {})
    await _execute(session, _STORE_CHECKS, params)
    report.breaks_cleared += await _execute(session, _CLEAR_BALANCE_BREAKS, params)
    report.breaks_opened += await _execute(session, _BALANCE_BREAKS[0], params)
    await _execute(session, _BALANCE_BREAKS[1], params)
    await session.flush()
    lap("balances")
    return report


async def accounts_due(session: AsyncSession, settings: Settings, limit: int) -> list[str]:
    """Accounts with statements not matched yet today (the daily run ages in-transit movements into breaks)."""
    today = business_date(utcnow(), settings.business_timezone)
    rows = await session.execute(
        text(
            "SELECT DISTINCT s.escrow_account_id FROM bank_statements s"
            " LEFT JOIN reconciliation_accounts r ON r.escrow_account_id = s.escrow_account_id"
            " WHERE s.status = 'current'"
            "   AND (r.last_run_at IS NULL OR CAST(timezone(:tz, r.last_run_at) AS date) < :today)"
            " ORDER BY 1 LIMIT :limit"
        ),
        {"tz": settings.business_timezone, "today": today, "limit": limit},
    )
    return [row[0] for row in rows]
