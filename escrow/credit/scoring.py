"""Credit grades, pure: factor counts in, grade, score and every factor's count, weight and points out.

score = base - sum(count * weight) (every factor but age) + min(years in business, cap) * weight of age_years,
kept within 0..100; the grade is the best whose least score it reaches (``credit_grade_cutoffs``), else D.
Weights are at least 0, so one more warning, upheld complaint, overdue refund, break or penalty never raises the
score, and the grade never improves (tests/test_credit.py checks this with hypothesis).
"""

from dataclasses import dataclass
from datetime import date

# the factors, in the order a grade shows them, with what each counts
FACTORS: dict[str, str] = {
    "warnings_open_alert": "early warnings at level alert still live (open, acknowledged or escalated)",
    "warnings_open_attention": "early warnings at level attention still live",
    "warnings_past_alert": "early warnings at level alert resolved, opened within the lookback window",
    "warnings_past_attention": "early warnings at level attention resolved, opened within the lookback window",
    "complaints_upheld": "complaints the regulator upheld, mediated within the lookback window",
    "complaints_partly_upheld": "complaints the regulator partly upheld, mediated within the lookback window",
    "complaints_answered_late": "complaints filed within the lookback window not answered by their due time",
    "refunds_overdue_unpaid": "approved refunds past their due date and not paid",
    "refunds_paid_late": "refunds paid after their due date, paid within the lookback window",
    "breaks_open": "reconciliation breaks of its escrow accounts open longer than credit_break_days",
    "penalties_major": "major penalties the regulator recorded, decided within the penalty window",
    "penalties_minor": "other penalties the regulator recorded, decided within the penalty window",
    "age_years": "full years in business since opened_on (adds to the score, up to credit_age_years_counted)",
}
BONUS = "age_years"
GRADES = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Factor:
    """One factor of a grade: how many, the weight of one, and the points it moved the score by."""

    factor: str
    count: int
    weight: int
    points: int  # negative: taken off the score; positive: added


@dataclass(frozen=True)
class Grading:
    grade: str
    score: int
    factors: tuple[Factor, ...]

    def factors_json(self) -> list[dict]:
        return [{"factor": f.factor, "count": f.count, "weight": f.weight, "points": f.points} for f in self.factors]


def years_between(start: date, today: date) -> int:
    years = today.year - start.year - ((today.month, today.day) < (start.month, start.day))
    return max(0, years)


def grade_of(score: int, cutoffs: dict[str, int]) -> str:
    for grade in ("A", "B", "C"):
        if score >= cutoffs[grade]:
            return grade
    return "D"


def score(
    counts: dict[str, int], weights: dict[str, int], cutoffs: dict[str, int], *, base: int = 100, age_cap: int = 5
) -> Grading:
    """The grade of one merchant from its factor counts (a missing factor counts 0)."""
    total = base
    factors = []
    for name in FACTORS:
        count = max(0, int(counts.get(name, 0)))
        weight = weights[name]
        points = min(count, age_cap) * weight if name == BONUS else -count * weight
        total += points
        factors.append(Factor(name, count, weight, points))
    total = max(0, min(100, total))
    return Grading(grade_of(total, cutoffs), total, tuple(factors))


def worse_or_equal(a: str, b: str) -> bool:
    """Grade ``a`` is no better than grade ``b``."""
    return GRADES.index(a) >= GRADES.index(b)


# --- the white list (无事不扰) -----------------------------------------------------------------------------------

REASONS: dict[str, str] = {
    "grade_not_a": "the effective grade is not A",
    "major_penalty": "a major penalty decided within the white-list years",
    "overdue_refund": "a refund overdue (unpaid past its due date, or paid late) within the white-list years",
    "money_complaint": "a complaint about money upheld or partly upheld within the white-list years",
    "closure": "a closure announced within the white-list years, or the merchant is closing or closed",
    "credit_repair": "a condition broke less than the credit-repair period ago",
    "not_graded": "no grade computed yet (and no override)",
}


@dataclass(frozen=True)
class WhiteListStatus:
    on_list: bool
    reasons: tuple[str, ...]  # why not (empty when on the list)
    last_break_on: date | None
    repair_until: date | None  # re-entry possible from this date (when credit_repair keeps it off)


def white_list(
    effective_grade: str,
    breaks: dict[str, date | None],
    today: date,
    repair_days: int,
) -> WhiteListStatus:
    """``breaks``: per condition (major_penalty, overdue_refund, money_complaint, closure, grade_not_a) the latest
    day it was broken within the window, or None. A condition broken today (or the grade not A now) keeps the
    merchant off; all clear, it may be on only once ``repair_days`` have passed since the last break."""
    from datetime import timedelta

    reasons = [k for k in ("major_penalty", "overdue_refund", "money_complaint", "closure") if breaks.get(k)]
    if effective_grade != "A":
        reasons.insert(0, "grade_not_a")
    days = [d for d in breaks.values() if d is not None]
    last = max(days) if days else None
    repair_until = last + timedelta(days=repair_days) if last else None
    if not reasons and repair_until and today < repair_until:
        reasons.append("credit_repair")
    return WhiteListStatus(not reasons, tuple(reasons), last, repair_until if "credit_repair" in reasons else None)
