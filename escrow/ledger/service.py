"""The only writer of journal rows: every fen moves as a balanced, append-only entry through this module.

How movements are written
-------------------------
An entry is a set of legs (account, side, amount in fen) whose debits equal their credits. ``post`` writes
a final entry; ``hold`` a pending one, which lowers the *available* balance at once and is later resolved
exactly once by ``post_pending`` (in full, or in part for a single debit/credit pair), ``void_pending`` or,
past its deadline, ``expire_pending``. Each call is one round trip to a PL/pgSQL function
(``ledger_post_entries`` / ``ledger_resolve_pending``) that inserts the entry and its postings and applies
them to the account totals; ``post_many`` writes any number of entries in one call and one transaction,
checked on their combined effect (all or none of them is written).

How concurrent movements are kept apart
---------------------------------------
Only movements that *lower* the available balance of a constrained (never-below-zero) account need to
serialize, because only they can overdraw it. Such a movement updates the account row, which takes its row
lock; accounts are visited in ascending id order so two movements never wait on each other in a cycle. The
update fires a trigger that adds up the account and checks it is not below zero (SQLSTATE 23514), so the rule
holds for any writer, not just this module. Every other movement — a credit to ``merchant_payable``, a deposit
into ``custody_cash``, any movement of an unconstrained account, the release of a hold — is added to one of
16 slot rows of the account chosen by the database backend (``ledger_account_slots``), so concurrent
connections crediting one busy account do not queue behind one lock. An account's balance is its row plus
its slots. A slot row's own check constraint refuses any delta that would lower it.

What the database enforces by itself
------------------------------------
Entries balance per kind of posting (deferred constraint trigger at commit, SQLSTATE 23514); entries,
postings and seals cannot be updated, deleted or truncated; postings join their entry in the entry's own
transaction; amounts are positive and below 10^15; a pending entry is resolved at most once (unique index);
constrained accounts never go below zero; frozen accounts and escrow accounts refuse movements.
"""

import json
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import asyncpg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from escrow import db
from escrow.config import get_settings
from escrow.ledger import errors

Side = Literal["D", "C"]
FreezeMode = Literal["none", "debits", "all"]
MAX_AMOUNT = 10**15  # fen; amounts are below this

FUND_BOOK = "fund"

# Account kinds of domain.md §4: code prefix -> (normal side, never below zero)
ACCOUNT_KINDS: dict[str, tuple[Side, bool]] = {
    "custody_cash": ("D", True),
    "card": ("C", True),
    "card_unprotected": ("C", True),
    "merchant_obligation": ("D", False),
    "merchant_payable": ("C", True),
    "refund_payable": ("C", True),
    "refund_claims": ("C", True),  # refunds the merchant owes consumers outside custody
    "transfer_payable": ("C", True),  # custodied funds of cards taken over, on their way to the successor
    # differences with the bank the regulator booked (reconciliation adjustments): a credit balance is money in
    # custody nobody is owed yet, a debit balance money missing from custody
    "custody_difference": ("C", False),
    "fund_subrogation": ("C", True),  # consumers' claims on the merchant the fund paid and now holds
    "fund_cash": ("D", True),
    "fund_contributions": ("C", False),
    "fund_payable": ("C", True),
    "fund_claims": ("D", False),
}
ESCROW_ACCOUNTS = ("custody_cash", "merchant_obligation", "merchant_payable", "refund_payable")
FUND_ACCOUNTS = ("fund_cash", "fund_contributions", "fund_payable")


@dataclass(frozen=True, slots=True)
class Leg:
    """One side of an entry: ``amount`` fen debited (``D``) or credited (``C``) to ``account``."""

    account: str
    side: Side
    amount: int
    book: str | None = None  # the entry's escrow account when None


def transfer(debit: str, credit: str, amount: int) -> tuple[Leg, Leg]:
    """Debit one account and credit another within the entry's escrow account."""
    return Leg(debit, "D", amount), Leg(credit, "C", amount)


@dataclass(frozen=True, slots=True)
class Entry:
    book: str  # escrow account id: the shard every row carries
    kind: str  # business kind: card_paid, release, payout, refund, adjustment, ...
    legs: Sequence[Leg]
    refs: dict[str, Any] = field(default_factory=dict)  # external references (card id, bank transaction id, ...)
    principal: str | None = None  # who caused it
    idempotency_ref: str | None = None  # unique per escrow account when given
    expires_at: datetime | None = None  # holds only


@dataclass(frozen=True, slots=True)
class Balance:
    normal_side: Side
    posted_debits: int
    posted_credits: int
    pending_debits: int
    pending_credits: int

    @property
    def posted(self) -> int:
        """The settled balance, positive on the account's normal side."""
        if self.normal_side == "C":
            return self.posted_credits - self.posted_debits
        return self.posted_debits - self.posted_credits

    @property
    def pending(self) -> int:
        """Held against the account: pending movements away from its normal side."""
        return self.pending_debits if self.normal_side == "C" else self.pending_credits

    @property
    def available(self) -> int:
        return self.posted - self.pending


def _check_amount(amount: object) -> int:
    if type(amount) is not int:  # bool, float, Decimal, str: refused, money is integer fen
        raise TypeError(f"ledger amounts are int fen, not {type(amount).__name__}")
    if not 0 < amount < MAX_AMOUNT:
        raise errors.InvalidMovement(f"amount must be between 1 and {MAX_AMOUNT - 1} fen, got {amount}")
    return amount


def _validate(entry: Entry, pending: bool) -> None:
    debits = credits = 0
    for leg in entry.legs:
        amount = _check_amount(leg.amount)
        if leg.side == "D":
            debits += amount
        elif leg.side == "C":
            credits += amount
        else:
            raise errors.InvalidMovement(f"side must be D or C, got {leg.side!r}")
    if debits != credits or not debits:
        raise errors.Unbalanced(f"{entry.kind}: debits {debits} fen and credits {credits} fen must be equal")
    if entry.expires_at is not None and not pending:
        raise errors.InvalidMovement("only holds can expire")


_POST_ENTRIES = (
    "SELECT ledger_post_entries($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::text[], $6::text[],"
    " $7::timestamptz[], $8::int[], $9::text[], $10::text[], $11::text[], $12::bigint[], $13)"
)


def _post_entries_params(entries: Sequence[Entry], pending: bool) -> tuple[Any, ...]:
    """The entries as the parallel arrays ``ledger_post_entries`` takes (legs name their entry by position)."""
    leg_entries: list[int] = []
    leg_books: list[str] = []
    leg_codes: list[str] = []
    leg_sides: list[str] = []
    leg_amounts: list[int] = []
    for position, entry in enumerate(entries, start=1):
        _validate(entry, pending)
        for leg in entry.legs:
            leg_entries.append(position)
            leg_books.append(leg.book or entry.book)
            leg_codes.append(leg.account)
            leg_sides.append(leg.side)
            leg_amounts.append(leg.amount)
    return (
        [e.book for e in entries],
        [e.kind for e in entries],
        ["pending" if pending else "posted"] * len(entries),
        [json.dumps(e.refs) if e.refs else None for e in entries],
        [e.principal for e in entries],
        [e.idempotency_ref for e in entries],
        [e.expires_at for e in entries],
        leg_entries,
        leg_books,
        leg_codes,
        leg_sides,
        leg_amounts,
        get_settings().business_timezone,
    )


async def _call(session: AsyncSession, sql: str, params: Sequence[Any]) -> Any:
    """One statement in the session's transaction, straight to the driver (see ``escrow.db.fetch``)."""
    try:
        return await db.fetchval(session, sql, *params)
    except (DBAPIError, asyncpg.PostgresError) as exc:
        raise errors.translate(exc) from exc


async def post_many(session: AsyncSession, entries: Iterable[Entry], *, pending: bool = False) -> list[int]:
    """Write many entries in one call and one transaction; returns their ids in order."""
    entries = list(entries)
    if not entries:
        return []
    return list(await _call(session, _POST_ENTRIES, _post_entries_params(entries, pending)))


async def post(session: AsyncSession, entry: Entry) -> int:
    """Write a final entry; returns its id."""
    return (await post_many(session, [entry]))[0]


async def hold(session: AsyncSession, entry: Entry) -> int:
    """Write a pending entry (lowers available balances now); returns its id for post/void."""
    return (await post_many(session, [entry], pending=True))[0]


async def _resolve(
    session: AsyncSession,
    pending_id: int,
    action: str,
    amount: int | None,
    principal: str | None,
    refs: dict[str, Any] | None,
    idempotency_ref: str | None,
) -> int | None:
    if amount is not None:
        _check_amount(amount)
    return await _call(
        session,
        "SELECT ledger_resolve_pending($1, $2, $3, $4, $5::jsonb, $6, $7)",
        (
            pending_id,
            action,
            amount,
            principal,
            json.dumps(refs or {}),
            idempotency_ref,
            get_settings().business_timezone,
        ),
    )


async def post_pending(
    session: AsyncSession,
    pending_id: int,
    amount: int | None = None,
    *,
    principal: str | None = None,
    refs: dict[str, Any] | None = None,
    idempotency_ref: str | None = None,
) -> int:
    """Post a hold in full (``amount`` None) or in part; the rest is released. Returns the new entry's id."""
    return await _resolve(session, pending_id, "post", amount, principal, refs, idempotency_ref)


async def void_pending(
    session: AsyncSession,
    pending_id: int,
    *,
    principal: str | None = None,
    refs: dict[str, Any] | None = None,
    idempotency_ref: str | None = None,
) -> int:
    """Release a hold entirely. Returns the new entry's id."""
    return await _resolve(session, pending_id, "void", None, principal, refs, idempotency_ref)


async def expire_pending(session: AsyncSession, *, limit: int = 1000, principal: str = "system:expiry") -> list[int]:
    """Release holds whose deadline has passed (a background job calls this). Returns the holds expired."""
    connection = await session.connection()
    # Holds in a book or account frozen for all movement wait until it is unfrozen; one resolved meanwhile
    # by a concurrent post or void is skipped by the function (it returns NULL).
    rows = await connection.exec_driver_sql(
        "SELECT e.id FROM ledger_entries e WHERE e.type = 'pending' AND e.expires_at <= now()"
        " AND NOT EXISTS (SELECT 1 FROM ledger_entries r WHERE r.pending_id = e.id)"
        " AND NOT EXISTS (SELECT 1 FROM ledger_books b WHERE b.escrow_account_id = e.escrow_account_id"
        "   AND b.frozen = 'all')"
        " AND NOT EXISTS (SELECT 1 FROM ledger_postings p JOIN ledger_accounts a ON a.id = p.account_id"
        "   WHERE p.entry_id = e.id AND a.frozen = 'all')"
        " ORDER BY e.expires_at LIMIT $1 FOR UPDATE OF e SKIP LOCKED",
        (limit,),
    )
    expired = []
    for (pending_id,) in rows.all():
        if await _resolve(session, pending_id, "expire", None, principal, None, None) is not None:
            expired.append(pending_id)
    return expired


async def open_book(session: AsyncSession, book: str) -> None:
    """Create an escrow account's ledger with its standard accounts (idempotent)."""
    await session.execute(
        text("INSERT INTO ledger_books (escrow_account_id) VALUES (:book) ON CONFLICT DO NOTHING"), {"book": book}
    )
    codes = FUND_ACCOUNTS if book == FUND_BOOK else ESCROW_ACCOUNTS
    for code in codes:
        await open_account(session, book, code)


async def open_account(
    session: AsyncSession,
    book: str,
    code: str,
    *,
    normal_side: Side | None = None,
    non_negative: bool | None = None,
) -> int:
    """Create a ledger account (idempotent); kind defaults come from its code prefix (``card:<id>`` → card)."""
    default_side, default_non_negative = ACCOUNT_KINDS.get(code.split(":", 1)[0], (None, None))
    side = normal_side or default_side
    constrained = default_non_negative if non_negative is None else non_negative
    if side is None or constrained is None:
        raise errors.InvalidMovement(f"account {code!r} is of no known kind: give normal_side and non_negative")
    try:
        account_id = await session.scalar(
            text(
                "INSERT INTO ledger_accounts (escrow_account_id, code, normal_side, non_negative)"
                " VALUES (:book, :code, :side, :nn) ON CONFLICT (escrow_account_id, code) DO NOTHING RETURNING id"
            ),
            {"book": book, "code": code, "side": side, "nn": constrained},
        )
    except DBAPIError as exc:
        raise errors.InvalidMovement(f"cannot open ledger account {book}/{code}: {exc.orig}") from exc
    if account_id is None:
        account_id = await _account_id(session, book, code)
    return account_id


async def open_accounts(session: AsyncSession, book: str, codes: Sequence[str]) -> None:
    """Create ledger accounts of known kinds (``card:<id>``, …) in one round trip (idempotent)."""
    kinds = [ACCOUNT_KINDS.get(code.split(":", 1)[0]) for code in codes]
    if None in kinds:
        raise errors.InvalidMovement(f"accounts {list(codes)!r} include one of no known kind")
    try:
        await db.fetch(
            session,
            "INSERT INTO ledger_accounts (escrow_account_id, code, normal_side, non_negative)"
            " SELECT $1, u.code, u.side, u.nn FROM unnest($2::text[], $3::text[], $4::bool[]) AS u(code, side, nn)"
            " ON CONFLICT (escrow_account_id, code) DO NOTHING",
            book,
            list(codes),
            [kind[0] for kind in kinds],  # type: ignore[index]
            [kind[1] for kind in kinds],  # type: ignore[index]
        )
    except (DBAPIError, asyncpg.PostgresError) as exc:
        raise errors.InvalidMovement(f"cannot open ledger accounts {list(codes)!r} of {book}: {exc}") from exc


async def _account_id(session: AsyncSession, book: str, code: str) -> int:
    account_id = await session.scalar(
        text("SELECT id FROM ledger_accounts WHERE escrow_account_id = :book AND code = :code"),
        {"book": book, "code": code},
    )
    if account_id is None:
        raise errors.UnknownAccount(f"no ledger account {book}/{code}")
    return account_id


async def _lock_book(session: AsyncSession, book: str) -> None:
    """Wait for the escrow account's movements under way, and hold off new ones until this transaction ends."""
    await session.execute(
        text(
            "SELECT pg_advisory_xact_lock(hashtextextended('ledger-book:' || :book || ':' || part, 0))"
            " FROM generate_series(0, 7) AS part ORDER BY part"
        ),
        {"book": book},
    )


@asynccontextmanager
async def settlement_window(session: AsyncSession, book: str) -> AsyncIterator[None]:
    """Let this transaction move money in a frozen escrow account (a closure's settlement, a bank's report of
    an instruction it already carried out) while the account stays frozen to everyone else.

    For a frozen account the cut-off lock is taken first and held to the end of the transaction, so no other
    movement can start while the freeze flag is lifted; the flag is put back before the transaction ends (a
    rollback restores it by itself)."""
    query = text("SELECT frozen FROM ledger_books WHERE escrow_account_id = :book")
    mode = await session.scalar(query, {"book": book})
    if mode is None:
        raise errors.UnknownAccount(f"no ledger for escrow account {book}")
    if mode != "none":  # (an account frozen after this read refuses the movement: the caller may retry)
        await _lock_book(session, book)
        mode = await session.scalar(query, {"book": book})
    if mode != "none":
        await session.execute(
            text("UPDATE ledger_books SET frozen = 'none' WHERE escrow_account_id = :book"), {"book": book}
        )
    yield
    if mode != "none":
        await session.execute(
            text("UPDATE ledger_books SET frozen = :mode WHERE escrow_account_id = :book"), {"mode": mode, "book": book}
        )


async def freeze_account(session: AsyncSession, book: str, code: str, mode: FreezeMode) -> None:
    """``debits``: no new debits; ``all``: no movements; ``none``: unfrozen."""
    await _account_id(session, book, code)
    await _lock_book(session, book)
    await session.execute(
        text("UPDATE ledger_accounts SET frozen = :mode WHERE escrow_account_id = :book AND code = :code"),
        {"mode": mode, "book": book, "code": code},
    )


async def freeze_book(session: AsyncSession, book: str, mode: FreezeMode) -> None:
    """Freeze every account of an escrow account at once (``debits``, ``all``) or unfreeze it (``none``).

    Takes effect as a cut-off: movements already under way finish first, none starts after it unseen."""
    await _lock_book(session, book)
    result = await session.execute(
        text("UPDATE ledger_books SET frozen = :mode WHERE escrow_account_id = :book"), {"mode": mode, "book": book}
    )
    if not result.rowcount:
        raise errors.UnknownAccount(f"no ledger for escrow account {book}")


_CURRENT_BALANCE = text(
    "SELECT a.normal_side,"
    " a.posted_debits + coalesce(sum(s.posted_debits), 0), a.posted_credits + coalesce(sum(s.posted_credits), 0),"
    " a.pending_debits + coalesce(sum(s.pending_debits), 0), a.pending_credits + coalesce(sum(s.pending_credits), 0)"
    " FROM ledger_accounts a LEFT JOIN ledger_account_slots s ON s.account_id = a.id"
    " WHERE a.escrow_account_id = :book AND a.code = :code GROUP BY a.id"
)
_BALANCE_AS_OF = text(
    "SELECT a.normal_side,"
    " coalesce(sum(p.amount) FILTER (WHERE p.side = 'D' AND p.kind = 'posted'), 0),"
    " coalesce(sum(p.amount) FILTER (WHERE p.side = 'C' AND p.kind = 'posted'), 0),"
    " coalesce(sum(CASE p.kind WHEN 'pending' THEN p.amount ELSE -p.amount END)"
    "   FILTER (WHERE p.side = 'D' AND p.kind <> 'posted'), 0),"
    " coalesce(sum(CASE p.kind WHEN 'pending' THEN p.amount ELSE -p.amount END)"
    "   FILTER (WHERE p.side = 'C' AND p.kind <> 'posted'), 0)"
    " FROM ledger_accounts a"
    " LEFT JOIN (ledger_postings p JOIN ledger_entries e ON e.id = p.entry_id AND e.occurred_at <= :as_of)"
    "   ON p.account_id = a.id"
    " WHERE a.escrow_account_id = :book AND a.code = :code GROUP BY a.id"
)


async def balance(session: AsyncSession, book: str, code: str, as_of: datetime | None = None) -> Balance:
    """Posted, pending and available balance now, or exactly as of an instant (from the journal itself)."""
    params: dict[str, Any] = {"book": book, "code": code}
    if as_of is not None:
        params["as_of"] = as_of
    row = (await session.execute(_CURRENT_BALANCE if as_of is None else _BALANCE_AS_OF, params)).one_or_none()
    if row is None:
        raise errors.UnknownAccount(f"no ledger account {book}/{code}")
    return Balance(row[0], int(row[1]), int(row[2]), int(row[3]), int(row[4]))


@dataclass(frozen=True, slots=True)
class HistoryLine:
    posting_id: int
    entry_id: int
    kind: str  # the entry's business kind
    entry_type: str
    posting_kind: str  # posted, pending or release
    side: Side
    amount: int
    occurred_at: datetime
    refs: dict[str, Any]


async def history(
    session: AsyncSession, book: str, code: str, cursor: str | None = None, limit: int = 50
) -> tuple[list[HistoryLine], str | None]:
    """An account's postings, newest first, with keyset pagination (``next_cursor`` is None at the end)."""
    account_id = await _account_id(session, book, code)
    before = int(cursor) if cursor and re.fullmatch(r"[0-9]{1,18}", cursor) else None
    if cursor is not None and before is None:
        raise errors.InvalidMovement("cursor is not one this service issued")
    rows = await session.execute(
        text(
            "SELECT p.id, p.entry_id, e.kind, e.type, p.kind, p.side, p.amount, e.occurred_at, e.refs"
            " FROM ledger_postings p JOIN ledger_entries e ON e.id = p.entry_id"
            " WHERE p.account_id = :account AND (CAST(:before AS bigint) IS NULL OR p.id < :before)"
            " ORDER BY p.id DESC LIMIT :limit"
        ),
        {"account": account_id, "before": before, "limit": limit + 1},
    )
    lines = [HistoryLine(*row) for row in rows]
    next_cursor = str(lines[limit - 1].posting_id) if len(lines) > limit else None
    return lines[:limit], next_cursor
