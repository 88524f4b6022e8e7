from typing import Annotated

from litestar import get, post
from litestar.params import FromQuery, JSONBody

from escrow.auth.guards import requires
from escrow.deps import DbSession, PrincipalDep
from escrow.errors import problem_responses
from escrow.kit.pagination import Page, decode_cursor, page_of
from escrow.kit.params import Cursor, Limit, path_id
from escrow.models.card import InstructionStatus
from escrow.payouts import service
from escrow.payouts.schemas import Executed, Failed, InstructionOut, PayoutRun, PayoutRunRequest

TAGS = ["payouts"]
ONE = "/v1/instructions/{instruction_id:str}"


@post(
    "/v1/payout-runs",
    guards=[requires("regulator", "merchant", own=("merchant",))],
    tags=TAGS,
    summary="Pay out released money now: one instruction per escrow account with a payable balance",
    responses=problem_responses(401, 403, 422),
)
async def run_payouts(data: JSONBody[PayoutRunRequest], db_session: DbSession, principal: PrincipalDep) -> PayoutRun:
    """Makes, for each active escrow account of the merchant (a merchant: its own; the regulator: one merchant's or
    all), one payout instruction for its available `merchant_payable` balance; accounts with nothing payable get
    none. Each instruction holds its amount on the ledger (pending Dr merchant_payable, Cr custody_cash) until the
    bank reports it.
    """
    merchant_id = principal.id if principal.role == "merchant" else data.merchant_id
    made = await service.run_payouts(db_session, principal.id, merchant_id)
    return PayoutRun(instructions=[InstructionOut.of(i) for i in made])


@get(
    "/v1/instructions",
    guards=[requires("regulator", "bank", "merchant", own=("bank", "merchant"))],
    tags=TAGS,
    summary="Bank instructions (status=pending: what the bank has to carry out)",
    responses=problem_responses(401, 403, 422),
)
async def list_instructions(
    db_session: DbSession,
    principal: PrincipalDep,
    status: FromQuery[InstructionStatus | None] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[InstructionOut]:
    """Lists bank instructions in id order, optionally by status (`pending`: what the bank has yet to carry out);
    cursor-paginated. A bank sees those addressed to it, a merchant those of its escrow accounts.
    """
    rows = await service.list_visible(db_session, principal, status=status, after=decode_cursor(cursor), limit=limit)
    return page_of(rows, limit, InstructionOut.of, lambda i: i.id)


@get(
    ONE,
    guards=[requires("regulator", "bank", "merchant", own=("bank", "merchant"))],
    tags=TAGS,
    summary="A bank instruction",
    responses=problem_responses(401, 403, 404),
)
async def get_instruction(
    instruction_id: Annotated[str, path_id("instruction")], db_session: DbSession, principal: PrincipalDep
) -> InstructionOut:
    """Returns one bank instruction."""
    return InstructionOut.of(await service.get(db_session, principal, instruction_id))


@post(
    ONE + "/sent",
    guards=[requires("bank", own=("bank",))],
    tags=TAGS,
    status_code=200,
    summary="The bank took the instruction: it can no longer be cancelled (signed; idempotent)",
    responses=problem_responses(401, 403, 404, 409),
)
async def instruction_sent(
    instruction_id: Annotated[str, path_id("instruction")], db_session: DbSession, principal: PrincipalDep
) -> InstructionOut:
    """The bank reports it took a `pending` instruction: it becomes `sent` and a closure can no longer cancel it.
    Reporting it again changes nothing; an instruction already executed, failed or cancelled is refused with 409
    `instruction_settled`.
    """
    return InstructionOut.of(await service.report_sent(db_session, principal, instruction_id))


@post(
    ONE + "/executed",
    guards=[requires("bank", own=("bank",))],
    tags=TAGS,
    status_code=200,
    summary="The bank carried out the instruction (signed; the same report again is harmless)",
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def instruction_executed(
    instruction_id: Annotated[str, path_id("instruction")],
    data: JSONBody[Executed],
    db_session: DbSession,
    principal: PrincipalDep,
) -> InstructionOut:
    """The bank reports it carried out the instruction with its own transaction id: the held amount posts (money leaves
    custody), a refund becomes `paid` and a transfer activates the successor's card. The same report again answers as
    before; a contradicting one (another transaction id, or an instruction failed or cancelled) is refused with 409
    `instruction_settled`.
    """
    return InstructionOut.of(
        await service.report_executed(db_session, principal, instruction_id, data.bank_transaction_id)
    )


@post(
    ONE + "/failed",
    guards=[requires("bank", own=("bank",))],
    tags=TAGS,
    status_code=200,
    summary="The bank could not carry out the instruction: its hold is released and the next run retries",
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def instruction_failed(
    instruction_id: Annotated[str, path_id("instruction")],
    data: JSONBody[Failed],
    db_session: DbSession,
    principal: PrincipalDep,
) -> InstructionOut:
    """The bank reports it could not carry out the instruction, with a reason: the hold is voided so the money stays
    payable; a refund goes back to `approved` and is instructed again, and transfers, fund payouts and a closed
    account's last payout are replaced at once, while ordinary payouts wait for the next run. Reporting the failure
    again changes nothing; an executed or cancelled instruction is refused with 409 `instruction_settled`.
    """
    return InstructionOut.of(await service.report_failed(db_session, principal, instruction_id, data.reason))
