"""Tamper evidence and self-checks: seal the journal into per-escrow-account hash chains, and verify everything.

Sealing never makes writers wait. A seal covers the entries of one escrow account whose transactions all
ended before the sealing snapshot's horizon (``pg_snapshot_xmin``): entries are stamped with their
transaction id, and a transaction id below the horizon can no longer gain rows, so the set a seal hashes is
final. Each seal stores the SHA-256 of its entries (canonical JSON of each entry and its postings, in id order)
and chains it to the account's previous seal. ``verify`` recomputes every seal and link, and checks the
invariants of domain.md §8 that the ledger alone can check; any edited, moved or deleted journal row breaks
the first seal that covered it.
"""

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

GENESIS = bytes(32)
_SEAL_LOCK = 0x6C6564676572  # advisory lock key: one sealer at a time

# One line per entry, unambiguous: JSON of its fields and its postings in id order.
_CANONICAL_ENTRIES = text(
    "SELECT json_build_array(e.id, e.escrow_account_id, e.kind, e.type, e.pending_id,"
    " (extract(epoch FROM e.expires_at) * 1000000)::bigint, e.refs, e.principal, e.idempotency_ref,"
    " (extract(epoch FROM e.occurred_at) * 1000000)::bigint, e.business_date, e.xid::text,"
    " (SELECT json_agg(json_build_array(p.id, p.account_id, p.escrow_account_id, p.side, p.kind, p.amount)"
    "   ORDER BY p.id) FROM ledger_postings p WHERE p.entry_id = e.id))::text"
    " FROM ledger_entries e"
    " WHERE e.escrow_account_id = :book"
    " AND e.xid >= CAST(CAST(:lo AS text) AS xid8) AND e.xid < CAST(CAST(:hi AS text) AS xid8)"
    " ORDER BY e.id"
)


async def _digest(session: AsyncSession, book: str, lo: str, hi: str) -> tuple[int, bytes]:
    digest = hashlib.sha256()
    count = 0
    result = await session.stream(_CANONICAL_ENTRIES, {"book": book, "lo": lo, "hi": hi})
    async for (line,) in result:
        digest.update(line.encode())
        digest.update(b"\n")
        count += 1
    return count, digest.digest()


def chain_hash(prev_hash: bytes, book: str, seq: int, xid_from: str, xid_to: str, count: int, digest: bytes) -> bytes:
    header = f"{book}|{seq}|{xid_from}|{xid_to}|{count}|".encode()
    return hashlib.sha256(prev_hash + header + digest).digest()


@dataclass
class SealResult:
    horizon: str
    seals: int = 0
    entries: int = 0
    held: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # books not sealed: their failing rows


# What "verifies" means before a book's new entries are sealed: every final, not yet sealed entry of the book has
# at least two postings, all in its own book, balancing per kind of posting; and every account those entries touch
# has stored totals (row + slots, kept in step with the postings by the same transaction) equal to its journal —
# so a posting edited, added or deleted behind the triggers' back shows. A book with any failing row is not sealed
# at all (a seal covers a contiguous range of transactions), until the rows are restored; the failures are named.
_UNVERIFIED = """
WITH fresh AS (
  SELECT e.id, e.escrow_account_id AS book FROM ledger_entries e
  LEFT JOIN LATERAL (SELECT max(s.xid_to) AS xid_to FROM ledger_seals s
                     WHERE s.escrow_account_id = e.escrow_account_id) s ON true
  WHERE e.xid >= coalesce(s.xid_to, '0'::xid8) AND e.xid < CAST(CAST(:hi AS text) AS xid8)
)
SELECT f.book, f.id::text, 'entry does not balance, or has postings outside its book' FROM fresh f
  LEFT JOIN ledger_postings p ON p.entry_id = f.id
 GROUP BY f.book, f.id
HAVING count(p.id) < 2 OR bool_or(p.escrow_account_id <> f.book)
    OR sum(p.amount) FILTER (WHERE p.side = 'D' AND p.kind = 'posted')
       IS DISTINCT FROM sum(p.amount) FILTER (WHERE p.side = 'C' AND p.kind = 'posted')
    OR sum(p.amount) FILTER (WHERE p.side = 'D' AND p.kind = 'pending')
       IS DISTINCT FROM sum(p.amount) FILTER (WHERE p.side = 'C' AND p.kind = 'pending')
    OR sum(p.amount) FILTER (WHERE p.side = 'D' AND p.kind = 'release')
       IS DISTINCT FROM sum(p.amount) FILTER (WHERE p.side = 'C' AND p.kind = 'release')
UNION ALL
SELECT t.escrow_account_id, t.code, 'stored totals differ from the journal' FROM ({totals}) t
 WHERE t.id IN (SELECT p.account_id FROM ledger_postings p JOIN fresh f ON p.entry_id = f.id)
   AND (t.pd, t.pc, t.hd, t.hc) IS DISTINCT FROM (t.jpd, t.jpc, t.jhd, t.jhc)
ORDER BY 1, 2
"""


async def unverified(session: AsyncSession, horizon: str) -> dict[str, list[dict[str, Any]]]:
    """Books whose final, unsealed rows fail their own checks (see ``_UNVERIFIED``), with those rows."""
    held: dict[str, list[dict[str, Any]]] = {}
    rows = await session.execute(text(_UNVERIFIED.format(totals=_TOTALS)), {"hi": horizon})
    for book, row, reason in rows.all():
        key = "entry_id" if reason.startswith("entry") else "account"
        held.setdefault(book, []).append({key: int(row) if key == "entry_id" else row, "reason": reason})
    return held


async def seal(session: AsyncSession) -> SealResult:
    """Seal every escrow account's entries that are final and verify (``_UNVERIFIED``); idempotent, safe to run at
    any time. Books whose new rows fail are left unsealed and listed in ``held``."""
    await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SEAL_LOCK})
    horizon = await session.scalar(text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text"))
    result = SealResult(horizon=horizon, held=await unverified(session, horizon))
    heads = await session.execute(
        text(
            "SELECT b.escrow_account_id, s.seq, s.xid_to::text, s.hash FROM ledger_books b"
            " LEFT JOIN LATERAL (SELECT seq, xid_to, hash FROM ledger_seals"
            "   WHERE escrow_account_id = b.escrow_account_id ORDER BY seq DESC LIMIT 1) s ON true"
            " WHERE EXISTS (SELECT 1 FROM ledger_entries e WHERE e.escrow_account_id = b.escrow_account_id"
            "   AND e.xid >= coalesce(s.xid_to, '0'::xid8) AND e.xid < CAST(CAST(:hi AS text) AS xid8))"
            " ORDER BY b.escrow_account_id"
        ),
        {"hi": horizon},
    )
    for book, last_seq, last_to, last_hash in heads.all():
        if book in result.held:
            continue
        lo, seq, prev = last_to or "0", (last_seq or 0) + 1, last_hash or GENESIS
        count, digest = await _digest(session, book, lo, horizon)
        if not count:
            continue
        await session.execute(
            text(
                "INSERT INTO ledger_seals"
                " (escrow_account_id, seq, xid_from, xid_to, entry_count, digest, prev_hash, hash)"
                " VALUES (:book, :seq, CAST(CAST(:lo AS text) AS xid8), CAST(CAST(:hi AS text) AS xid8),"
                " :count, :digest, :prev, :hash)"
            ),
            {
                "book": book,
                "seq": seq,
                "lo": lo,
                "hi": horizon,
                "count": count,
                "digest": digest,
                "prev": prev,
                "hash": chain_hash(prev, book, seq, lo, horizon, count, digest),
            },
        )
        result.seals += 1
        result.entries += count
    return result


@dataclass
class Check:
    """One integrity check: whether it passed, how many rows it checked, and where it first failed."""

    name: str
    ok: bool = True
    checked: int = 0
    first_failure: dict[str, Any] | None = None

    def fail(self, **where: Any) -> None:
        if self.ok:
            self.ok = False
            self.first_failure = where


@dataclass
class VerifyReport:
    """The ledger's integrity report: the hash chains re-verified and the invariants rechecked on one snapshot."""

    ok: bool
    checked_at: str
    sealed_entries: int
    unsealed_entries: int
    chain_heads: dict[str, str]
    checks: list[Check] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _verify_chain(session: AsyncSession, check: Check, heads: dict[str, str]) -> int:
    sealed = 0
    rows = await session.execute(
        text(
            "SELECT escrow_account_id, seq, xid_from::text, xid_to::text, entry_count, digest, prev_hash, hash"
            " FROM ledger_seals ORDER BY escrow_account_id, seq"
        )
    )
    book_state: dict[str, tuple[int, str, bytes]] = {}
    for book, seq, lo, hi, count, digest, prev_hash, stored_hash in rows.all():
        check.checked += 1
        last_seq, last_to, last_hash = book_state.get(book, (0, "0", GENESIS))
        actual_count, actual_digest = await _digest(session, book, lo, hi)
        if seq != last_seq + 1 or lo != last_to:
            check.fail(escrow_account_id=book, seq=seq, reason="seal missing before this one (gap in the chain)")
        elif bytes(prev_hash) != last_hash:
            check.fail(escrow_account_id=book, seq=seq, reason="link to the previous seal is broken")
        elif (actual_count, actual_digest) != (count, bytes(digest)) and check.ok:
            check.fail(
                escrow_account_id=book,
                seq=seq,
                reason="sealed entries were changed, moved or deleted",
                sealed_count=count,
                found_count=actual_count,
                **await _differing(session, book, lo, hi),
            )
        elif chain_hash(last_hash, book, seq, lo, hi, count, bytes(digest)) != bytes(stored_hash):
            check.fail(escrow_account_id=book, seq=seq, reason="seal hash does not match its contents")
        book_state[book] = (seq, hi, bytes(stored_hash))
        heads[book] = bytes(stored_hash).hex()
        sealed += count
    # Entries below the sealed horizon must all lie inside their book's seals — except in a book held back from
    # sealing because one of its new entries fails its own checks (``seal``): entries_balance reports that entry.
    watermark = await session.scalar(text("SELECT max(xid_to)::text FROM ledger_seals"))
    if watermark:
        held = [b for b, rows in (await unverified(session, watermark)).items() if any("entry_id" in r for r in rows)]
        stray = await session.execute(
            text(
                "SELECT e.escrow_account_id, e.id FROM ledger_entries e"
                " LEFT JOIN LATERAL (SELECT max(xid_to) AS xid_to FROM ledger_seals s"
                "   WHERE s.escrow_account_id = e.escrow_account_id) s ON true"
                " WHERE e.xid < CAST(CAST(:w AS text) AS xid8) AND e.xid >= coalesce(s.xid_to, '0'::xid8)"
                " AND e.escrow_account_id <> ALL(CAST(:held AS text[]))"
                " ORDER BY e.id LIMIT 1"
            ),
            {"w": watermark, "held": sorted(held)},
        )
        row = stray.first()
        if row is not None:
            check.fail(escrow_account_id=row[0], entry_id=row[1], reason="entry inserted behind a sealed horizon")
    return sealed


async def _differing(session: AsyncSession, book: str, lo: str, hi: str) -> dict[str, Any]:
    """Which of a failing seal's rows differ: its entries that fail their own checks, or touch an account whose
    stored totals disagree with the journal (a seal keeps one digest, so an edit that keeps both consistent is
    named only by the seal and its range of entries)."""
    rows = await session.execute(
        text(
            f"SELECT e.id, bool_or(p.id IS NULL) OR count(p.id) < 2"
            f"  OR sum(CASE p.side WHEN 'D' THEN p.amount ELSE -p.amount END) FILTER (WHERE p.kind = 'posted') <> 0"
            f"  OR bool_or(p.escrow_account_id <> e.escrow_account_id),"
            f"  bool_or(p.account_id IN (SELECT t.id FROM ({_TOTALS}) t"
            f"    WHERE (t.pd, t.pc, t.hd, t.hc) IS DISTINCT FROM (t.jpd, t.jpc, t.jhd, t.jhc)))"
            f" FROM ledger_entries e LEFT JOIN ledger_postings p ON p.entry_id = e.id"
            f" WHERE e.escrow_account_id = :book"
            f"   AND e.xid >= CAST(CAST(:lo AS text) AS xid8) AND e.xid < CAST(CAST(:hi AS text) AS xid8)"
            f" GROUP BY e.id ORDER BY e.id"
        ),
        {"book": book, "lo": lo, "hi": hi},
    )
    found = rows.all()
    return {
        "entry_ids": [entry for entry, unbalanced, totals in found if unbalanced or totals][:100],
        "entries_in_seal": [found[0][0], found[-1][0]] if found else [],
    }


async def _first(session: AsyncSession, check: Check, count_sql: str, failure_sql: str, *keys: str) -> None:
    check.checked = await session.scalar(text(count_sql)) or 0
    row = (await session.execute(text(failure_sql))).first()
    if row is not None:
        check.fail(**dict(zip(keys, row, strict=True)))


async def verify_database(engine: AsyncEngine) -> VerifyReport:
    """``verify`` on a read-only repeatable-read snapshot of its own, so every check sees the same ledger."""
    async with engine.connect() as connection:
        connection = await connection.execution_options(isolation_level="REPEATABLE READ")
        await connection.execute(text("SET TRANSACTION READ ONLY"))
        async with AsyncSession(bind=connection) as session:
            return await verify(session)


async def verify(session: AsyncSession) -> VerifyReport:
    """Recompute the hash chains and the ledger invariants and report the first failure of each."""
    heads: dict[str, str] = {}
    chain = Check("hash_chain")
    sealed = await _verify_chain(session, chain, heads)
    total = await session.scalar(text("SELECT count(*) FROM ledger_entries")) or 0

    balanced = Check("entries_balance")
    await _first(
        session,
        balanced,
        "SELECT count(*) FROM ledger_entries",
        "SELECT e.id FROM ledger_entries e LEFT JOIN ledger_postings p ON p.entry_id = e.id"
        " GROUP BY e.id HAVING count(p.id) < 2"
        " OR sum(p.amount) FILTER (WHERE p.side = 'D' AND p.kind = 'posted')"
        "    IS DISTINCT FROM sum(p.amount) FILTER (WHERE p.side = 'C' AND p.kind = 'posted')"
        " OR sum(p.amount) FILTER (WHERE p.side = 'D' AND p.kind = 'pending')"
        "    IS DISTINCT FROM sum(p.amount) FILTER (WHERE p.side = 'C' AND p.kind = 'pending')"
        " OR sum(p.amount) FILTER (WHERE p.side = 'D' AND p.kind = 'release')"
        "    IS DISTINCT FROM sum(p.amount) FILTER (WHERE p.side = 'C' AND p.kind = 'release')"
        " ORDER BY e.id LIMIT 1",
        "entry_id",
    )

    totals = Check("account_totals_match_journal")
    await _first(
        session,
        totals,
        "SELECT count(*) FROM ledger_accounts",
        f"SELECT t.escrow_account_id, t.code FROM ({_TOTALS}) t"
        " WHERE (t.pd, t.pc, t.hd, t.hc) IS DISTINCT FROM (t.jpd, t.jpc, t.jhd, t.jhc) ORDER BY t.id LIMIT 1",
        "escrow_account_id",
        "code",
    )

    non_negative = Check("constrained_accounts_not_below_zero")
    await _first(
        session,
        non_negative,
        "SELECT count(*) FROM ledger_accounts WHERE non_negative",
        f"SELECT t.escrow_account_id, t.code, t.available FROM ({_TOTALS}) t"
        " WHERE t.non_negative AND t.available < 0 ORDER BY t.id LIMIT 1",
        "escrow_account_id",
        "code",
        "available",
    )

    custody = Check("custody_covers_liabilities")
    await _first(
        session,
        custody,
        "SELECT count(*) FROM ledger_accounts WHERE code = 'custody_cash'",
        f"SELECT t.escrow_account_id, sum(t.posted) FILTER (WHERE t.code = 'custody_cash'),"
        f" coalesce(sum(t.posted) FILTER (WHERE t.code <> 'custody_cash'), 0) FROM ({_TOTALS}) t"
        f" WHERE t.code = 'custody_cash' OR t.code LIKE 'card:%'"
        f"   OR t.code IN ('merchant_payable', 'refund_payable', 'transfer_payable', 'custody_difference')"
        f" GROUP BY t.escrow_account_id"
        f" HAVING sum(t.posted) FILTER (WHERE t.code = 'custody_cash')"
        f"   <> coalesce(sum(t.posted) FILTER (WHERE t.code <> 'custody_cash'), 0)"
        f" ORDER BY 1 LIMIT 1",
        "escrow_account_id",
        "custody_cash",
        "liabilities",
    )

    # Invariant 4, tying the cards' business rows to the journal: every paid card's accounts were credited its
    # price, and debited exactly what the card says was released to the merchant or refunded.
    cards = Check("cards_conserve_value")
    await _first(
        session,
        cards,
        "SELECT count(*) FROM cards WHERE status NOT IN ('awaiting_payment', 'cancelled')",
        "SELECT c.id, c.price, j.paid, c.released + c.refunded + c.transferred, j.out"
        " FROM cards c"
        " CROSS JOIN LATERAL (SELECT"
        "     coalesce(sum(p.amount) FILTER (WHERE p.side = 'C' AND p.kind = 'posted'), 0) AS paid,"
        "     coalesce(sum(p.amount) FILTER (WHERE p.side = 'D' AND p.kind = 'posted'), 0) AS out"
        "   FROM ledger_accounts a JOIN ledger_postings p ON p.account_id = a.id"
        "   WHERE a.escrow_account_id = c.escrow_account_id"
        "     AND a.code IN ('card:' || c.id, 'card_unprotected:' || c.id)) j"
        " WHERE c.status NOT IN ('awaiting_payment', 'cancelled')"
        "   AND (j.paid <> c.price OR j.out <> c.released + c.refunded + c.transferred)"
        " ORDER BY c.id LIMIT 1",
        "card_id",
        "price",
        "credited",
        "released_and_refunded",
        "debited",
    )

    # The first-compensation fund's claim on each closed merchant (fund book) mirrors, to the fen, the consumers'
    # claims it took over in that merchant's book (what it paid, less what was recovered).
    subrogation = Check("fund_claims_mirror_subrogation")
    await _first(
        session,
        subrogation,
        f"SELECT count(*) FROM ({_TOTALS}) t WHERE t.code LIKE 'fund_claims:%'",
        f"SELECT split_part(f.code, ':', 2), f.posted, coalesce(m.posted, 0) FROM ({_TOTALS}) f"
        f" LEFT JOIN ({_TOTALS}) m ON m.escrow_account_id = split_part(f.code, ':', 2)"
        f"   AND m.code = 'fund_subrogation'"
        f" WHERE f.escrow_account_id = 'fund' AND f.code LIKE 'fund_claims:%' AND f.posted <> coalesce(m.posted, 0)"
        f" ORDER BY 1 LIMIT 1",
        "escrow_account_id",
        "fund_claims",
        "fund_subrogation",
    )

    checks = [chain, balanced, totals, non_negative, custody, cards, subrogation]
    return VerifyReport(
        ok=all(c.ok for c in checks),
        checked_at=datetime.now(UTC).isoformat(),
        sealed_entries=sealed,
        unsealed_entries=total - sealed,
        chain_heads=heads,
        checks=checks,
    )


# Per account: stored totals (row + slots) next to totals recomputed from the journal, and derived balances.
_TOTALS = """
SELECT a.id, a.escrow_account_id, a.code, a.non_negative,
       a.posted_debits + coalesce(s.pd, 0) AS pd, a.posted_credits + coalesce(s.pc, 0) AS pc,
       a.pending_debits + coalesce(s.hd, 0) AS hd, a.pending_credits + coalesce(s.hc, 0) AS hc,
       coalesce(j.pd, 0) AS jpd, coalesce(j.pc, 0) AS jpc, coalesce(j.hd, 0) AS jhd, coalesce(j.hc, 0) AS jhc,
       CASE a.normal_side WHEN 'C' THEN coalesce(j.pc, 0) - coalesce(j.pd, 0)
            ELSE coalesce(j.pd, 0) - coalesce(j.pc, 0) END AS posted,
       CASE a.normal_side WHEN 'C' THEN coalesce(j.pc, 0) - coalesce(j.pd, 0) - coalesce(j.hd, 0)
            ELSE coalesce(j.pd, 0) - coalesce(j.pc, 0) - coalesce(j.hc, 0) END AS available
  FROM ledger_accounts a
  LEFT JOIN (SELECT account_id, sum(posted_debits) AS pd, sum(posted_credits) AS pc,
                    sum(pending_debits) AS hd, sum(pending_credits) AS hc
               FROM ledger_account_slots GROUP BY account_id) s ON s.account_id = a.id
  LEFT JOIN (SELECT account_id,
                    sum(amount) FILTER (WHERE side = 'D' AND kind = 'posted') AS pd,
                    sum(amount) FILTER (WHERE side = 'C' AND kind = 'posted') AS pc,
                    sum(CASE kind WHEN 'pending' THEN amount ELSE -amount END)
                        FILTER (WHERE side = 'D' AND kind <> 'posted') AS hd,
                    sum(CASE kind WHEN 'pending' THEN amount ELSE -amount END)
                        FILTER (WHERE side = 'C' AND kind <> 'posted') AS hc
               FROM ledger_postings GROUP BY account_id) j ON j.account_id = a.id
"""
