import csv
import io
from collections.abc import AsyncIterator
from typing import Annotated

from litestar import Request, get, post
from litestar.params import JSONBody
from litestar.response import Stream
from sqlalchemy import select

from escrow.auth.guards import requires
from escrow.closures import service
from escrow.closures.schemas import (
    ClosureCreate,
    ClosureOut,
    ConfirmationOut,
    ItemOut,
    SettlementTotals,
    TakeoverAnswer,
    TakeoverDecisionOut,
    TakeoverProposal,
)
from escrow.deps import DbSession, PrincipalDep, SettingsDep
from escrow.errors import problem_responses
from escrow.kit.money import Money
from escrow.kit.pagination import Page, decode_cursor, int4, page_of
from escrow.kit.params import Cursor, Limit, path_id
from escrow.models import Closure, ClosureItem

TAGS = ["closures"]
ONE = "/v1/closures/{closure_id:str}"
MONEY_COLUMNS = (
    "unused",
    "from_custody",
    "set_off",
    "fund_paid",
    "fund_owed",
    "fund_owed_paid",
    "unpaid",
    "transferred",
    "assumed",
)


def closure_out(closure: Closure, totals: service.Totals | None = None) -> ClosureOut:
    return ClosureOut(
        id=closure.id,
        merchant_id=closure.merchant_id,
        mode=closure.mode,
        status=closure.status,
        reason=closure.reason,
        effective_on=closure.effective_on,
        announced_at=closure.announced_at,
        frozen_at=closure.frozen_at,
        planned_at=closure.planned_at,
        settling_at=closure.settling_at,
        settled_at=closure.settled_at,
        confirmed_at=closure.confirmed_at,
        successor_merchant_id=closure.successor_merchant_id,
        takeover_deadline=closure.takeover_deadline,
        progress={"done": closure.items_done, "total": closure.items_total},
        totals=None
        if totals is None
        else SettlementTotals(
            items=totals.items,
            done=totals.done,
            **{column: Money(amount=getattr(totals, column)) for column in MONEY_COLUMNS},
        ),
    )


def item_out(item: ClosureItem) -> ItemOut:
    return ItemOut(
        id=item.id,
        seq=item.seq,
        kind=item.kind,
        decision=item.decision,
        status=item.status,
        escrow_account_id=item.escrow_account_id,
        consumer_id=item.consumer_id,
        card_id=item.card_id,
        refund_id=item.refund_id,
        new_card_id=item.new_card_id,
        done_at=item.done_at,
        paid_at=item.paid_at,
        revised_at=item.revised_at,
        **{column: Money(amount=getattr(item, column)) for column in MONEY_COLUMNS},
    )


async def _with_totals(db_session: DbSession, closure: Closure) -> ClosureOut:
    return closure_out(closure, await service.totals(db_session, closure.id))


@post(
    "/v1/closures",
    guards=[requires("regulator", "merchant", own=("merchant",))],
    tags=TAGS,
    summary="Announce a closure (merchant, with notice) or order one (regulator, at once): sales stop now",
    responses=problem_responses(401, 403, 409, 422),
)
async def open_closure(
    data: JSONBody[ClosureCreate], db_session: DbSession, principal: PrincipalDep, settings: SettingsDep
) -> ClosureOut:
    """Opens the merchant's closure: the merchant becomes `closing` and sales stop at once. A merchant announces it at
    least ESCROW_CLOSURE_NOTICE_DAYS ahead (services go on until then); the regulator may order it from a date or,
    leaving `effective_on` out, at once, which freezes the escrow accounts now (open refund requests superseded,
    unpaid cards cancelled, no movement but the settlement's). Refused with 409 `invalid_state` when the merchant
    isn't active or suspended or already has a closure, and with 422 for a date too early.
    """
    return closure_out(await service.open_closure(db_session, settings, principal, data))


@get(
    "/v1/closures",
    guards=[requires("regulator", "merchant", own=("merchant",))],
    tags=TAGS,
    summary="Closures (a merchant sees its own, and those it succeeds)",
    responses=problem_responses(401, 403),
)
async def list_closures(db_session: DbSession, principal: PrincipalDep) -> list[ClosureOut]:
    """Lists closures, oldest first: a merchant sees its own and those it is proposed as successor of, the regulator
    all.
    """
    return [closure_out(c) for c in await service.list_visible(db_session, principal)]


@get(
    ONE,
    guards=[requires("regulator", "merchant", own=("merchant",))],
    tags=TAGS,
    summary="A closure, with its settlement's totals per source and progress (items done / total)",
    responses=problem_responses(401, 403, 404),
)
async def get_closure(
    closure_id: Annotated[str, path_id("closure")], db_session: DbSession, principal: PrincipalDep
) -> ClosureOut:
    """Returns a closure with its settlement plan's totals by source (custody, set-off, the fund, unpaid, transferred)
    and its progress, items done out of total.
    """
    return await _with_totals(db_session, await service.get(db_session, principal, closure_id))


@post(
    ONE + "/plan",
    guards=[requires("regulator")],
    tags=TAGS,
    status_code=200,
    summary="Compute the settlement plan of a frozen closure (again), to be seen before it is executed",
    responses=problem_responses(401, 403, 404, 409),
)
async def compute_plan(
    closure_id: Annotated[str, path_id("closure")],
    db_session: DbSession,
    principal: PrincipalDep,
    settings: SettingsDep,
) -> ClosureOut:
    """Computes, or computes again, the settlement plan of a frozen closure without moving money, so it can be reviewed:
    per card, what custody pays, what the merchant's unpaid payable covers by set-off, what the fund pays within its
    per-consumer cap (pro rata when short) and what stays unpaid; cards whose consumer accepted a takeover move to
    the successor. Services still held are voided and payouts the bank hasn't taken are cancelled first. Refused with
    409 `invalid_state` unless the closure is `frozen`.
    """
    return await _with_totals(db_session, await service.plan(db_session, settings, principal, closure_id))


@get(
    ONE + "/items",
    guards=[requires("regulator", "merchant", own=("merchant",))],
    tags=TAGS,
    summary="The settlement plan item by item: per card, what custody, set-off and the fund pay, what is left",
    description="Each item's id is the closure_item_id of the instructions that pay it; ids stay the same when the "
    "plan is computed again (revised_at marks lines whose figures changed).",
    responses=problem_responses(401, 403, 404, 422),
)
async def list_items(
    closure_id: Annotated[str, path_id("closure")],
    db_session: DbSession,
    principal: PrincipalDep,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[ItemOut]:
    """Lists the closure's settlement plan item by item, in plan order; cursor-paginated."""
    closure = await service.get(db_session, principal, closure_id, items=True)
    rows = await service.items_page(db_session, closure.id, after=decode_cursor(cursor, int4), limit=limit)
    return page_of(rows, limit, item_out, lambda i: i.seq)


CSV_HEADER = (
    "id",
    "seq",
    "kind",
    "decision",
    "status",
    "escrow_account_id",
    "consumer_id",
    "card_id",
    "refund_id",
    "new_card_id",
    *MONEY_COLUMNS,
    "done_at",
    "paid_at",
    "revised_at",
)
TEXT_COLUMNS = CSV_HEADER[:10]
TIME_COLUMNS = CSV_HEADER[-3:]


@get(
    ONE + "/plan.csv",
    guards=[requires("regulator", "merchant", own=("merchant",))],
    tags=TAGS,
    summary="The settlement plan as CSV (amounts in fen), streamed",
    media_type="text/csv",
    responses=problem_responses(401, 403, 404),
)
async def plan_csv(
    closure_id: Annotated[str, path_id("closure")], db_session: DbSession, principal: PrincipalDep, request: Request
) -> Stream:
    """Streams the whole settlement plan as CSV, one row per item in plan order, amounts in integer fen."""
    closure = await service.get(db_session, principal, closure_id, items=True)
    sessionmaker = request.app.state.sessionmaker

    async def rows() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        async with sessionmaker() as session, session.begin():  # its own read: the request's is over by now
            result = await session.stream_scalars(
                select(ClosureItem).where(ClosureItem.closure_id == closure.id).order_by(ClosureItem.seq),
                execution_options={"yield_per": 2000},
            )
            async for item in result:
                writer.writerow(
                    [
                        *(getattr(item, c) or "" for c in TEXT_COLUMNS),
                        *(getattr(item, c) for c in MONEY_COLUMNS),
                        *(getattr(item, c).isoformat() if getattr(item, c) else "" for c in TIME_COLUMNS),
                    ]
                )
                if buffer.tell() > 64_000:
                    yield buffer.getvalue()
                    buffer.seek(0)
                    buffer.truncate()
        yield buffer.getvalue()

    return Stream(
        rows(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{closure.id}-plan.csv"'},
    )


@post(
    ONE + "/settlement",
    guards=[requires("regulator")],
    tags=TAGS,
    status_code=200,
    summary="Fix the plan and start executing it (the service works it in batches; see progress)",
    responses=problem_responses(401, 403, 404, 409),
)
async def start_settlement(
    closure_id: Annotated[str, path_id("closure")],
    db_session: DbSession,
    principal: PrincipalDep,
    settings: SettingsDep,
) -> ClosureOut:
    """Fixes the plan against the fund's balance now and starts executing it (status `settling`); the service then
    settles the items in batches, each committed whole, and the closure becomes `settled` when all are done. Refused
    with 409 `invalid_state` unless the closure is `frozen`, and with 409 `takeover_open` while consumers may still
    answer a takeover.
    """
    return await _with_totals(db_session, await service.start(db_session, settings, principal, closure_id))


@post(
    ONE + "/takeover",
    guards=[requires("regulator", "merchant", own=("merchant",))],
    tags=TAGS,
    status_code=200,
    summary="Propose a successor merchant that takes over the cards of consumers who accept",
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def propose_takeover(
    closure_id: Annotated[str, path_id("closure")],
    data: JSONBody[TakeoverProposal],
    db_session: DbSession,
    principal: PrincipalDep,
) -> ClosureOut:
    """Proposes another active merchant with an active escrow account as successor: consumers may accept the move of
    their cards (with their custodied funds) until the deadline; those who decline or don't answer are refunded.
    Refused with 409 `invalid_state` once the plan is fixed, and with 422 for an unsuitable successor or a past
    deadline.
    """
    return closure_out(await service.propose_takeover(db_session, principal, closure_id, data))


@post(
    "/v1/cards/{card_id:str}/takeover",
    guards=[requires("consumer", own=("consumer",))],
    tags=TAGS,
    status_code=200,
    summary="Accept the move of your card to the successor, or decline it and be refunded",
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def answer_takeover(
    card_id: Annotated[str, path_id("card")],
    data: JSONBody[TakeoverAnswer],
    db_session: DbSession,
    principal: PrincipalDep,
) -> TakeoverDecisionOut:
    """The consumer accepts the move of an active card to the proposed successor, or declines it (and is refunded in the
    settlement); the answer may be changed until the deadline. Refused with 409 `invalid_state` when no takeover is
    proposed or it is no longer open, and with 409 `card_not_active`.
    """
    row = await service.decide_takeover(db_session, principal, card_id, data.decision)
    return TakeoverDecisionOut(
        closure_id=row.closure_id, card_id=row.card_id, decision=row.decision, decided_at=row.decided_at
    )


@post(
    ONE + "/confirm",
    guards=[requires("regulator")],
    tags=TAGS,
    status_code=200,
    summary="Confirm a settled closure: the surplus is paid to the merchant, which is closed",
    responses=problem_responses(401, 403, 404, 409),
)
async def confirm(
    closure_id: Annotated[str, path_id("closure")], db_session: DbSession, principal: PrincipalDep
) -> ConfirmationOut:
    """Confirms a settled closure: what is left of each escrow account's merchant_payable (the surplus) is instructed to
    the merchant, and the merchant and its escrow accounts are closed. Refused with 409 `invalid_state` unless the
    closure is `settled`.
    """
    closure, made = await service.confirm(db_session, principal, closure_id)
    return ConfirmationOut(closure=await _with_totals(db_session, closure), surplus_instructions=[i.id for i in made])


@get(
    "/v1/me/closure-statements",
    guards=[requires("consumer", own=("consumer",))],
    tags=TAGS,
    summary="Your cards settled by closures: what was owed and what was paid from where",
    responses=problem_responses(401, 403),
)
async def my_statements(db_session: DbSession, principal: PrincipalDep) -> list[dict]:
    """Lists the consumer's cards settled by closures: what was owed, and what custody, set-off and the fund paid, what
    was transferred, and what is still unpaid.
    """
    return [service.statement(item) for item in await service.consumer_statements(db_session, principal.id)]
