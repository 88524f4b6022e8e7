import csv
import io
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Annotated, Any

from litestar import Request, Router, get, post
from litestar.exceptions import HTTPException
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import FromQuery, JSONBody, QueryParameter
from litestar.response import Stream
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.auth.guards import requires
from escrow.auth.tokens import Principal
from escrow.config import Settings
from escrow.deps import DbSession, KeyringDep, PrincipalDep, SettingsDep
from escrow.errors import FieldInvalid, problem_responses
from escrow.kit.clock import parse_day, parse_instant
from escrow.kit.crypto import Keyring
from escrow.kit.money import money
from escrow.kit.pagination import Page, decode_cursor, encode_cursor, int4, page_of
from escrow.kit.params import Cursor, Day, Limit, path_id, query_id
from escrow.models import BankStatement, ReconciliationBreak
from escrow.reconciliation import service
from escrow.reconciliation.parsing import ParsedStatement, json_statement
from escrow.reconciliation.schemas import (
    AccountDaysOut,
    AccountOverview,
    BalanceCheck,
    BreakKind,
    BreakOut,
    BreakResolution,
    BreakState,
    DayOut,
    LineCounts,
    LineOut,
    LineOutcome,
    MatchingRun,
    StatementBalance,
    StatementIn,
    StatementOut,
    StatementsOut,
)
from escrow.reconciliation.threaded import camt053_in_thread, each

TAGS = ["reconciliation"]
XML_TYPES = ("application/xml", "text/xml")
MAX_WINDOW_DAYS = 366


def _balance(amount: int | None) -> StatementBalance | None:
    return None if amount is None else StatementBalance(amount=amount)


def _check(bank: int, ledger: int | None, expected: int | None, accepted: int | None, ok: bool | None) -> BalanceCheck:
    return BalanceCheck(
        bank=StatementBalance(amount=bank),
        ledger=_balance(ledger),
        expected=_balance(expected),
        difference=_balance(None if expected is None else bank - expected),
        accepted=_balance(accepted if expected is not None else None),
        ok=ok,
    )


def _checks(statement: BankStatement) -> tuple[BalanceCheck, BalanceCheck]:
    opening_ok, closing_ok = service.checks_pass(statement)
    return (
        _check(
            statement.opening_balance,
            statement.ledger_opening,
            statement.expected_opening,
            statement.accepted_opening,
            opening_ok,
        ),
        _check(
            statement.closing_balance,
            statement.ledger_closing,
            statement.expected_closing,
            statement.accepted_closing,
            closing_ok,
        ),
    )


async def statement_out(session: AsyncSession, statement: BankStatement, outcome: str | None = None) -> StatementOut:
    figures = await service.statement_figures(session, statement)
    opening, closing = _checks(statement)
    return StatementOut(
        id=statement.id,
        escrow_account_id=statement.escrow_account_id,
        bank_id=statement.bank_id,
        business_date=statement.business_date,
        version=statement.version,
        status=statement.status,  # type: ignore[arg-type]
        format=statement.format,  # type: ignore[arg-type]
        bank_statement_id=statement.bank_statement_id,
        outcome=outcome,  # type: ignore[arg-type]
        line_count=statement.line_count,
        credits=money(statement.credits),
        debits=money(statement.debits),
        received_at=statement.received_at,
        superseded_at=statement.superseded_at,
        superseded_by=statement.superseded_by,
        opening=opening,
        closing=closing,
        lines=LineCounts(
            matched=figures.matched, amount_mismatch=figures.amount_mismatch, not_in_ledger=figures.not_in_ledger
        ),
        open_breaks=figures.open_breaks,
        reconciled=service.reconciled(statement, figures.open_breaks),
    )


def line_out(row: Any) -> LineOut:
    return LineOut(
        line_no=row.line_no,
        bank_transaction_id=row.bank_transaction_id,
        end_to_end_reference=row.end_to_end_id,
        direction=row.direction,
        amount=money(row.amount),
        value_date=row.value_date,
        booking_date=row.booking_date,
        text=row.text,
        outcome=row.outcome,
        matched_by=row.matched_by,
        ledger_entry_ids=list(row.entry_ids),
        difference=StatementBalance(amount=int(row.difference)),
        break_id=row.break_id,
    )


async def break_out(session: AsyncSession, found: ReconciliationBreak) -> BreakOut:
    line = await service.line_of(session, found)
    entry_id, entry_kind = await service.entry_of(session, found)
    return BreakOut(
        id=found.id,
        escrow_account_id=found.escrow_account_id,
        bank_id=found.bank_id,
        kind=found.kind,  # type: ignore[arg-type]
        state=found.state,  # type: ignore[arg-type]
        owner=found.owner,  # type: ignore[arg-type]
        business_date=found.business_date,
        amount=StatementBalance(amount=found.amount),
        statement_id=found.statement_id,
        line=line_out(line) if line is not None else None,
        ledger_entry_id=entry_id,
        ledger_entry_kind=entry_kind,
        detected_at=found.detected_at,
        resolved_at=found.resolved_at,
        resolved_by=found.resolved_by,
        resolution=found.resolution,  # type: ignore[arg-type]
        note=found.note,
        adjustment_entry_id=found.adjustment_entry_id,
        card_id=found.card_id,
    )


@dataclass
class XmlBodyOperation(Operation):
    """The camt.053 route reads its body itself (XML): its OpenAPI operation says what that body is."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            content={"application/xml": OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING, format="xml"))},
            description="An ISO 20022 camt.053 Document (BkToCstmrStmt), UTF-8.",
            required=True,
        )


# --- intake --------------------------------------------------------------------------------------------------


async def _intake(
    session: AsyncSession,
    settings: Settings,
    keyring: Keyring,
    principal: Principal,
    statements: Iterable[ParsedStatement] | AsyncIterator[ParsedStatement],
) -> StatementsOut:
    directory = service.AccountDirectory(session, keyring, principal.id)
    taken = [
        await service.import_statement(session, settings, directory, parsed, principal.id)
        async for parsed in each(statements)
    ]
    for account_id in sorted({t.statement.escrow_account_id for t in taken if t.outcome != "unchanged"}):
        await service.run_matching(session, settings, account_id)
    for t in taken:
        await session.refresh(t.statement)  # the run rewrote its balance check
    return StatementsOut(statements=[await statement_out(session, t.statement, t.outcome) for t in taken])


INTAKE = {
    "guards": [requires("bank", own=("bank",))],
    "tags": TAGS,
    "status_code": 201,
    "responses": problem_responses(401, 403, 404, 409, 413, 415, 422),
}


@post(
    "/v1/statements",
    summary="Send a statement (JSON): matched at once; the same again changes nothing, other content corrects it",
    description="One escrow account, one business date; see contracts/bank-statement.schema.json. Outcome "
    "`created`, `replaced` (a correction: the earlier version is kept, superseded) or `unchanged`.",
    **INTAKE,
)
async def submit_statement(
    data: JSONBody[StatementIn],
    db_session: DbSession,
    principal: PrincipalDep,
    settings: SettingsDep,
    keyring: KeyringDep,
) -> StatementsOut:
    return await _intake(db_session, settings, keyring, principal, [json_statement(data)])


@post(
    "/v1/statements/camt053",
    summary="Send an ISO 20022 camt.053 document (one statement or many): each is matched at once",
    description="Content-Type application/xml. A DOCTYPE (DTD, entities) is refused; the document must be in a "
    "camt.053.001.02 to .13 namespace; booked entries only, CNY, whole fen (up to 5 decimals).",
    operation_class=XmlBodyOperation,
    **INTAKE,
)
async def submit_camt053(
    request: Request,
    db_session: DbSession,
    principal: PrincipalDep,
    settings: SettingsDep,
    keyring: KeyringDep,
) -> StatementsOut:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in XML_TYPES:
        raise HTTPException(status_code=415, detail="send the camt.053 document as application/xml")
    async with camt053_in_thread(io.BytesIO(await request.body()), settings.business_timezone) as statements:
        return await _intake(db_session, settings, keyring, principal, statements)


# --- statements ----------------------------------------------------------------------------------------------

READ = {"guards": [requires("regulator", "bank", own=("bank",))], "tags": TAGS}


@get(
    "/v1/statements",
    summary="Statements (current versions; superseded ones too on request), a bank's own",
    responses=problem_responses(401, 403, 422),
    **READ,
)
async def list_statements(
    db_session: DbSession,
    principal: PrincipalDep,
    escrow_account_id: Annotated[str | None, query_id("escrow account")] = None,
    business_date: FromQuery[Day | None] = None,
    include_superseded: FromQuery[bool] = False,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> Page[StatementOut]:
    """Lists statements in id order, current versions only unless `include_superseded=true`, filtered by escrow account
    and business date; cursor-paginated. A bank sees its own.
    """
    rows = await service.list_statements(
        db_session,
        principal,
        escrow_account_id=escrow_account_id,
        business_date=business_date,
        include_superseded=include_superseded,
        after=decode_cursor(cursor),
        limit=limit,
    )
    page = page_of(rows, limit, lambda s: s, lambda s: s.id)
    return Page(items=[await statement_out(db_session, s) for s in page.items], next_cursor=page.next_cursor)


@get(
    "/v1/statements/{statement_id:str}",
    summary="A statement: its balance checks against custody_cash, its lines by outcome, its open breaks",
    responses=problem_responses(401, 403, 404),
    **READ,
)
async def get_statement(
    statement_id: Annotated[str, path_id("statement")], db_session: DbSession, principal: PrincipalDep
) -> StatementOut:
    """Returns a statement with its opening and closing balance checks against custody_cash, its lines counted by
    outcome, and its open breaks.
    """
    return await statement_out(db_session, await service.get_statement(db_session, principal, statement_id))


@get(
    "/v1/statements/{statement_id:str}/lines",
    summary="A statement's lines: outcome, the rule that matched each, the ledger entries, the difference",
    responses=problem_responses(401, 403, 404, 422),
    **READ,
)
async def statement_lines(
    statement_id: Annotated[str, path_id("statement")],
    db_session: DbSession,
    principal: PrincipalDep,
    outcome: FromQuery[LineOutcome | None] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[LineOut]:
    """Lists a statement's lines in line order, optionally by outcome: the rule that matched each, the ledger entries it
    matched and the difference; cursor-paginated.
    """
    statement = await service.get_statement(db_session, principal, statement_id)
    rows = await service.statement_lines(
        db_session, statement, outcome=outcome, after=decode_cursor(cursor, int4), limit=limit
    )
    return page_of(rows, limit, line_out, lambda r: r.line_no)


def statements_router(settings: Settings) -> Router:
    """The routes of ``/v1/statements`` (one path, so one router): intake has a body limit of its own, statements
    being larger than other requests."""
    return Router(
        path="/",
        route_handlers=[submit_statement, submit_camt053, list_statements],
        request_max_body_size=settings.statement_max_bytes,
    )


# --- breaks --------------------------------------------------------------------------------------------------


def _break_cursor(found: ReconciliationBreak) -> str:
    return f"{found.business_date.isoformat()}|{found.detected_at.isoformat()}|{found.id}"


@get(
    "/v1/reconciliation/breaks",
    summary="Breaks, the oldest first (a bank's own): filter by state, kind, escrow account",
    responses=problem_responses(401, 403, 422),
    **READ,
)
async def list_breaks(
    db_session: DbSession,
    principal: PrincipalDep,
    break_state: Annotated[BreakState | None, QueryParameter(name="state")] = None,
    kind: FromQuery[BreakKind | None] = None,
    escrow_account_id: Annotated[str | None, query_id("escrow account")] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> Page[BreakOut]:
    """Lists reconciliation breaks, oldest first, filtered by state, kind and escrow account; cursor-paginated. A bank
    sees those of its escrow accounts.
    """
    rows = await service.list_breaks(
        db_session,
        principal,
        after=decode_cursor(cursor, parse_day, parse_instant, str),
        limit=limit,
        state=break_state,
        kind=kind,
        escrow_account_id=escrow_account_id,
    )
    next_cursor = encode_cursor(_break_cursor(rows[limit - 1])) if len(rows) > limit else None
    return Page(items=[await break_out(db_session, b) for b in rows[:limit]], next_cursor=next_cursor)


BREAK_CSV_HEADER = (
    "id",
    "escrow_account_id",
    "bank_id",
    "kind",
    "state",
    "owner",
    "business_date",
    "amount",
    "statement_id",
    "line_no",
    "ledger_posting_id",
    "detected_at",
    "resolved_at",
    "resolved_by",
    "resolution",
    "note",
    "adjustment_entry_id",
    "card_id",
)


@get(
    "/v1/reconciliation/breaks.csv",
    summary="Breaks as CSV (amounts in fen, bank minus ledger), oldest first, streamed",
    media_type="text/csv",
    responses=problem_responses(401, 403, 422),
    **READ,
)
async def breaks_csv(
    db_session: DbSession,
    principal: PrincipalDep,
    break_state: Annotated[BreakState | None, QueryParameter(name="state")] = None,
    kind: FromQuery[BreakKind | None] = None,
    escrow_account_id: Annotated[str | None, query_id("escrow account")] = None,
) -> Stream:
    """Streams the breaks matching the same filters as CSV, oldest first, amounts in integer fen (bank minus ledger)."""
    query = service.breaks_query(principal, state=break_state, kind=kind, escrow_account_id=escrow_account_id)

    async def rows() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(BREAK_CSV_HEADER)
        # the request's own session: the unit of work keeps it open until the whole body has been sent
        async for found in await db_session.stream_scalars(query, execution_options={"yield_per": 2000}):
            values = {**vars(found), "ledger_posting_id": found.posting_id}
            writer.writerow(["" if values.get(c) is None else values[c] for c in BREAK_CSV_HEADER])
            if buffer.tell() > 64_000:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    return Stream(rows(), media_type="text/csv", headers={"Content-Disposition": 'attachment; filename="breaks.csv"'})


@get(
    "/v1/reconciliation/breaks/{break_id:str}",
    summary="A break: its kind, the statement line and ledger entry involved, its owner and state",
    responses=problem_responses(401, 403, 404),
    **READ,
)
async def get_break(
    break_id: Annotated[str, path_id("break")], db_session: DbSession, principal: PrincipalDep
) -> BreakOut:
    """Returns one break: its kind, the statement line and ledger entry involved, its difference, its owner and its
    state.
    """
    return await break_out(db_session, await service.get_break(db_session, principal, break_id))


@post(
    "/v1/reconciliation/breaks/{break_id:str}/resolve",
    guards=[requires("regulator")],
    tags=TAGS,
    status_code=200,
    summary="Resolve a break: with a note, an adjusting entry, or by paying a card awaiting payment with the deposit",
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def resolve_break(
    break_id: Annotated[str, path_id("break")],
    data: JSONBody[BreakResolution],
    db_session: DbSession,
    principal: PrincipalDep,
    settings: SettingsDep,
) -> BreakOut:
    """Resolves an open break: `accept` records an explanation and moves no money; `adjust` posts an adjusting entry
    (custody_cash against custody_difference) so the ledger agrees with the bank; `attach_to_card` pays a card
    awaiting payment with an unmatched deposit, activating the card. Refused with 409 `break_settled` when the break
    isn't open, with 409 `resolution_refused` when the action doesn't fit the break or the card, and with 422 for a
    misplaced or unknown card_id.
    """
    return await break_out(db_session, await service.resolve_break(db_session, settings, principal, break_id, data))


# --- reports -------------------------------------------------------------------------------------------------


def _window(settings: Settings, first: date | None, last: date | None) -> tuple[date, date]:
    default_first, default_last = service.default_window(settings)
    last = last or default_last
    first = first or min(default_first, last - timedelta(days=29))
    if first > last:
        raise FieldInvalid("from", "is after to")
    if (last - first).days >= MAX_WINDOW_DAYS:
        raise FieldInvalid("from", f"the window is at most {MAX_WINDOW_DAYS} days")
    return first, last


async def _days(
    db_session: AsyncSession,
    settings: Settings,
    principal: Principal,
    escrow_account_id: str,
    first: date | None,
    last: date | None,
) -> AccountDaysOut:
    account = await service.visible_account(db_session, principal, escrow_account_id)
    days = await service.account_days(db_session, settings, account, *_window(settings, first, last))
    return AccountDaysOut(
        escrow_account_id=account.id,
        bank_id=account.bank_id,
        days=[
            DayOut(
                business_date=day.business_date,
                status=day.status,  # type: ignore[arg-type]
                statement_id=day.statement.id if day.statement else None,
                open_breaks=day.open_breaks,
                closing=_checks(day.statement)[1] if day.statement else None,
            )
            for day in days
        ],
    )


DAYS = "/v1/escrow-accounts/{escrow_account_id:str}/reconciliation"


@get(
    DAYS,
    summary="Reconciliation per day of an escrow account: balanced, breaks, or missing its statement",
    description="Days from `from` to `to` (default: the 30 days up to yesterday), from the account's activation on.",
    responses=problem_responses(401, 403, 404, 422),
    **READ,
)
async def account_reconciliation(
    escrow_account_id: Annotated[str, path_id("escrow account")],
    db_session: DbSession,
    principal: PrincipalDep,
    settings: SettingsDep,
    from_: Annotated[Day | None, QueryParameter(name="from")] = None,
    to: FromQuery[Day | None] = None,
) -> AccountDaysOut:
    return await _days(db_session, settings, principal, escrow_account_id, from_, to)


DAY_CSV_HEADER = (
    "business_date",
    "status",
    "statement_id",
    "open_breaks",
    "closing_bank",
    "closing_ledger",
    "closing_expected",
    "closing_difference",
)


@get(
    DAYS + ".csv",
    summary="Reconciliation per day of an escrow account, as CSV (amounts in fen)",
    media_type="text/csv",
    responses=problem_responses(401, 403, 404, 422),
    **READ,
)
async def account_reconciliation_csv(
    escrow_account_id: Annotated[str, path_id("escrow account")],
    db_session: DbSession,
    principal: PrincipalDep,
    settings: SettingsDep,
    from_: Annotated[Day | None, QueryParameter(name="from")] = None,
    to: FromQuery[Day | None] = None,
) -> Stream:
    """Streams the escrow account's reconciliation day by day as CSV (status, statement, open breaks, closing balances
    in fen), for the same window as the JSON report (default: the 30 days up to yesterday).
    """
    report = await _days(db_session, settings, principal, escrow_account_id, from_, to)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(DAY_CSV_HEADER)
    for day in report.days:
        closing = day.closing
        amounts: list[object] = ["", "", "", ""]
        if closing is not None:
            figures = (closing.bank, closing.ledger, closing.expected, closing.difference)
            amounts = [figure.amount if figure else "" for figure in figures]
        writer.writerow([day.business_date, day.status, day.statement_id or "", day.open_breaks, *amounts])

    async def body() -> AsyncIterator[str]:
        yield buffer.getvalue()

    name = f"{report.escrow_account_id}-reconciliation.csv"
    return Stream(body(), media_type="text/csv", headers={"Content-Disposition": f'attachment; filename="{name}"'})


@get(
    "/v1/reconciliation/overview",
    guards=[requires("regulator")],
    tags=TAGS,
    summary="Every escrow account's reconciliation, those with the oldest open break first",
    responses=problem_responses(401, 403, 422),
)
async def reconciliation_overview(
    db_session: DbSession,
    settings: SettingsDep,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> Page[AccountOverview]:
    """Lists every escrow account's reconciliation state: its latest statement and status, open breaks and their total
    difference, and days missing a statement; accounts with the oldest open break first; cursor-paginated.
    """
    after = decode_cursor(cursor, date.fromisoformat, str)  # (oldest open break's day or 9999-12-31, account)
    rows = await service.overview(db_session, settings, after=after, limit=limit)
    items = []
    for row in rows[:limit]:
        status = None
        if row.latest_statement is not None:
            latest = await db_session.get(BankStatement, row.latest_statement)
            assert latest is not None
            figures = await service.statement_figures(db_session, latest)
            status = "balanced" if service.reconciled(latest, figures.open_breaks) else "breaks"
        items.append(
            AccountOverview(
                escrow_account_id=row.id,
                bank_id=row.bank_id,
                merchant_id=row.merchant_id,
                latest_statement_date=row.latest_date,
                latest_status=status,  # type: ignore[arg-type]
                open_breaks=int(row.open_breaks),
                open_difference=StatementBalance(amount=int(row.open_amount)),
                oldest_open_break_date=row.oldest,
                missing_statements=int(row.missing),
            )
        )
    last = rows[limit - 1] if len(rows) > limit else None
    next_cursor = encode_cursor(f"{(last.oldest or date(9999, 12, 31)).isoformat()}|{last.id}") if last else None
    return Page(items=items, next_cursor=next_cursor)


@post(
    DAYS + "/run",
    tags=TAGS,
    guards=[requires("regulator", "bank", own=("bank",))],
    status_code=200,
    summary="Match the escrow account again now (late reports clear their breaks; old movements in transit age)",
    responses=problem_responses(401, 403, 404),
)
async def run_matching(
    escrow_account_id: Annotated[str, path_id("escrow account")],
    db_session: DbSession,
    principal: PrincipalDep,
    settings: SettingsDep,
) -> MatchingRun:
    """Matches the escrow account's statements against the ledger again now, without waiting for the next intake or job:
    late reports clear their breaks, and ledger movements in transit too long become `not_on_statement` breaks.
    """
    account = await service.visible_account(db_session, principal, escrow_account_id)
    report = await service.run_matching(db_session, settings, account.id)
    return MatchingRun(
        escrow_account_id=account.id,
        movements_read=report.movements_read,
        matched=report.matched,
        breaks_opened=report.breaks_opened,
        breaks_cleared=report.breaks_cleared,
    )
