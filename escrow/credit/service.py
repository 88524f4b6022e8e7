"""Credit grades and the 无事不扰 white list (issue #14 §2), set-based.

A run (monthly job, or ``POST /v1/credit/runs``) gathers every merchant's factor counts with **one statement**
(``_GATHER``), scores them in Python (``escrow.credit.scoring``), and writes back in two statements: one
``credit_grades`` row per merchant, and ``merchants.credit_rating`` = the effective grade where it changed, so the
custody ratio of new sales on the ratio model follows (cards keep the ratio fixed at their sale).

Effective grade: the latest override set that has not lapsed (``lapses_on`` > today, business date), else the
latest computed grade, else the rating given at onboarding. Lapses are applied to ``merchants.credit_rating`` by
the background jobs at their first cycle on ``lapses_on`` (``apply_lapses``) and by every run; reads compute the
effective grade from the date, so they never show a lapsed override.

White list: computed **at every read** from the latest computed grade, the override and the live facts (the same
gather, for the merchants read), and stored with each run for history. A merchant is off as soon as a condition
breaks; it may be on again once ``white_list_repair_days`` have passed since the last break (a grade below A, a
major penalty, an overdue refund, an upheld complaint about money, a closure).
"""

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from escrow import db
from escrow.auth.tokens import Principal
from escrow.config import Settings
from escrow.credit import scoring
from escrow.errors import Conflict, FieldInvalid
from escrow.kit.clock import business_date
from escrow.kit.ids import new_id
from escrow.merchants import service as merchants
from escrow.models import CreditGrade, CreditOverride, Merchant, Penalty

_GATHER = """
WITH m AS (
    SELECT id, opened_on, credit_rating, status FROM merchants WHERE $1::text[] IS NULL OR id = ANY($1::text[])
), w AS (
    SELECT merchant_id,
           count(*) FILTER (WHERE state <> 'resolved' AND level = 'alert') AS warnings_open_alert,
           count(*) FILTER (WHERE state <> 'resolved' AND level = 'attention') AS warnings_open_attention,
           count(*) FILTER (WHERE state = 'resolved' AND level = 'alert' AND opened_at >= $4) AS warnings_past_alert,
           count(*) FILTER (WHERE state = 'resolved' AND level = 'attention' AND opened_at >= $4)
               AS warnings_past_attention
    FROM warnings WHERE merchant_id IN (SELECT id FROM m) GROUP BY merchant_id
), c AS (
    SELECT merchant_id,
           count(*) FILTER (WHERE outcome = 'upheld' AND mediated_at >= $4) AS complaints_upheld,
           count(*) FILTER (WHERE outcome = 'partly_upheld' AND mediated_at >= $4) AS complaints_partly_upheld,
           count(*) FILTER (WHERE filed_at >= $4 AND (answered_at > answer_due_at
                                                     OR (answered_at IS NULL AND answer_due_at < $2)))
               AS complaints_answered_late,
           max(mediated_at) FILTER (WHERE outcome IN ('upheld', 'partly_upheld') AND category = ANY($7::text[]))
               AS money_complaint_at
    FROM complaints WHERE merchant_id IN (SELECT id FROM m) GROUP BY merchant_id
), r AS (
    SELECT k.merchant_id,
           count(*) FILTER (WHERE r.status IN ('approved', 'instructed')) AS refunds_overdue_unpaid,
           count(*) FILTER (WHERE r.status = 'paid' AND r.paid_at >= $4
                              AND (r.paid_at AT TIME ZONE $8)::date > r.due_on) AS refunds_paid_late,
           max(CASE WHEN r.status IN ('approved', 'instructed') THEN $3::date
                    WHEN (r.paid_at AT TIME ZONE $8)::date > r.due_on THEN (r.paid_at AT TIME ZONE $8)::date END)
               AS refund_break_on
    FROM refunds r JOIN cards k ON k.id = r.card_id
    WHERE r.due_on < $3 AND r.status IN ('approved', 'instructed', 'paid') AND k.merchant_id IN (SELECT id FROM m)
    GROUP BY k.merchant_id
), b AS (
    SELECT a.merchant_id, count(*) AS breaks_open
    FROM reconciliation_breaks x JOIN escrow_accounts a ON a.id = x.escrow_account_id
    WHERE x.state = 'open' AND x.detected_at < $6 AND a.merchant_id IN (SELECT id FROM m)
    GROUP BY a.merchant_id
), p AS (
    SELECT merchant_id,
           count(*) FILTER (WHERE major AND decided_on >= $5) AS penalties_major,
           count(*) FILTER (WHERE NOT major AND decided_on >= $5) AS penalties_minor,
           max(decided_on) FILTER (WHERE major AND decided_on <= $3) AS major_penalty_on
    FROM penalties WHERE merchant_id IN (SELECT id FROM m) GROUP BY merchant_id
), g AS (
    SELECT merchant_id, max(computed_at) FILTER (WHERE effective_grade <> 'A') AS not_a_at
    FROM credit_grades WHERE merchant_id IN (SELECT id FROM m) GROUP BY merchant_id
), o AS (
    SELECT DISTINCT ON (merchant_id) merchant_id, grade AS override_grade
    FROM credit_overrides WHERE lapses_on > $3 AND merchant_id IN (SELECT id FROM m)
    ORDER BY merchant_id, set_at DESC, id DESC
), ob AS (
    SELECT merchant_id, max(least(lapses_on - 1, $3::date)) AS override_not_a_on
    FROM credit_overrides WHERE grade <> 'A' AND merchant_id IN (SELECT id FROM m) GROUP BY merchant_id
)
SELECT m.id, m.opened_on, m.credit_rating, m.status,
       coalesce(w.warnings_open_alert, 0) AS warnings_open_alert,
       coalesce(w.warnings_open_attention, 0) AS warnings_open_attention,
       coalesce(w.warnings_past_alert, 0) AS warnings_past_alert,
       coalesce(w.warnings_past_attention, 0) AS warnings_past_attention,
       coalesce(c.complaints_upheld, 0) AS complaints_upheld,
       coalesce(c.complaints_partly_upheld, 0) AS complaints_partly_upheld,
       coalesce(c.complaints_answered_late, 0) AS complaints_answered_late,
       coalesce(r.refunds_overdue_unpaid, 0) AS refunds_overdue_unpaid,
       coalesce(r.refunds_paid_late, 0) AS refunds_paid_late,
       coalesce(b.breaks_open, 0) AS breaks_open,
       coalesce(p.penalties_major, 0) AS penalties_major,
       coalesce(p.penalties_minor, 0) AS penalties_minor,
       (c.money_complaint_at AT TIME ZONE $8)::date AS money_complaint_on,
       r.refund_break_on, p.major_penalty_on,
       CASE WHEN m.status IN ('closing', 'closed') THEN $3::date
            ELSE (SELECT (max(announced_at) AT TIME ZONE $8)::date FROM closures WHERE merchant_id = m.id) END
           AS closure_on,
       (g.not_a_at AT TIME ZONE $8)::date AS not_a_on, ob.override_not_a_on, o.override_grade
FROM m LEFT JOIN w ON w.merchant_id = m.id LEFT JOIN c ON c.merchant_id = m.id LEFT JOIN r ON r.merchant_id = m.id
     LEFT JOIN b ON b.merchant_id = m.id LEFT JOIN p ON p.merchant_id = m.id LEFT JOIN g ON g.merchant_id = m.id
     LEFT JOIN o ON o.merchant_id = m.id LEFT JOIN ob ON ob.merchant_id = m.id
ORDER BY m.id
"""

_INSERT = """
INSERT INTO credit_grades (merchant_id, computed_at, grade, score, factors, effective_grade, white_list,
                           white_list_reasons)
SELECT u.merchant_id, $1, u.grade, u.score, u.factors::jsonb, u.effective_grade, u.white_list, u.reasons::jsonb
FROM unnest($2::text[], $3::text[], $4::int[], $5::text[], $6::text[], $7::bool[], $8::text[])
     AS u(merchant_id, grade, score, factors, effective_grade, white_list, reasons)
"""

_SET_RATING = """
UPDATE merchants m SET credit_rating = u.grade
FROM unnest($1::text[], $2::text[]) AS u(id, grade)
WHERE m.id = u.id AND m.credit_rating <> u.grade
RETURNING m.id
"""

# the effective grade of the given merchants put on them: a holding override's, else the latest computed grade,
# else the rating before the first override (the one given at onboarding)
_EFFECTIVE = """
UPDATE merchants m SET credit_rating = coalesce(
    (SELECT o.grade FROM credit_overrides o WHERE o.merchant_id = m.id AND o.lapses_on > $2
     ORDER BY o.set_at DESC, o.id DESC LIMIT 1),
    (SELECT g.grade FROM credit_grades g WHERE g.merchant_id = m.id ORDER BY g.computed_at DESC, g.id DESC LIMIT 1),
    (SELECT o.previous_rating FROM credit_overrides o WHERE o.merchant_id = m.id ORDER BY o.set_at, o.id LIMIT 1),
    m.credit_rating)
WHERE m.id = ANY($1::text[])
"""

_LAPSE = """
UPDATE credit_overrides SET lapsed_at = $1 WHERE lapsed_at IS NULL AND lapses_on <= $2 RETURNING merchant_id
"""

_LATEST = """
SELECT DISTINCT ON (merchant_id) merchant_id, computed_at, grade, score, factors
FROM credit_grades WHERE merchant_id = ANY($1::text[]) ORDER BY merchant_id, computed_at DESC, id DESC
"""


@dataclass
class Facts:
    """One merchant's gathered row, scored: its computed grading now, and its white-list breaks."""

    row: Any
    counts: dict[str, int]
    breaks: dict[str, date | None]


def _counts(row: Any, today: date) -> dict[str, int]:
    counts = {name: int(row[name]) for name in scoring.FACTORS if name != scoring.BONUS}
    counts[scoring.BONUS] = scoring.years_between(row["opened_on"], today)
    return counts


def _breaks(row: Any, settings: Settings, today: date, effective_grade: str) -> dict[str, date | None]:
    since = today - timedelta(days=365 * settings.white_list_years)

    def within(day: date | None) -> date | None:
        return day if day is not None and day >= since else None

    grade_days = [d for d in (row["not_a_on"], row["override_not_a_on"]) if d is not None and d <= today]
    if effective_grade != "A":
        grade_days.append(today)
    return {
        "grade_not_a": max(grade_days) if grade_days else None,
        "major_penalty": within(row["major_penalty_on"]),
        "overdue_refund": within(row["refund_break_on"]),
        "money_complaint": within(row["money_complaint_on"]),
        "closure": within(row["closure_on"]),
    }


def _params(settings: Settings, now: datetime, ids: list[str] | None) -> tuple:
    today = business_date(now, settings.business_timezone)
    return (
        ids,
        now,
        today,
        now - timedelta(days=settings.credit_lookback_days),
        today - timedelta(days=settings.credit_penalty_lookback_days),
        now - timedelta(days=settings.credit_break_days),
        list(settings.white_list_money_complaint_categories),
        settings.business_timezone,
    )


async def gather(session: AsyncSession, settings: Settings, now: datetime, ids: list[str] | None) -> list[Any]:
    """The factor counts and white-list facts of the given merchants (None: all), one statement."""
    return await db.fetch(session, _GATHER, *_params(settings, now, ids))


def grading(settings: Settings, counts: dict[str, int]) -> scoring.Grading:
    return scoring.score(
        counts,
        settings.credit_weights,
        settings.credit_grade_cutoffs,
        base=settings.credit_base_score,
        age_cap=settings.credit_age_years_counted,
    )


@dataclass
class RunOutcome:
    computed_at: datetime
    merchants: int
    by_grade: dict[str, int]
    changed: int
    white_list: int


async def apply_lapses(session: AsyncSession, settings: Settings, now: datetime) -> int:
    """Overrides whose lapses_on has come: marked lapsed, and their merchants' effective grade put back."""
    today = business_date(now, settings.business_timezone)
    lapsed = sorted({r["merchant_id"] for r in await db.fetch(session, _LAPSE, now, today)})
    if lapsed:
        await db.fetch(session, _EFFECTIVE, lapsed, today)
    return len(lapsed)


async def run(session: AsyncSession, settings: Settings, now: datetime) -> RunOutcome:
    """Grade every merchant at ``now`` (the caller commits)."""
    today = business_date(now, settings.business_timezone)
    await apply_lapses(session, settings, now)
    rows = await gather(session, settings, now, None)
    ids, grades, scores, factors, effective, on_list, reasons = [], [], [], [], [], [], []
    by_grade = dict.fromkeys(scoring.GRADES, 0)
    for row in rows:
        graded = grading(settings, _counts(row, today))
        eff = row["override_grade"] or graded.grade
        status = scoring.white_list(eff, _breaks(row, settings, today, eff), today, settings.white_list_repair_days)
        ids.append(row["id"])
        grades.append(graded.grade)
        scores.append(graded.score)
        factors.append(json.dumps(graded.factors_json()))
        effective.append(eff)
        on_list.append(status.on_list)
        reasons.append(json.dumps(list(status.reasons)))
        by_grade[graded.grade] += 1
    await db.fetch(session, _INSERT, now, ids, grades, scores, factors, effective, on_list, reasons)
    changed = await db.fetch(session, _SET_RATING, ids, effective)
    return RunOutcome(now, len(ids), by_grade, len(changed), sum(on_list))


# --- reading -----------------------------------------------------------------------------------------------------


@dataclass
class Standing:
    """A merchant's credit as read now."""

    merchant: Merchant
    effective_grade: str
    latest: Any | None  # the latest credit_grades row (computed_at, grade, score, factors)
    override: CreditOverride | None
    white_list: scoring.WhiteListStatus


async def standings(
    session: AsyncSession, settings: Settings, merchants_read: list[Merchant], now: datetime
) -> dict[str, Standing]:
    """The credit of the given merchants now: two statements whatever their number, plus one for overrides."""
    if not merchants_read:
        return {}
    today = business_date(now, settings.business_timezone)
    ids = [m.id for m in merchants_read]
    rows = {r["id"]: r for r in await gather(session, settings, now, ids)}
    latest = {r["merchant_id"]: r for r in await db.fetch(session, _LATEST, ids)}
    holding: dict[str, CreditOverride] = {}
    query = (
        select(CreditOverride)
        .where(CreditOverride.merchant_id.in_(ids), CreditOverride.lapses_on > today)
        .order_by(CreditOverride.set_at, CreditOverride.id)
    )
    for override in await session.scalars(query):
        holding[override.merchant_id] = override  # the latest set wins
    out = {}
    for m in merchants_read:
        override = holding.get(m.id)
        last = latest.get(m.id)
        effective = override.grade if override else last["grade"] if last else m.credit_rating
        if override is None and last is None:
            status = scoring.WhiteListStatus(False, ("not_graded",), None, None)
        else:
            breaks = _breaks(rows[m.id], settings, today, effective)
            status = scoring.white_list(effective, breaks, today, settings.white_list_repair_days)
        out[m.id] = Standing(m, effective, last, override, status)
    return out


async def standing(session: AsyncSession, settings: Settings, principal: Principal, merchant_id: str, now: datetime):
    merchant = await merchants.get(session, principal, merchant_id)
    return (await standings(session, settings, [merchant], now))[merchant.id]


async def white_listed(session: AsyncSession, settings: Settings, now: datetime) -> list[Standing]:
    """The merchants on the white list now, by name: only those whose effective grade may be A are read."""
    today = business_date(now, settings.business_timezone)
    candidates = select(Merchant).where(
        (Merchant.credit_rating == "A")
        | Merchant.id.in_(
            select(CreditOverride.merchant_id).where(
                CreditOverride.lapsed_at.is_(None), CreditOverride.lapses_on <= today
            )
        )
    )
    found = list(await session.scalars(candidates.order_by(Merchant.name, Merchant.id)))
    read = await standings(session, settings, found, now)
    return [read[m.id] for m in found if read[m.id].white_list.on_list]


# --- overrides and penalties -------------------------------------------------------------------------------------


async def override(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    merchant_id: str,
    grade: str,
    reason: str,
    lapses_on: date,
    now: datetime,
) -> CreditOverride:
    merchant = await merchants.get(session, principal, merchant_id, lock=True)
    today = business_date(now, settings.business_timezone)
    if lapses_on <= today:
        raise FieldInvalid("lapses_on", f"must be after today ({today.isoformat()})", rule="after_today")
    row = CreditOverride(
        id=new_id("cov"),
        merchant_id=merchant.id,
        grade=grade,
        reason=reason,
        lapses_on=lapses_on,
        previous_rating=merchant.credit_rating,
        set_by=principal.id,
        set_at=now,
    )
    session.add(row)
    merchant.credit_rating = grade  # the effective grade from now: new sales on the ratio model take its ratio
    await session.flush()
    return row


class DuplicateDecision(Conflict):
    code = "penalty_already_recorded"
    title = "Penalty already recorded"


async def record_penalty(
    session: AsyncSession, settings: Settings, principal: Principal, merchant_id: str, data: Any, now: datetime
) -> Penalty:
    merchant = await merchants.get(session, principal, merchant_id, lock=True)
    if data.decided_on > business_date(now, settings.business_timezone):
        raise FieldInvalid("decided_on", "must not be in the future", rule="not_future")
    exists = await session.scalar(
        select(Penalty.id).where(Penalty.merchant_id == merchant.id, Penalty.decision_number == data.decision_number)
    )
    if exists:
        raise DuplicateDecision(f"decision {data.decision_number} is already recorded for this merchant")
    penalty = Penalty(
        id=new_id("pen"),
        merchant_id=merchant.id,
        kind=data.kind,
        decided_on=data.decided_on,
        decision_number=data.decision_number,
        major=data.major,
        note=data.note,
        recorded_by=principal.id,
        recorded_at=now,
    )
    session.add(penalty)
    await session.flush()
    return penalty


async def penalties_of(session: AsyncSession, principal: Principal, merchant_id: str) -> list[Penalty]:
    merchant = await merchants.get(session, principal, merchant_id)
    query = select(Penalty).where(Penalty.merchant_id == merchant.id).order_by(Penalty.decided_on.desc(), Penalty.id)
    return list(await session.scalars(query))


__all__ = ["CreditGrade", "RunOutcome", "Standing", "apply_lapses", "run", "standings"]
