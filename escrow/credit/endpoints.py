import json
from typing import Annotated

from litestar import Request, get, post
from litestar.params import JSONBody

from escrow.audit import AUDIT_DETAIL
from escrow.auth.guards import requires
from escrow.credit import scoring, service
from escrow.credit.schemas import (
    ComputedGrade,
    CreditOut,
    CreditRunOut,
    OverrideCreate,
    OverrideOut,
    PenaltyCreate,
    PenaltyOut,
    WhiteListEntry,
    WhiteListOut,
    WhiteListReason,
)
from escrow.deps import DbSession, PrincipalDep, SettingsDep
from escrow.errors import problem_responses
from escrow.kit.clock import utcnow
from escrow.kit.params import path_id

TAGS = ["credit"]


def credit_out(read: service.Standing) -> CreditOut:
    last = read.latest
    factors = last["factors"] if last else None
    if isinstance(factors, str):
        factors = json.loads(factors)
    status = read.white_list
    return CreditOut(
        merchant_id=read.merchant.id,
        grade=read.effective_grade,  # type: ignore[arg-type]
        computed=ComputedGrade(
            grade=last["grade"], score=last["score"], computed_at=last["computed_at"], factors=factors
        )
        if last
        else None,
        override=OverrideOut.model_validate(read.override) if read.override else None,
        white_list=WhiteListOut(
            on_list=status.on_list,
            reasons=[WhiteListReason(reason=r, description=scoring.REASONS[r]) for r in status.reasons],  # type: ignore[arg-type]
            last_break_on=status.last_break_on,
            repair_until=status.repair_until,
        ),
    )


@post(
    "/v1/credit/runs",
    guards=[requires("regulator")],
    tags=TAGS,
    status_code=200,
    summary="Grade every merchant now",
    responses=problem_responses(401, 403),
)
async def run_credit(db_session: DbSession, settings: SettingsDep) -> CreditRunOut:
    """Computes every merchant's grade now (as the monthly job does): one statement gathers the factor counts of all
    merchants, each grade is stored with its factors, and each merchant's credit rating becomes its effective grade
    (an override holding keeps its grade), which sets the custody ratio of its new sales on the ratio model.
    """
    outcome = await service.run(db_session, settings, utcnow())
    return CreditRunOut(
        computed_at=outcome.computed_at,
        merchants=outcome.merchants,
        by_grade=outcome.by_grade,
        ratings_changed=outcome.changed,
        white_list=outcome.white_list,
    )


@get(
    "/v1/credit/white-list",
    guards=[requires("regulator")],
    tags=TAGS,
    summary="The 无事不扰 white list (off-site inspection)",
    responses=problem_responses(401, 403),
)
async def white_list(db_session: DbSession, settings: SettingsDep) -> list[WhiteListEntry]:
    """Lists the merchants on the white list now, by name: effective grade A and no condition broken over the
    white-list years nor within the credit-repair period; they are inspected off-site.
    """
    out = []
    for read in await service.white_listed(db_session, settings, utcnow()):
        m = read.merchant
        out.append(
            WhiteListEntry(
                merchant_id=m.id,
                name=m.name,
                category=m.category,
                region=m.region,
                grade=read.effective_grade,  # type: ignore[arg-type]
                score=read.latest["score"] if read.latest else None,
                computed_at=read.latest["computed_at"] if read.latest else None,
            )
        )
    return out


@get(
    "/v1/merchants/{merchant_id:str}/credit",
    guards=[requires("regulator", "merchant", own=("merchant",))],
    tags=TAGS,
    summary="A merchant's credit grade, factors, override and white-list status",
    responses=problem_responses(401, 403, 404),
)
async def get_credit(
    merchant_id: Annotated[str, path_id("merchant")],
    db_session: DbSession,
    settings: SettingsDep,
    principal: PrincipalDep,
) -> CreditOut:
    """Returns the merchant's effective grade, its latest computed grade with every factor (count, weight, points),
    the override holding now, and its white-list status with the reasons it is off; a merchant sees only its own.
    """
    return credit_out(await service.standing(db_session, settings, principal, merchant_id, utcnow()))


@post(
    "/v1/merchants/{merchant_id:str}/credit/override",
    guards=[requires("regulator")],
    tags=TAGS,
    status_code=200,
    summary="Override a merchant's grade until a date",
    responses=problem_responses(401, 403, 404, 422),
)
async def override_credit(
    merchant_id: Annotated[str, path_id("merchant")],
    data: JSONBody[OverrideCreate],
    request: Request,
    db_session: DbSession,
    settings: SettingsDep,
    principal: PrincipalDep,
) -> CreditOut:
    """Sets the merchant's effective grade by hand, with a reason kept in the audit trail, until `lapses_on` (which
    must be after today, else 422 `after_today`); the merchant's new sales on the ratio model take its custody ratio
    at once. From `lapses_on` the computed grade applies again.
    """
    now = utcnow()
    request.scope["state"][AUDIT_DETAIL] = {
        "grade": data.grade,
        "reason": data.reason,
        "lapses_on": data.lapses_on.isoformat(),
    }
    await service.override(db_session, settings, principal, merchant_id, data.grade, data.reason, data.lapses_on, now)
    return credit_out(await service.standing(db_session, settings, principal, merchant_id, now))


@post(
    "/v1/merchants/{merchant_id:str}/penalties",
    guards=[requires("regulator")],
    tags=TAGS,
    summary="Record a penalty decided against a merchant",
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def record_penalty(
    merchant_id: Annotated[str, path_id("merchant")],
    data: JSONBody[PenaltyCreate],
    db_session: DbSession,
    settings: SettingsDep,
    principal: PrincipalDep,
) -> PenaltyOut:
    """Records an administrative penalty (kind, decision date, decision number, major or not, note); it counts in
    the merchant's next grade, and a major one keeps it off the white list at once. A decision number already
    recorded for the merchant is refused with 409 `penalty_already_recorded`; a decision date in the future with
    422.
    """
    penalty = await service.record_penalty(db_session, settings, principal, merchant_id, data, utcnow())
    return PenaltyOut.model_validate(penalty)


@get(
    "/v1/merchants/{merchant_id:str}/penalties",
    guards=[requires("regulator", "merchant", own=("merchant",))],
    tags=TAGS,
    summary="Penalties recorded against a merchant",
    responses=problem_responses(401, 403, 404),
)
async def list_penalties(
    merchant_id: Annotated[str, path_id("merchant")], db_session: DbSession, principal: PrincipalDep
) -> list[PenaltyOut]:
    """Lists the penalties recorded against the merchant, latest decision first; a merchant sees only its own."""
    return [PenaltyOut.model_validate(p) for p in await service.penalties_of(db_session, principal, merchant_id)]
