from typing import Annotated

from litestar import get, post
from litestar.params import FromQuery, JSONBody, QueryParameter

from escrow.auth.guards import requires
from escrow.complaints import service
from escrow.complaints.schemas import ComplaintAnswer, ComplaintFiling, ComplaintOut, ComplaintState, Mediation
from escrow.deps import DbSession, PrincipalDep, SettingsDep
from escrow.errors import problem_responses
from escrow.kit.clock import utcnow
from escrow.kit.pagination import Page, page_of
from escrow.kit.params import Cursor, Limit, path_id, query_id

TAGS = ["complaints"]
ONE = "/v1/complaints/{complaint_id:str}"


@post(
    "/v1/complaints",
    guards=[requires("consumer")],
    tags=TAGS,
    summary="Complain about a merchant you hold or held a card with",
    responses=problem_responses(401, 403, 422),
)
async def file_complaint(
    data: JSONBody[ComplaintFiling], db_session: DbSession, principal: PrincipalDep, settings: SettingsDep
) -> ComplaintOut:
    """Files the signed-in consumer's complaint about a merchant, optionally about one of their own cards there or a
    service recorded on it. The merchant must answer by `answer_due_at` (`ESCROW_COMPLAINT_ANSWER_HOURS` after
    filing, 24 by default). Refused with 422 (rule `card_holder`) when the consumer never held a card with the
    merchant, `own_card` / `own_service` when the card or service named is not theirs at that merchant.
    """
    complaint = await service.file(
        db_session,
        settings,
        principal,
        merchant_id=data.merchant_id,
        card_id=data.card_id,
        consumption_id=data.consumption_id,
        category=data.category,
        text=data.text,
    )
    return ComplaintOut.of(complaint, utcnow())


@get(
    "/v1/complaints",
    guards=[requires("regulator", "merchant", "consumer", own=("merchant", "consumer"))],
    tags=TAGS,
    summary="Complaints (overdue=true: unanswered past their deadline)",
    responses=problem_responses(401, 403, 422),
)
async def list_complaints(
    db_session: DbSession,
    principal: PrincipalDep,
    in_state: Annotated[
        ComplaintState | None, QueryParameter(name="state", description="Only complaints in this state.")
    ] = None,
    merchant_id: Annotated[str | None, query_id("merchant")] = None,
    overdue: FromQuery[bool] = False,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> Page[ComplaintOut]:
    """Lists complaints in filing order, filtered by state and merchant, or with `overdue=true` those still filed
    (unanswered, not mediated) past their answer deadline; cursor-paginated. A consumer sees their own, a merchant
    those about it, the regulator all.
    """
    rows = await service.list_visible(
        db_session, principal, state=in_state, merchant_id=merchant_id, overdue=overdue, cursor=cursor, limit=limit
    )
    now = utcnow()
    return page_of(rows, limit, lambda c: ComplaintOut.of(c, now), lambda c: c.id)


@get(
    ONE,
    guards=[requires("regulator", "merchant", "consumer", own=("merchant", "consumer"))],
    tags=TAGS,
    summary="A complaint and each of its steps",
    responses=problem_responses(401, 403, 404),
)
async def get_complaint(
    complaint_id: Annotated[str, path_id("complaint")], db_session: DbSession, principal: PrincipalDep
) -> ComplaintOut:
    """Returns one complaint: what was filed, the merchant's answer and its deadline, the regulator's mediation."""
    return ComplaintOut.of(await service.get(db_session, principal, complaint_id), utcnow())


@post(
    ONE + "/answer",
    guards=[requires("merchant", own=("merchant",))],
    tags=TAGS,
    status_code=200,
    summary="The merchant answers a complaint about it",
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def answer_complaint(
    complaint_id: Annotated[str, path_id("complaint")],
    data: JSONBody[ComplaintAnswer],
    db_session: DbSession,
    principal: PrincipalDep,
) -> ComplaintOut:
    """Records the merchant's answer (once); an answer after `answer_due_at` is kept and shown as late. Refused
    with 409 `invalid_state` unless the complaint is `filed`.
    """
    return ComplaintOut.of(await service.answer(db_session, principal, complaint_id, data.answer), utcnow())


@post(
    ONE + "/mediate",
    guards=[requires("regulator")],
    tags=TAGS,
    status_code=200,
    summary="The regulator mediates a complaint: upheld, partly upheld or rejected",
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def mediate_complaint(
    complaint_id: Annotated[str, path_id("complaint")],
    data: JSONBody[Mediation],
    db_session: DbSession,
    principal: PrincipalDep,
) -> ComplaintOut:
    """Records the regulator's mediation with its note, whether or not the merchant answered; the complaint ends
    `mediated`. Refused with 409 `invalid_state` when it already is.
    """
    return ComplaintOut.of(
        await service.mediate(db_session, principal, complaint_id, data.outcome, data.note), utcnow()
    )
