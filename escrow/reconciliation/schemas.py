from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from escrow.kit.body import RequestModel
from escrow.kit.money import Money

Direction = Literal["credit", "debit"]
BreakKind = Literal["amount_mismatch", "not_in_ledger", "not_on_statement", "balance_mismatch"]
BreakState = Literal["open", "resolved"]
LineOutcome = Literal["matched", "amount_mismatch", "not_in_ledger"]
DayStatus = Literal["balanced", "breaks", "missing_statement"]

STATEMENT_SCHEMA_ID = "urn:escrow:contracts:bank-statement:1"


class LineAmount(Money):
    """A statement line's amount: positive integer fen, its direction given apart."""

    model_config = ConfigDict(extra="forbid")

    amount: StrictInt = Field(gt=0, lt=10**15, description="Integer fen, positive; the direction says which way.")


class StatementBalance(BaseModel):
    """A booked balance of the escrow account in integer fen; negative when overdrawn."""

    model_config = ConfigDict(extra="forbid")

    amount: StrictInt = Field(
        gt=-(10**15), lt=10**15, description="Integer fen; negative for a debit (overdrawn) balance.", examples=[0]
    )
    currency: Literal["CNY"] = "CNY"


class StatementLineIn(BaseModel):
    """One booking of the day on the escrow account, as the bank's statement shows it."""

    model_config = ConfigDict(extra="forbid")

    bank_transaction_id: str = Field(min_length=1, max_length=100, description="The bank's own reference.")
    amount: LineAmount
    direction: Direction = Field(description="credit: money into the escrow account; debit: out of it.")
    value_date: date = Field(
        description="The day the money counts from; matched within ESCROW_RECONCILIATION_TOLERANCE_DAYS of the ledger "
        "movement's business date."
    )
    booking_date: date = Field(description="Not after the statement's business date.")
    end_to_end_reference: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="The reference this service issued, as the payment quoted it: a card's payment reference "
        "(PE…) for a deposit, the instruction id (ins_…) for a payout, refund or transfer.",
    )
    text: str | None = Field(default=None, max_length=500, description="Free text (remittance information).")


class StatementIn(RequestModel):
    """A bank's end-of-day statement of one escrow account (the JSON format; camt.053 carries the same)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": STATEMENT_SCHEMA_ID,
        },
    )

    escrow_account_id: str = Field(min_length=1, max_length=40, description="The escrow account (esc_…).")
    business_date: date = Field(description="The day the statement closes (YYYY-MM-DD, Asia/Shanghai).")
    statement_id: str | None = Field(default=None, min_length=1, max_length=100, description="The bank's own id.")
    opening_balance: StatementBalance = Field(description="Booked balance at the start of the day.")
    closing_balance: StatementBalance = Field(
        description="Booked balance at the end of the day: the opening balance plus credits less debits."
    )
    lines: list[StatementLineIn] = Field(description="Every booking of the day, in booking order.")


class BalanceCheck(BaseModel):
    """A statement balance (opening or closing) checked against the ledger's custody_cash."""

    bank: StatementBalance = Field(description="What the bank says.")
    ledger: StatementBalance | None = Field(description="custody_cash as of the end of that day.")
    expected: StatementBalance | None = Field(
        description="The ledger less what the bank hasn't booked by then (in transit), plus what it booked that "
        "the ledger recorded later."
    )
    difference: StatementBalance | None = Field(description="Bank minus expected.")
    accepted: StatementBalance | None = Field(description="Differences the regulator accepted with a note.")
    ok: bool | None = Field(description="difference = accepted.")


class LineCounts(BaseModel):
    """A statement's lines counted by matching outcome."""

    matched: int
    amount_mismatch: int
    not_in_ledger: int


class StatementOut(BaseModel):
    """A bank statement of one escrow account for one business date, with its balance checks and matching results."""

    id: str
    escrow_account_id: str
    bank_id: str
    business_date: date
    version: int = Field(description="1 for the first statement of the account and day; each correction adds one.")
    status: Literal["current", "superseded"] = Field(description="current, or superseded by a later correction.")
    format: Literal["json", "camt053"] = Field(description="How it was sent: json or camt053.")
    bank_statement_id: str | None
    outcome: Literal["created", "replaced", "unchanged"] | None = Field(
        default=None, description="On intake: a new statement, a correction of an earlier version, or the same again."
    )
    line_count: int
    credits: Money = Field(description="Σ credit lines.")
    debits: Money = Field(description="Σ debit lines.")
    received_at: datetime
    superseded_at: datetime | None
    superseded_by: str | None = Field(description="The statement that corrected this one.")
    opening: BalanceCheck
    closing: BalanceCheck
    lines: LineCounts
    open_breaks: int = Field(description="Breaks of this statement still open.")
    reconciled: bool = Field(description="Both balance checks pass and no break of this statement is open.")


class StatementsOut(BaseModel):
    """The statements one intake request took, each with its outcome."""

    statements: list[StatementOut]


class LineOut(BaseModel):
    """One statement line and how it matched the ledger."""

    line_no: int
    bank_transaction_id: str
    end_to_end_reference: str | None
    direction: Direction
    amount: Money
    value_date: date
    booking_date: date
    text: str | None
    outcome: LineOutcome = Field(
        description="matched; amount_mismatch (the matched entries add up to another amount); not_in_ledger (no "
        "ledger movement found)."
    )
    matched_by: str | None = Field(
        description="How the line is accounted for in the ledger: the matching rule (service_reference, "
        "bank_reference, amount_date), attached (a deposit attached to a card), or adjustment (no ledger movement "
        "matched it; the regulator resolved its break with adjust and the adjusting entry stands for it). A line "
        "matched by a rule whose difference was adjusted keeps its rule. null: nothing accounts for it yet."
    )
    ledger_entry_ids: list[int] = Field(description="The journal entries the line is matched with.")
    difference: StatementBalance = Field(description="The line less the ledger entries matched with it.")
    break_id: str | None = Field(description="The break the line opened, if any.")


class BreakOut(BaseModel):
    """A reconciliation break: a difference between the bank's statement and the ledger, open until resolved."""

    id: str
    escrow_account_id: str
    bank_id: str
    kind: BreakKind = Field(
        description="amount_mismatch (a line and its ledger entries differ); not_in_ledger (a line with no ledger "
        "movement); not_on_statement (a ledger movement no statement shows after its days in transit); "
        "balance_mismatch (a balance the lines don't explain)."
    )
    state: BreakState = Field(description="open, or resolved.")
    owner: Literal["bank", "regulator"] = Field(
        description="Who is expected to act first: the bank (a line of its statement) or the regulator."
    )
    business_date: date = Field(description="The day the difference belongs to.")
    amount: StatementBalance = Field(description="The difference, bank minus ledger.")
    statement_id: str | None
    line: LineOut | None = Field(description="The statement line involved.")
    ledger_entry_id: int | None = Field(description="The ledger entry involved.")
    ledger_entry_kind: str | None
    detected_at: datetime
    resolved_at: datetime | None
    resolved_by: str | None
    resolution: Literal["accepted", "adjusted", "attached", "cleared", "superseded"] | None = Field(
        description="accepted, adjusted or attached (the regulator's action); cleared (a later match explained it); "
        "superseded (its statement was corrected)."
    )
    note: str | None = Field(description="The regulator's note on resolving it.")
    adjustment_entry_id: int | None = Field(description="adjusted: the adjusting journal entry.")
    card_id: str | None = Field(description="attached: the card the deposit paid.")


class BreakResolution(RequestModel):
    """How the regulator resolves a reconciliation break."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["accept", "adjust", "attach_to_card"] = Field(
        description="accept: explained, no money moves; adjust: an adjusting entry makes the ledger agree with the "
        "bank (custody_cash against custody_difference); attach_to_card: the unmatched deposit pays a card "
        "awaiting payment, which activates."
    )
    note: str = Field(min_length=1, max_length=1000, description="Why; kept with the break.")
    card_id: str | None = Field(default=None, min_length=1, max_length=40, description="attach_to_card only.")


class DayOut(BaseModel):
    """One business day of an escrow account's reconciliation."""

    business_date: date
    status: DayStatus = Field(
        description="balanced (statement in, no open break); breaks (open breaks); missing_statement."
    )
    statement_id: str | None
    open_breaks: int
    closing: BalanceCheck | None = Field(description="The day's closing balance check, when a statement is in.")


class AccountDaysOut(BaseModel):
    """An escrow account's reconciliation day by day."""

    escrow_account_id: str
    bank_id: str
    days: list[DayOut]


class AccountOverview(BaseModel):
    """One escrow account's reconciliation at a glance."""

    escrow_account_id: str
    bank_id: str
    merchant_id: str
    latest_statement_date: date | None
    latest_status: DayStatus | None = Field(description="balanced, breaks or missing_statement, for the latest day.")
    open_breaks: int
    open_difference: StatementBalance = Field(description="The open breaks' differences added up.")
    oldest_open_break_date: date | None
    missing_statements: int = Field(description="Days without a statement in the window, up to yesterday.")


class MatchingRun(BaseModel):
    """What one matching run of an escrow account found."""

    escrow_account_id: str
    movements_read: int = Field(description="Ledger movements of custody_cash considered.")
    matched: dict[str, int] = Field(description="New matches per rule.")
    breaks_opened: int = Field(description="New breaks.")
    breaks_cleared: int = Field(description="Breaks closed because they now match.")


def statement_schema_document() -> str:
    """The JSON statement format as a standalone JSON Schema (contracts/bank-statement.schema.json)."""
    import json

    schema = StatementIn.model_json_schema()
    schema["title"] = "Bank statement"
    schema["description"] = (
        "A custodian bank's end-of-day statement of one escrow account (POST /v1/statements). Amounts are integer "
        "fen; the opening balance plus credits less debits must be the closing balance. The same document again "
        "changes nothing; other content for the same account and day is a correction."
    )
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
