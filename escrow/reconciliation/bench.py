"""`escrow bench reconcile`: import and match a bank statement of many lines against a ledger day as large.

Setup (not measured) is the closure benchmark's (``escrow.closures.bench.build``): one escrow account with N
paid cards in full custody, each a ``card_paid`` journal entry with its payment reference and the bank's
transaction id. Then the bank's statement of that day is written to a file — a camt.053 document by default, or
the JSON format — streamed from the cards, one line per deposit: most quote the payment reference and the bank's
transaction id, one in twelve only the bank's id (matched by rule 2), one in fifty neither (rule 3: amount and
value date); one deposit is missing (in transit), one is credited a fen more (an amount mismatch) and the bank
adds a fee the ledger doesn't know, so the statement has N lines and three differences.

Measured, as ``escrow reconcile FILE`` does it in one transaction: the import (the document parsed as a stream,
its lines copied in with binary COPY), the matching (set-based SQL), and the commit (which checks every line's
deferred foreign key). The peak RSS of the benchmark process shows that memory stays bounded.
"""

import contextlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from escrow.closures import bench as closure_bench
from escrow.config import Settings
from escrow.kit.clock import business_date, utcnow
from escrow.kit.crypto import Keyring
from escrow.reconciliation import service
from escrow.reconciliation.parsing import (
    CAMT053_END,
    CAMT053_STATEMENT_END,
    Header,
    Line,
    camt053_entry,
    camt053_head,
    camt053_statement_head,
    json_line,
)

TARGET_SECONDS = 60.0  # import + matching of 1,000,000 lines (issue #7)
FEE = 1_500  # fen

Progress = Callable[[int, int], None]


@dataclass
class ReconcileBenchResult:
    lines: int
    format: str
    file_bytes: int
    setup_seconds: float
    file_seconds: float
    result: service.FileImport
    peak_rss_kib: int
    outcomes: dict[str, int]
    open_breaks: dict[str, int]

    @property
    def measured_seconds(self) -> float:
        return self.result.seconds


def _bank_view(i: int, reference: str, transaction: str, amount: int, day: date) -> Line | None:
    """How the bank shows the i-th deposit of the day (None: not at all, it books it tomorrow)."""
    if i == 1:
        return None  # in transit
    if i == 2:
        amount += 1  # an amount mismatch
    if i % 50 == 7:  # the bank quotes neither reference
        return Line(f"BK-{transaction}", None, "credit", amount, day, day, "deposit")
    if i % 12 == 5:  # only its own
        return Line(transaction, None, "credit", amount, day, day, "deposit")
    return Line(transaction, reference, "credit", amount, day, day, "card payment")


def _json_line(line: Line) -> str:
    return json.dumps(json_line(line))


_CARDS = text(
    "SELECT payment_reference, deposit_transaction_id, protected_paid FROM cards"
    " WHERE escrow_account_id = :account AND status = 'active' ORDER BY id"
)


async def write_statement(sessionmaker: async_sessionmaker, path: Path, fmt: str, account: str, day: date) -> None:
    """The bank's statement of the day, streamed from the cards into the file (memory stays flat)."""
    async with sessionmaker() as session:
        deposits = await session.execute(
            text(
                "SELECT protected_paid FROM cards WHERE escrow_account_id = :account AND status = 'active'"
                " ORDER BY id LIMIT 2"
            ),
            {"account": account},
        )
        skipped = [int(amount) for (amount,) in deposits][1]
        total = int(
            await session.scalar(
                text("SELECT sum(protected_paid) FROM cards WHERE escrow_account_id = :account AND status = 'active'"),
                {"account": account},
            )
        )
    fee = Line("BENCH-FEE-1", None, "debit", FEE, day, day, "account maintenance fee")
    header = Header(fmt, account, day, 0, total - skipped + 1 - FEE, f"BENCH-{day}", None, "")
    with path.open("w", encoding="utf-8") as out:
        if fmt == "camt053":
            out.write(camt053_head("BENCH") + camt053_statement_head(header))
        else:
            opening = {
                "escrow_account_id": account,
                "business_date": day.isoformat(),
                "opening_balance": {"amount": header.opening, "currency": "CNY"},
                "closing_balance": {"amount": header.closing, "currency": "CNY"},
            }
            out.write(json.dumps(opening)[:-1] + ', "lines": [')
        async with sessionmaker() as session:
            rows = await session.stream(_CARDS, {"account": account}, execution_options={"yield_per": 10_000})
            i = 0
            async for reference, transaction, amount in rows:
                line = _bank_view(i, reference, transaction, int(amount), day)
                if line is not None:
                    out.write(camt053_entry(line) if fmt == "camt053" else _json_line(line) + ",")
                i += 1
        if fmt == "camt053":
            out.write(camt053_entry(fee) + CAMT053_STATEMENT_END + CAMT053_END)
        else:
            out.write(_json_line(fee) + "]}")


def reset_peak_rss() -> None:
    """Start measuring the peak resident set size afresh (Linux: clear_refs 5 resets VmHWM)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_kib() -> int:
    try:
        for row in Path("/proc/self/status").read_text().splitlines():
            if row.startswith("VmHWM:"):
                return int(row.split()[1])
    except OSError:
        pass
    return closure_bench.peak_rss_kib()


async def run(
    engine: AsyncEngine,
    settings: Settings,
    *,
    lines: int,
    fmt: str = "camt053",
    setup_progress: Progress | None = None,
    progress: Progress | None = None,
) -> ReconcileBenchResult:
    if lines < 3:
        raise ValueError("lines must be at least 3")
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
    principal = await closure_bench.regulator(sessionmaker)
    setup = await closure_bench.build(
        sessionmaker, settings, principal, cards_count=lines, ratio_bp=closure_bench.FULL, progress=setup_progress
    )
    day = business_date(utcnow(), settings.business_timezone)
    account = setup.escrow_account_id
    with tempfile.TemporaryDirectory(prefix="escrow-bench-") as directory:
        path = Path(directory) / f"statement.{'xml' if fmt == 'camt053' else 'json'}"
        started = time.perf_counter()
        await write_statement(sessionmaker, path, fmt, account, day)
        file_seconds = time.perf_counter() - started
        size = path.stat().st_size
        reset_peak_rss()
        result = await service.import_file(
            sessionmaker,
            settings,
            Keyring(b"bench-never-reads-account-numbers-0123456789"),
            path,
            bank_id=None,
            received_by="system:bench",
            progress=progress,
        )
        rss = peak_rss_kib()
    async with sessionmaker() as session:
        figures = await service.statement_figures(session, result.intakes[0].statement)
        open_breaks = dict(
            (
                await session.execute(
                    text(
                        "SELECT kind, count(*) FROM reconciliation_breaks WHERE escrow_account_id = :a"
                        " AND state = 'open' GROUP BY kind"
                    ),
                    {"a": account},
                )
            ).all()
        )
    outcomes = {
        "matched": figures.matched,
        "amount_mismatch": figures.amount_mismatch,
        "not_in_ledger": figures.not_in_ledger,
    }
    return ReconcileBenchResult(
        lines,
        fmt,
        size,
        setup.seconds,
        file_seconds,
        result,
        rss,
        outcomes,
        {k: int(v) for k, v in open_breaks.items()},
    )


def table(result: ReconcileBenchResult) -> str:
    r = result.result
    rows = [
        ("import (parse + COPY)", r.import_seconds),
        ("matching", r.matching_seconds),
        ("commit", r.commit_seconds),
    ]
    lines = ["| step | lines | seconds | lines/s |", "|---|---:|---:|---:|"]
    for name, seconds in rows:
        lines.append(f"| {name} | {r.lines:,} | {seconds:.1f} | {r.lines / seconds if seconds else 0:,.0f} |")
    total = result.measured_seconds
    lines.append(f"| **import + matching** | {r.lines:,} | **{total:.1f}** | {r.lines / total if total else 0:,.0f} |")
    return "\n".join(lines)


def summary(result: ReconcileBenchResult) -> str:
    run = result.result.runs[0] if result.result.runs else None
    target = TARGET_SECONDS * result.lines / 1_000_000
    met = "met" if result.measured_seconds <= target else "NOT met"
    statement = result.result.intakes[0].statement
    return "\n".join(
        [
            f"setup (not measured): {result.lines:,} paid cards in {result.setup_seconds:.1f} s; the {result.format}"
            f" statement ({result.file_bytes / 2**20:,.0f} MiB) written in {result.file_seconds:.1f} s",
            f"import + matching: {result.measured_seconds:.1f} s for {result.result.lines:,} lines"
            f" (target {TARGET_SECONDS:.0f} s per 1,000,000 lines, {target:.1f} s for these: {met})",
            f"matched by rule: {run.matched if run else {}}; lines: {result.outcomes}",
            "matching, seconds per step: "
            + (", ".join(f"{step} {seconds:.1f}" for step, seconds in run.seconds.items()) if run else "-"),
            f"open breaks: {result.open_breaks}; closing balance check:"
            f" bank {statement.closing_balance:,} fen, expected {statement.expected_closing:,} fen",
            f"peak RSS of the benchmark process during import and matching: {result.peak_rss_kib / 1024:,.0f} MiB"
            " (PostgreSQL not included)",
        ]
    )
