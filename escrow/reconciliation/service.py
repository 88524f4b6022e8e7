"""Bank reconciliation: every business day the bank's statement of an escrow account must agree with the
ledger's ``custody_cash``, line by line and in its balances; what does not agree is a break until resolved.

Intake. A statement's lines are streamed into ``bank_statement_lines`` with binary COPY, tallied and hashed on
the way; then its row is written (its totals must take the opening balance to the closing one). The same content
again for the same account and day changes nothing (the copy is rolled back to a savepoint); other content is a
correction: a new version becomes current, the earlier one is kept, superseded, with its breaks closed and its
matches released, and matching runs again.

Matching (``matching.py``) is set-based SQL over the statement lines of the account's current statements and a
projection of the journal's posted ``custody_cash`` postings (``custody_movements``), one statement per rule, never a
loop per line.
Each rule pairs a line with at most one movement and a movement with at most one line, in this order:
1. the reference this service issued (a card's payment reference, an instruction id) against the line's
   end-to-end reference, same direction;
2. the bank's own transaction id as the bank reported it to the service, against the line's;
3. amount and direction, the value date within ``reconciliation_tolerance_days`` of the movement's business
   date (lines and movements of each amount paired in date order), never across two different references.
A line whose matched movements add up to another amount is an ``amount_mismatch``; a line with none is
``not_in_ledger``; a movement on no statement is in transit until the latest statement is
``reconciliation_in_transit_days`` past its date, then ``not_on_statement``.

Balances. For each current statement the opening balance is checked against the end of the day before and the
closing balance against the end of its day: what the bank should show is ``custody_cash`` as of then (from the
journal) less the movements the bank hasn't booked by then, plus those it booked that the ledger recorded later.
What line breaks don't explain — the bank's balance jumping between two statements, or disagreeing with the
ledger's history at the first — is a ``balance_mismatch``.

Resolution is the regulator's: a note (``accept``), an adjusting entry through the ledger (``adjust``: custody_cash
against ``custody_difference``, never an edit), or, for an unmatched deposit, paying a card awaiting payment with
it (``attach_to_card``). Movements a resolution makes are linked to what they resolve, so matching again (after a
corrected statement, too) keeps them in place.
"""

import hashlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import func, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from escrow import db, ledger
from escrow.auth.tokens import Principal
from escrow.cards import service as cards
from escrow.config import Settings
from escrow.errors import Conflict, FieldInvalid, NotFound
from escrow.kit.clock import business_date, utcnow
from escrow.kit.crypto import Keyring, mask_account_number, normalize_account_number
from escrow.kit.ids import new_id
from escrow.models import (
    BankStatement,
    Card,
    EscrowAccount,
    ReconciliationBreak,
)
from escrow.reconciliation.matching import (
    LINE_STATE,
    SYSTEM,
    RunReport,
    analyze_if_many,
    lock_account,
    run_matching,
    sync_movements,
)
from escrow.reconciliation.parsing import (
    Header,
    Line,
    ParsedStatement,
    StatementInvalid,
    StatementTooLarge,
    json_file_statement,
)
from escrow.reconciliation.schemas import BreakResolution
from escrow.reconciliation.threaded import camt053_in_thread, each

ADJUSTMENT = "reconciliation_adjustment"  # the ledger kind of an adjusting entry
COPY_COLUMNS = (
    "statement_id",
    "line_no",
    "escrow_account_id",
    "bank_transaction_id",
    "end_to_end_id",
    "direction",
    "amount",
    "value_date",
    "booking_date",
    "text",
)
PROGRESS_EVERY = 10_000  # lines between two progress reports
RECONCILABLE = ("active", "frozen", "closed")
log = structlog.get_logger("escrow.reconciliation")  # escrow accounts the bank holds money of (or held)

Progress = Callable[[int], None]


class AccountNotReconcilable(Conflict):
    code = "account_not_reconcilable"
    title = "The escrow account has no bank account yet"


class BreakSettled(Conflict):
    code = "break_settled"
    title = "The break is not open"


class ResolutionRefused(Conflict):
    code = "resolution_refused"
    title = "This resolution does not fit the break"


# --- who sees what -------------------------------------------------------------------------------------------


def sees_account(principal: Principal, account: EscrowAccount | None) -> bool:
    if account is None:
        return False
    return principal.role == "regulator" or (principal.role == "bank" and account.bank_id == principal.id)


async def visible_account(session: AsyncSession, principal: Principal, account_id: str) -> EscrowAccount:
    account = await session.get(EscrowAccount, account_id)
    if not sees_account(principal, account):
        raise NotFound(f"no escrow account {account_id}")
    assert account is not None
    return account


# --- intake --------------------------------------------------------------------------------------------------


class AccountDirectory:
    """Finds the escrow account a statement names — by its id, or by the bank account number a camt.053 file
    quotes — among the accounts of one bank (a bank's call), or of every bank (the operator's command line)."""

    def __init__(self, session: AsyncSession, keyring: Keyring, bank_id: str | None) -> None:
        self.session, self.keyring, self.bank_id = session, keyring, bank_id
        self._by_number: dict[str, list[str]] | None = None

    async def find(self, header: Header) -> EscrowAccount:
        field_name = f"{header.where}/Acct/Id" if header.format == "camt053" else "escrow_account_id"
        account_id = header.account if header.account.startswith("esc_") else await self._by_bank_number(header)
        account = await self.session.get(EscrowAccount, account_id) if account_id else None
        if account is None or (self.bank_id is not None and account.bank_id != self.bank_id):
            shown = header.account if header.account.startswith("esc_") else mask_account_number(header.account)
            raise NotFound(f"{field_name}: no escrow account {shown} at this bank")
        if account.status not in RECONCILABLE:
            raise AccountNotReconcilable(f"escrow account {account.id} is {account.status}: it holds no money yet")
        return account

    async def _by_bank_number(self, header: Header) -> str | None:
        if self._by_number is None:
            query = select(EscrowAccount.id, EscrowAccount.bank_account_enc).where(
                EscrowAccount.bank_account_enc.is_not(None)
            )
            if self.bank_id is not None:
                query = query.where(EscrowAccount.bank_id == self.bank_id)
            self._by_number = {}
            for account_id, encrypted in (await self.session.execute(query)).all():
                number = self.keyring.decrypt(encrypted, f"escrow_accounts.bank_account:{account_id}")
                self._by_number.setdefault(number, []).append(account_id)
        try:
            number = normalize_account_number(header.account)
        except ValueError:
            return None
        found = self._by_number.get(number, [])
        if len(found) > 1:
            raise StatementInvalid(
                f"{header.where}/Acct/Id",
                f"bank account {mask_account_number(number)} is recorded for {len(found)} escrow accounts: "
                "name the escrow account id (esc_…) instead",
            )
        return found[0] if found else None


@dataclass
class Intake:
    statement: BankStatement
    outcome: str  # created, replaced, unchanged


@dataclass
class _Tally:
    digest: Any
    count: int = 0
    credits: int = 0
    debits: int = 0

    def add(self, line: Line) -> None:
        self.count += 1
        if line.direction == "credit":
            self.credits += line.amount
        else:
            self.debits += line.amount
        self.digest.update("\x1f".join("" if v is None else str(v) for v in line).encode() + b"\n")


async def import_statement(
    session: AsyncSession,
    settings: Settings,
    directory: AccountDirectory,
    parsed: ParsedStatement,
    received_by: str,
    *,
    progress: Progress | None = None,
) -> Intake:
    """Store one statement (or recognise it as sent before); matching is the caller's next step."""
    header = parsed.header
    account = await directory.find(header)
    today = business_date(utcnow(), settings.business_timezone)
    if header.business_date > today:
        raise StatementInvalid(
            "business_date" if header.format == "json" else f"{header.where}/Bal",
            f"{header.business_date} is after today ({today}): a statement closes a day that is over or under way",
        )
    await lock_account(session, account.id)
    current = await session.scalar(
        select(BankStatement)
        .where(
            BankStatement.escrow_account_id == account.id,
            BankStatement.business_date == header.business_date,
            BankStatement.status == "current",
        )
        .with_for_update()
    )
    statement_id = new_id("stm")
    savepoint = await session.begin_nested()
    tally = await _copy_lines(session, statement_id, account.id, parsed, progress)
    await analyze_if_many(session, "bank_statement_lines", tally.count)
    digest = tally.digest.hexdigest()
    if current is not None and current.digest == digest:
        await savepoint.rollback()
        await session.refresh(current)
        return Intake(current, "unchanged")
    if header.opening + tally.credits - tally.debits != header.closing:
        raise StatementInvalid(
            "closing_balance" if header.format == "json" else f"{header.where}/Bal",
            f"the opening balance {header.opening} fen plus credits {tally.credits} less debits {tally.debits} is "
            f"{header.opening + tally.credits - tally.debits} fen, not the closing balance {header.closing} fen",
        )
    if current is not None:
        await _supersede(session, current, statement_id)
    statement = BankStatement(
        id=statement_id,
        escrow_account_id=account.id,
        bank_id=account.bank_id,
        business_date=header.business_date,
        version=current.version + 1 if current else 1,
        status="current",
        format=header.format,
        bank_statement_id=header.bank_statement_id,
        message_id=header.message_id,
        opening_balance=header.opening,
        closing_balance=header.closing,
        line_count=tally.count,
        credits=tally.credits,
        debits=tally.debits,
        digest=digest,
        received_by=received_by,
    )
    session.add(statement)
    await session.flush()
    await savepoint.commit()
    outcome = "replaced" if current else "created"
    log.info(
        "statement_received",
        statement_id=statement.id,
        escrow_account_id=account.id,
        business_date=str(header.business_date),
        version=statement.version,
        outcome=outcome,
        lines=tally.count,
        format=header.format,
    )
    return Intake(statement, outcome)


async def _copy_lines(
    session: AsyncSession, statement_id: str, account_id: str, parsed: ParsedStatement, progress: Progress | None
) -> _Tally:
    header = parsed.header
    tally = _Tally(hashlib.sha256(f"{header.business_date}|{header.opening}|{header.closing}\n".encode()))

    async def records() -> AsyncIterator[tuple]:
        async for line in each(parsed.lines):
            tally.add(line)
            yield (statement_id, tally.count, account_id, *line)
            if progress is not None and tally.count % PROGRESS_EVERY == 0:
                progress(tally.count)

    connection = await (await session.connection()).get_raw_connection()
    await connection.driver_connection.copy_records_to_table(
        "bank_statement_lines", records=records(), columns=COPY_COLUMNS
    )
    if progress is not None:
        progress(tally.count)
    return tally


async def _supersede(session: AsyncSession, old: BankStatement, new_statement_id: str) -> None:
    """A corrected statement replaces ``old``: it is kept, superseded; its open breaks close and the movements
    matched with its lines are free to match the correction."""
    old.status = "superseded"
    old.superseded_at = utcnow()
    old.superseded_by = new_statement_id
    await session.flush()
    params = {"old": old.id, "by": SYSTEM}
    await session.execute(
        text(
            "UPDATE reconciliation_breaks SET state = 'resolved', resolution = 'superseded', resolved_at = now(),"
            " resolved_by = :by WHERE statement_id = :old AND state = 'open'"
        ),
        params,
    )
    await session.execute(text("DELETE FROM reconciliation_matches WHERE statement_id = :old"), {"old": old.id})


# --- resolution ----------------------------------------------------------------------------------------------


async def get_break(session: AsyncSession, principal: Principal, break_id: str, *, lock: bool = False):
    found = await session.get(ReconciliationBreak, break_id)
    if found is None or not sees_account(principal, await session.get(EscrowAccount, found.escrow_account_id)):
        raise NotFound(f"no break {break_id}")
    if lock:
        found = await session.get(ReconciliationBreak, break_id, with_for_update=True, populate_existing=True)
        assert found is not None
    return found


async def _line_difference(session: AsyncSession, found: ReconciliationBreak) -> tuple[int, str | None]:
    """The break's line now: its difference (bank minus ledger) and the bank's reference."""
    row = (
        await session.execute(
            text(
                f"WITH {LINE_STATE} SELECT s.difference, l.bank_transaction_id FROM line_state s"
                " JOIN bank_statement_lines l ON l.statement_id = s.statement_id AND l.line_no = s.line_no"
                " WHERE s.statement_id = :statement AND s.line_no = :line"
            ),
            {"account": found.escrow_account_id, "statement": found.statement_id, "line": found.line_no},
        )
    ).one()
    return int(row[0]), row[1]


async def _posting_of(session: AsyncSession, entry_id: int) -> int:
    """The custody_cash posting of an entry just written, brought into the projection."""
    posting = await session.scalar(
        text("SELECT posting_id FROM custody_movements WHERE entry_id = :entry"), {"entry": entry_id}
    )
    assert posting is not None, f"entry {entry_id} moved no custody_cash"
    return posting


async def _link(
    session: AsyncSession, found: ReconciliationBreak, posting_id: int, rule: str, *, line: bool = True
) -> None:
    await session.execute(
        text(
            "INSERT INTO reconciliation_matches (posting_id, escrow_account_id, statement_id, line_no, rule, break_id)"
            " VALUES (:posting, :account, :statement, :line, :rule, :break)"
        ),
        {
            "posting": posting_id,
            "account": found.escrow_account_id,
            "statement": found.statement_id if rule != "offset" else None,
            "line": found.line_no if line else None,
            "rule": rule,
            "break": found.id,
        },
    )


async def _adjust(session: AsyncSession, found: ReconciliationBreak, principal: str) -> int:
    """Post the adjusting entry that makes the ledger agree with the bank for this break; returns its id."""
    bank_reference: str | None = None
    if found.kind in ("not_in_ledger", "amount_mismatch"):
        amount, bank_reference = await _line_difference(session, found)
    elif found.kind == "not_on_statement":
        movement_linked = await session.scalar(
            text("SELECT 1 FROM reconciliation_matches WHERE posting_id = :posting"), {"posting": found.posting_id}
        )
        if movement_linked:
            raise ResolutionRefused(f"break {found.id}: its ledger movement has been matched since")
        amount = found.amount
    else:
        amount = found.amount
    if amount == 0:
        raise ResolutionRefused(f"break {found.id}: the bank and the ledger agree now; nothing to adjust")
    book = found.escrow_account_id
    await ledger.open_account(session, book, "custody_difference")
    legs = (
        ledger.transfer("custody_cash", "custody_difference", amount)
        if amount > 0
        else ledger.transfer("custody_difference", "custody_cash", -amount)
    )
    refs: dict[str, Any] = {"break_id": found.id, "break_kind": found.kind}
    if bank_reference:
        refs["bank_transaction_id"] = bank_reference
    if found.statement_id:
        refs["statement_id"] = found.statement_id
    async with ledger.settlement_window(session, book):  # money that already moved at the bank
        entry_id = await ledger.post(
            session,
            ledger.Entry(
                book, ADJUSTMENT, legs, refs=refs, principal=principal, idempotency_ref=f"reconciliation:{found.id}"
            ),
        )
    await sync_movements(session, book)
    posting = await _posting_of(session, entry_id)
    if found.kind == "not_on_statement":
        assert found.posting_id is not None
        await _link(session, found, found.posting_id, "offset")
        await _link(session, found, posting, "offset")
    else:
        await _link(session, found, posting, "adjustment", line=found.line_no is not None)
    return entry_id


async def _attach(
    session: AsyncSession, settings: Settings, found: ReconciliationBreak, card_id: str | None, principal: str
) -> db.Row:
    if card_id is None:
        raise FieldInvalid("card_id", "attach_to_card needs the card the deposit pays")
    if found.kind != "not_in_ledger":
        raise ResolutionRefused(f"break {found.id} is {found.kind}: only a deposit not in the ledger can pay a card")
    line = (
        await session.execute(
            text(
                "SELECT direction, amount, bank_transaction_id FROM bank_statement_lines"
                " WHERE statement_id = :statement AND line_no = :line"
            ),
            {"statement": found.statement_id, "line": found.line_no},
        )
    ).one()
    if line.direction != "credit":
        raise ResolutionRefused(f"break {found.id}: a debit can't pay a card")
    in_account = await session.scalar(
        select(Card.id).where(Card.id == card_id, Card.escrow_account_id == found.escrow_account_id)
    )
    card = await cards.lock_payable(session, card_id) if in_account else None  # others' cards are never locked
    if card is None:
        raise FieldInvalid("card_id", f"no card {card_id} in escrow account {found.escrow_account_id}")
    if card.status != "awaiting_payment" or card.predecessor_card_id is not None:
        raise ResolutionRefused(f"card {card.id} is {card.status}: only a card awaiting payment can be paid")
    if card.price != line.amount:
        raise ResolutionRefused(f"card {card.id} costs {card.price} fen; the deposit is {line.amount} fen")
    if card.account_status != "active":
        raise ResolutionRefused(f"escrow account {card.escrow_account_id} is not active: it takes no payments")
    paid = await cards.paid_by(session, found.bank_id, line.bank_transaction_id)  # as for a reported deposit
    if paid is not None:
        raise ResolutionRefused(f"bank transaction {line.bank_transaction_id} already paid card {paid}")
    await cards.activate_paid(session, settings, card, principal, line.bank_transaction_id, "statement")
    await sync_movements(session, found.escrow_account_id)
    entry = await session.scalar(
        text(
            "SELECT entry_id FROM custody_movements WHERE escrow_account_id = :account AND entry_kind = 'card_paid'"
            " AND service_ref = :reference ORDER BY posting_id DESC LIMIT 1"
        ),
        {"account": found.escrow_account_id, "reference": card.payment_reference},
    )
    assert entry is not None
    await _link(session, found, await _posting_of(session, entry), "attached")
    return card


async def resolve_break(
    session: AsyncSession, settings: Settings, principal: Principal, break_id: str, data: BreakResolution
) -> ReconciliationBreak:
    found = await get_break(session, principal, break_id)
    await lock_account(session, found.escrow_account_id)
    # Decide on the ledger as it is now: a deposit or instruction reported since the last run may have explained
    # the break already (cleared: nothing to resolve), or changed the difference an adjustment would book.
    await run_matching(session, settings, found.escrow_account_id)
    found = await get_break(session, principal, break_id, lock=True)
    if found.state != "open":
        raise BreakSettled(f"break {found.id} is {found.state} ({found.resolution})")
    if data.action != "attach_to_card" and data.card_id is not None:
        raise FieldInvalid("card_id", "only for attach_to_card")
    if data.action == "adjust":
        found.adjustment_entry_id = await _adjust(session, found, principal.id)
        found.resolution = "adjusted"
    elif data.action == "attach_to_card":
        found.card_id = (await _attach(session, settings, found, data.card_id, principal.id)).id
        found.resolution = "attached"
    else:
        found.resolution = "accepted"
    found.state = "resolved"
    found.resolved_at = utcnow()
    found.resolved_by = principal.id
    found.note = data.note
    await session.flush()
    log.info("break_resolved", break_id=found.id, kind=found.kind, resolution=found.resolution, by=principal.id)
    await run_matching(session, settings, found.escrow_account_id)
    await session.refresh(found)
    return found


# --- reading -------------------------------------------------------------------------------------------------


async def get_statement(session: AsyncSession, principal: Principal, statement_id: str) -> BankStatement:
    statement = await session.get(BankStatement, statement_id)
    if statement is None or not sees_account(principal, await session.get(EscrowAccount, statement.escrow_account_id)):
        raise NotFound(f"no statement {statement_id}")
    return statement


@dataclass
class StatementFigures:
    matched: int
    amount_mismatch: int
    not_in_ledger: int
    open_breaks: int


async def statement_figures(session: AsyncSession, statement: BankStatement) -> StatementFigures:
    """Its lines by outcome (of the latest run) and its open breaks (its own, and the day's movements')."""
    if statement.status == "current":
        rows = await session.execute(
            text(f"WITH {LINE_STATE} SELECT outcome, count(*) FROM line_state WHERE statement_id = :s GROUP BY 1"),
            {"account": statement.escrow_account_id, "s": statement.id},
        )
        counts = {outcome: int(n) for outcome, n in rows}
    else:  # a superseded statement's lines are matched no more
        counts = {"not_in_ledger": statement.line_count} if statement.line_count else {}
    open_breaks = await session.scalar(
        text(
            "SELECT count(*) FROM reconciliation_breaks WHERE escrow_account_id = :account AND state = 'open'"
            " AND (statement_id = :s OR (statement_id IS NULL AND business_date = :d))"
        ),
        {"account": statement.escrow_account_id, "s": statement.id, "d": statement.business_date},
    )
    return StatementFigures(
        counts.get("matched", 0),
        counts.get("amount_mismatch", 0),
        counts.get("not_in_ledger", 0),
        int(open_breaks or 0),
    )


def checks_pass(statement: BankStatement) -> tuple[bool | None, bool | None]:
    def ok(bank: int, expected: int | None, accepted: int | None) -> bool | None:
        return None if expected is None else bank - expected == (accepted or 0)

    return (
        ok(statement.opening_balance, statement.expected_opening, statement.accepted_opening),
        ok(statement.closing_balance, statement.expected_closing, statement.accepted_closing),
    )


def reconciled(statement: BankStatement, open_breaks: int) -> bool:
    opening, closing = checks_pass(statement)
    return statement.status == "current" and bool(opening) and bool(closing) and open_breaks == 0


async def list_statements(
    session: AsyncSession,
    principal: Principal,
    *,
    escrow_account_id: str | None,
    business_date: date | None,
    include_superseded: bool,
    after: str | None,
    limit: int,
) -> list[BankStatement]:
    query = select(BankStatement).order_by(BankStatement.id).limit(limit + 1)
    if principal.role == "bank":
        query = query.where(BankStatement.bank_id == principal.id)
    if escrow_account_id is not None:
        query = query.where(BankStatement.escrow_account_id == escrow_account_id)
    if business_date is not None:
        query = query.where(BankStatement.business_date == business_date)
    if not include_superseded:
        query = query.where(BankStatement.status == "current")
    if after is not None:
        query = query.where(BankStatement.id > after)
    return list(await session.scalars(query))


LINE_COLUMNS = (
    "line_no, bank_transaction_id, end_to_end_id, direction, amount, value_date, booking_date, text, outcome,"
    " matched_by, entry_ids, difference, break_id"
)


async def statement_lines(
    session: AsyncSession, statement: BankStatement, *, outcome: str | None, after: int | None, limit: int
) -> list[Any]:
    """Lines with their outcome, the rule that matched them, the entries matched and their break."""
    rows = await session.execute(
        text(
            f"WITH {LINE_STATE} SELECT l.line_no, l.bank_transaction_id, l.end_to_end_id, l.direction, l.amount,"
            "  l.value_date, l.booking_date, l.text,"
            "  CASE WHEN :current THEN s.outcome ELSE 'not_in_ledger' END AS outcome,"
            # the rule that matched the line; for a line only an adjusting entry stands for (a break resolved with
            # adjust), 'adjustment'
            "  (SELECT x.rule FROM reconciliation_matches x WHERE x.statement_id = l.statement_id"
            "     AND x.line_no = l.line_no ORDER BY x.rule = 'adjustment' LIMIT 1) AS matched_by,"
            "  ARRAY(SELECT m.entry_id FROM reconciliation_matches x JOIN custody_movements m USING (posting_id)"
            "     WHERE x.statement_id = l.statement_id AND x.line_no = l.line_no ORDER BY m.entry_id) AS entry_ids,"
            "  coalesce(s.difference, CASE l.direction WHEN 'credit' THEN l.amount ELSE -l.amount END) AS difference,"
            "  (SELECT b.id FROM reconciliation_breaks b WHERE b.statement_id = l.statement_id"
            "     AND b.line_no = l.line_no) AS break_id"
            " FROM bank_statement_lines l"
            " LEFT JOIN line_state s ON s.statement_id = l.statement_id AND s.line_no = l.line_no"
            " WHERE l.statement_id = :s AND l.line_no > :after"
            "   AND (CAST(:outcome AS text) IS NULL OR coalesce(s.outcome, 'not_in_ledger') = :outcome)"
            " ORDER BY l.line_no LIMIT :limit"
        ),
        {
            "account": statement.escrow_account_id,
            "s": statement.id,
            "current": statement.status == "current",
            "after": after or 0,
            "outcome": outcome,
            "limit": limit + 1,
        },
    )
    return list(rows)


async def line_of(session: AsyncSession, found: ReconciliationBreak) -> Any | None:
    if found.line_no is None or found.statement_id is None:
        return None
    statement = await session.get(BankStatement, found.statement_id)
    assert statement is not None
    rows = await statement_lines(session, statement, outcome=None, after=found.line_no - 1, limit=1)
    return rows[0] if rows else None


async def entry_of(session: AsyncSession, found: ReconciliationBreak) -> tuple[int | None, str | None]:
    if found.posting_id is None:
        return None, None
    row = (
        await session.execute(
            text("SELECT entry_id, entry_kind FROM custody_movements WHERE posting_id = :p"), {"p": found.posting_id}
        )
    ).one()
    return int(row[0]), row[1]


def breaks_query(
    principal: Principal,
    *,
    state: str | None,
    kind: str | None,
    escrow_account_id: str | None,
):
    query = select(ReconciliationBreak).order_by(
        ReconciliationBreak.business_date, ReconciliationBreak.detected_at, ReconciliationBreak.id
    )
    if principal.role == "bank":
        query = query.where(ReconciliationBreak.bank_id == principal.id)
    if state is not None:
        query = query.where(ReconciliationBreak.state == state)
    if kind is not None:
        query = query.where(ReconciliationBreak.kind == kind)
    if escrow_account_id is not None:
        query = query.where(ReconciliationBreak.escrow_account_id == escrow_account_id)
    return query


async def list_breaks(
    session: AsyncSession, principal: Principal, *, after: tuple[date, datetime, str] | None, limit: int, **filters
):
    """Oldest first (by the day they belong to), with keyset pagination on (day, detected, id)."""
    query = breaks_query(principal, **filters).limit(limit + 1)
    if after is not None:
        query = query.where(
            tuple_(ReconciliationBreak.business_date, ReconciliationBreak.detected_at, ReconciliationBreak.id)
            > tuple_(*after)
        )
    return list(await session.scalars(query))


@dataclass
class Day:
    business_date: date
    status: str
    statement: BankStatement | None
    open_breaks: int


def default_window(settings: Settings) -> tuple[date, date]:
    """The last 30 days that are over (a day's statement is due once it has ended)."""
    yesterday = business_date(utcnow(), settings.business_timezone) - timedelta(days=1)
    return yesterday - timedelta(days=29), yesterday


async def account_days(
    session: AsyncSession, settings: Settings, account: EscrowAccount, first: date, last: date
) -> list[Day]:
    """Each day of the window from the account's activation on: balanced, breaks, or missing its statement."""
    if account.activated_at is not None:
        first = max(first, business_date(account.activated_at, settings.business_timezone))
    statements = {
        s.business_date: s
        for s in await session.scalars(
            select(BankStatement).where(
                BankStatement.escrow_account_id == account.id,
                BankStatement.status == "current",
                BankStatement.business_date.between(first, last),
            )
        )
    }
    open_by_day = dict(
        (
            await session.execute(
                select(ReconciliationBreak.business_date, func.count())
                .where(
                    ReconciliationBreak.escrow_account_id == account.id,
                    ReconciliationBreak.state == "open",
                    ReconciliationBreak.business_date.between(first, last),
                )
                .group_by(ReconciliationBreak.business_date)
            )
        ).all()
    )
    days = []
    day = first
    while day <= last:
        statement = statements.get(day)
        open_breaks = int(open_by_day.get(day, 0))
        if statement is None:
            status = "missing_statement"
        else:
            status = "balanced" if reconciled(statement, open_breaks) else "breaks"
        days.append(Day(day, status, statement, open_breaks))
        day += timedelta(days=1)
    return days


_OVERVIEW = text(
    """
SELECT a.id, a.bank_id, a.merchant_id, latest.business_date AS latest_date, latest.id AS latest_statement,
       coalesce(o.open_breaks, 0) AS open_breaks, coalesce(o.open_amount, 0) AS open_amount, o.oldest,
       greatest(0, CAST(:last AS date)
                   - greatest(CAST(:first AS date), CAST(timezone(:tz, a.activated_at) AS date)) + 1
                   - coalesce(w.statements, 0)) AS missing
  FROM escrow_accounts a
  LEFT JOIN LATERAL (SELECT s.business_date, s.id FROM bank_statements s WHERE s.escrow_account_id = a.id
                        AND s.status = 'current' ORDER BY s.business_date DESC LIMIT 1) latest ON true
  LEFT JOIN LATERAL (SELECT count(*) AS open_breaks, sum(b.amount) AS open_amount, min(b.business_date) AS oldest
                       FROM reconciliation_breaks b WHERE b.escrow_account_id = a.id AND b.state = 'open') o ON true
  LEFT JOIN LATERAL (SELECT count(*) AS statements FROM bank_statements s WHERE s.escrow_account_id = a.id
                        AND s.status = 'current' AND s.business_date BETWEEN :first AND :last) w ON true
 WHERE a.activated_at IS NOT NULL
   AND (coalesce(o.oldest, DATE '9999-12-31'), a.id) > (CAST(:after_day AS date), CAST(:after_id AS text))
 ORDER BY coalesce(o.oldest, DATE '9999-12-31'), a.id
 LIMIT :limit
"""
)


async def overview(
    session: AsyncSession, settings: Settings, *, after: tuple[date, str] | None, limit: int
) -> list[Any]:
    """Every activated escrow account, those with the oldest open break first."""
    first, last = default_window(settings)
    after_day, after_id = after or (date(1, 1, 1), "")
    rows = await session.execute(
        _OVERVIEW,
        {
            "first": first,
            "last": last,
            "tz": settings.business_timezone,
            "after_day": after_day,
            "after_id": after_id,
            "limit": limit + 1,
        },
    )
    return list(rows)


# --- files (the command line, the benchmark) -------------------------------------------------------------------


@dataclass
class FileImport:
    intakes: list[Intake]
    runs: list[RunReport]
    lines: int
    import_seconds: float  # parse and copy
    matching_seconds: float
    commit_seconds: float  # the commit checks the deferred constraints of every line

    @property
    def seconds(self) -> float:
        return self.import_seconds + self.matching_seconds + self.commit_seconds


async def import_file(
    sessionmaker: Any,
    settings: Settings,
    keyring: Keyring,
    path: Path,
    *,
    bank_id: str | None,
    received_by: str,
    progress: Callable[[int, int], None] | None = None,
) -> FileImport:
    """Import a camt.053 (or JSON) statement file and match it, in one transaction: all of it, or nothing.

    The size limit is checked before anything is read; the document is streamed, parsed in a worker thread."""
    size = path.stat().st_size  # noqa: ASYNC240
    if size > settings.statement_file_max_bytes:
        raise StatementTooLarge(
            f"{path.name} is {size:,} bytes; the limit is {settings.statement_file_max_bytes:,}"
            " (ESCROW_STATEMENT_FILE_MAX_BYTES)"
        )
    with path.open("rb") as stream:
        xml = stream.read(64).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")
        stream.seek(0)

        def report(_: int) -> None:
            if progress is not None:
                progress(stream.tell(), size)

        async with sessionmaker() as session, AsyncExitStack() as parsing:
            started = time.perf_counter()
            directory = AccountDirectory(session, keyring, bank_id)
            statements = (
                await parsing.enter_async_context(camt053_in_thread(stream, settings.business_timezone))
                if xml
                else [json_file_statement(stream.read())]
            )
            intakes = [
                await import_statement(session, settings, directory, parsed, received_by, progress=report)
                async for parsed in each(statements)
            ]
            if progress is not None:
                progress(size, size)
            imported = time.perf_counter()
            changed = sorted({i.statement.escrow_account_id for i in intakes if i.outcome != "unchanged"})
            runs = [await run_matching(session, settings, account_id) for account_id in changed]
            matched = time.perf_counter()
            await session.commit()  # transaction boundary: escrow reconcile FILE's own unit of work
            committed = time.perf_counter()
            for intake in intakes:
                await session.refresh(intake.statement)
            return FileImport(
                intakes,
                runs,
                sum(i.statement.line_count for i in intakes),
                imported - started,
                matched - imported,
                committed - matched,
            )
