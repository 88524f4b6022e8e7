"""Early warnings: the run that raises and updates them (one statement per signal), their lifecycle and reading.

A warning is live while ``open``, ``acknowledged`` or ``escalated``: the same condition found by a later run updates
its figures, level and period (``runs`` counts the runs that found it) instead of opening another; once
``resolved``, the condition found again opens a new warning. Transitions: open → acknowledged; open or acknowledged
→ resolved or escalated; escalated → resolved. Each carries the regulator's note.
"""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.auth.tokens import Principal
from escrow.config import Settings
from escrow.errors import Conflict, NotFound
from escrow.models import Merchant, RiskWarning
from escrow.models.warning import LIVE_STATES
from escrow.risk.signals import SIGNALS, typed

TRANSITIONS = {
    "acknowledge": ({"open"}, "acknowledged"),
    "resolve": ({"open", "acknowledged", "escalated"}, "resolved"),
    "escalate": ({"open", "acknowledged"}, "escalated"),
}

_UPSERT = """
INSERT INTO warnings AS w (id, merchant_id, kind, level, figures, period_start, period_end, state, notes, runs,
                           opened_at, last_raised_at, updated_at)
SELECT 'wrn_' || replace(gen_random_uuid()::text, '-', ''), s.merchant_id, :kind, s.level,
       s.figures, s.period_start, s.period_end, 'open', '[]'::jsonb, 1, :now, :now, :now
FROM ({signal}) AS s
ON CONFLICT (merchant_id, kind) WHERE state IN ({live})
DO UPDATE SET level = EXCLUDED.level, figures = EXCLUDED.figures, period_start = EXCLUDED.period_start,
              period_end = EXCLUDED.period_end, runs = w.runs + 1, last_raised_at = EXCLUDED.last_raised_at,
              updated_at = EXCLUDED.updated_at
RETURNING (xmax = 0) AS opened
"""


class InvalidTransition(Conflict):
    code = "invalid_transition"
    title = "Warning state change not allowed"


@dataclass
class RunOutcome:
    opened: dict[str, int]
    updated: dict[str, int]


async def run_signals(session: AsyncSession, settings: Settings, now: datetime) -> RunOutcome:
    """Compute every signal over all merchants at ``now``; open or update the live warnings (the caller commits)."""
    opened: dict[str, int] = {}
    updated: dict[str, int] = {}
    live = ", ".join(f"'{s}'" for s in LIVE_STATES)
    for signal in SIGNALS:
        statement = typed(_UPSERT.format(signal=signal.sql, live=live))
        rows = (await session.execute(text(statement), {"kind": signal.kind, **signal.params(settings, now)})).all()
        opened[signal.kind] = sum(1 for r in rows if r.opened)
        updated[signal.kind] = sum(1 for r in rows if not r.opened)
    return RunOutcome(opened, updated)


async def get(session: AsyncSession, principal: Principal, warning_id: str, *, lock: bool = False) -> RiskWarning:
    warning = await session.get(RiskWarning, warning_id, with_for_update=lock)
    if warning is None or (principal.role == "merchant" and principal.id != warning.merchant_id):
        raise NotFound(f"no warning {warning_id}")
    return warning


async def list_visible(
    session: AsyncSession,
    principal: Principal,
    *,
    kind: str | None = None,
    state: str | None = None,
    region: str | None = None,
    category: str | None = None,
    merchant_id: str | None = None,
    limit: int = 100,
) -> list[RiskWarning]:
    query = select(RiskWarning).join(Merchant, Merchant.id == RiskWarning.merchant_id)
    if principal.role == "merchant":
        query = query.where(RiskWarning.merchant_id == principal.id)
    if merchant_id:
        query = query.where(RiskWarning.merchant_id == merchant_id)
    if kind:
        query = query.where(RiskWarning.kind == kind)
    if state:
        query = query.where(RiskWarning.state == state)
    if region:
        query = query.where(Merchant.region == region)
    if category:
        query = query.where(Merchant.category == category)
    query = query.order_by(RiskWarning.opened_at.desc(), RiskWarning.id).limit(limit)
    return list(await session.scalars(query))


async def summary(session: AsyncSession) -> list[tuple[str, str | None, str, str, int]]:
    """Live warnings counted per merchant category, region, kind and level."""
    query = (
        select(Merchant.category, Merchant.region, RiskWarning.kind, RiskWarning.level, func.count())
        .join(Merchant, Merchant.id == RiskWarning.merchant_id)
        .where(RiskWarning.state.in_(LIVE_STATES))
        .group_by(Merchant.category, Merchant.region, RiskWarning.kind, RiskWarning.level)
        .order_by(Merchant.category, Merchant.region, RiskWarning.kind, RiskWarning.level)
    )
    return [tuple(row) for row in (await session.execute(query)).all()]  # type: ignore[misc]


async def transition(
    session: AsyncSession, principal: Principal, warning_id: str, action: str, note: str, now: datetime
) -> RiskWarning:
    warning = await get(session, principal, warning_id, lock=True)
    sources, target = TRANSITIONS[action]
    if warning.state not in sources:
        raise InvalidTransition(f"a warning cannot be {target} from {warning.state}")
    warning.state = target
    warning.notes = [*warning.notes, {"at": now.isoformat(), "by": principal.id, "action": action, "note": note}]
    warning.updated_at = now
    if target == "resolved":
        warning.closed_at = now
        warning.closing_note = note
    await session.flush()
    return warning
