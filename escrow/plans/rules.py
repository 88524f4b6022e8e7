"""What a plan may sell, by merchant category (domain.md §5), checked when the plan is made and again at
every sale (the caps are settings and may have been lowered since)."""

import re

from escrow.config import Settings
from escrow.errors import EscrowError
from escrow.models import Plan


class PlanRuleBroken(EscrowError):
    code = "plan_rule_broken"
    status = 422
    title = "The plan breaks a prepaid-card rule"


# Terms consumer law voids (SPC Art 9; Beijing Art 15): they can't be written into a plan.
VOID_CLAUSES = {
    "no_refund": re.compile(r"不[予可能]?退|概不退|no[\s-]*refunds?|non[\s-]*refundable", re.IGNORECASE),
    "forfeiture": re.compile(r"作废|清零|forfeit|expires?\s+(and\s+)?(is\s+)?void", re.IGNORECASE),
    "final_interpretation": re.compile(r"最终解释权|final\s+(right\s+of\s+)?interpretation", re.IGNORECASE),
}


def yuan(fen: int) -> str:
    return f"{fen // 100:,}.{fen % 100:02d} yuan"


def violations(settings: Settings, category: str, plan: Plan) -> list[dict[str, str]]:
    """Each broken rule as ``{field, rule, message}``; empty when the plan may be sold."""
    found: list[dict[str, str]] = []

    def broken(field: str, rule: str, message: str) -> None:
        found.append({"field": field, "rule": rule, "message": message})

    for rule, pattern in VOID_CLAUSES.items():
        if pattern.search(plan.terms or "") or pattern.search(plan.name):
            broken("terms", f"void_clause_{rule}", f"a '{rule.replace('_', ' ')}' clause is void and can't be sold")
    if plan.kind == "stored_value" and plan.units > settings.stored_value_max_face:
        broken(
            "face_value",
            "stored_value_max_face",
            f"stored-value cards hold at most {yuan(settings.stored_value_max_face)}",
        )
    if plan.kind == "period" and plan.validity_days < plan.units:
        broken("validity_days", "period_within_validity", "a membership's validity must cover its days")
    if category == "training":
        if plan.price > settings.training_max_price:
            broken("price", "training_max_price", f"training plans cost at most {yuan(settings.training_max_price)}")
        if plan.kind == "sessions" and plan.units > settings.training_max_sessions:
            broken("sessions", "training_max_sessions", f"at most {settings.training_max_sessions} sessions")
        if plan.kind != "sessions" and plan.validity_days > settings.training_max_days:
            broken(
                "validity_days", "training_max_days", f"training plans run at most {settings.training_max_days} days"
            )
    elif category == "gym":
        if plan.kind == "period":
            if plan.price > settings.fitness_period_max_price:
                broken("price", "fitness_period_max_price", f"at most {yuan(settings.fitness_period_max_price)}")
            if plan.units > settings.fitness_period_max_days:
                broken("days", "fitness_period_max_days", f"at most {settings.fitness_period_max_days} days")
        if plan.kind == "sessions":
            if plan.price > settings.fitness_sessions_max_price:
                broken("price", "fitness_sessions_max_price", f"at most {yuan(settings.fitness_sessions_max_price)}")
            if plan.units > settings.fitness_max_sessions:
                broken("sessions", "fitness_max_sessions", f"at most {settings.fitness_max_sessions} sessions")
    return found


def check(settings: Settings, category: str, plan: Plan) -> None:
    found = violations(settings, category, plan)
    if found:
        raise PlanRuleBroken(
            "; ".join(f"{v['field']}: {v['message']} ({v['rule']})" for v in found),
            errors=[{"field": v["field"], "message": v["message"], "rule": v["rule"]} for v in found],
        )
