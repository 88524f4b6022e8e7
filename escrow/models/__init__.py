"""All tables on one metadata, so Alembic sees everything (the ledger's tables are SQL-defined: see ledger/)."""

from escrow.models.audit import AuditRecord
from escrow.models.base import Base
from escrow.models.card import (
    Card,
    Consumption,
    Instruction,
    JobRun,
    Plan,
    PresenceFailure,
    Refund,
    UnappliedDeposit,
)
from escrow.models.closure import (
    Closure,
    ClosureItem,
    FundAccount,
    FundContribution,
    FundRecovery,
    TakeoverDecision,
)
from escrow.models.complaint import Complaint
from escrow.models.credit import CreditGrade, CreditOverride, Penalty
from escrow.models.idempotency import IdempotencyKey
from escrow.models.notice import Notice
from escrow.models.party import (
    Bank,
    BankNonce,
    Consumer,
    ConsumerCode,
    ConsumerLink,
    EscrowAccount,
    Merchant,
    RateCount,
)
from escrow.models.reconciliation import (
    BankStatement,
    BankStatementLine,
    CustodyMovement,
    ReconciliationAccount,
    ReconciliationBreak,
    ReconciliationMatch,
)
from escrow.models.sms import SmsOutbox, SmsSink
from escrow.models.token import ApiToken
from escrow.models.warning import RiskWarning

__all__ = [
    "ApiToken",
    "AuditRecord",
    "Bank",
    "BankNonce",
    "BankStatement",
    "BankStatementLine",
    "Base",
    "Card",
    "Closure",
    "ClosureItem",
    "Complaint",
    "Consumer",
    "ConsumerCode",
    "ConsumerLink",
    "Consumption",
    "CreditGrade",
    "CreditOverride",
    "CustodyMovement",
    "EscrowAccount",
    "FundAccount",
    "FundContribution",
    "FundRecovery",
    "IdempotencyKey",
    "Instruction",
    "JobRun",
    "Merchant",
    "Notice",
    "Penalty",
    "Plan",
    "PresenceFailure",
    "RateCount",
    "ReconciliationAccount",
    "ReconciliationBreak",
    "ReconciliationMatch",
    "Refund",
    "RiskWarning",
    "SmsOutbox",
    "SmsSink",
    "TakeoverDecision",
    "UnappliedDeposit",
]
