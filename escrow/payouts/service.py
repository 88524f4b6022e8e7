"""Bank instructions: payouts of released money to the merchant (entry 3) and refunds to consumers (entry 4).

Each instruction holds its amount on the ledger (pending Dr payable, Cr ``custody_cash``) from the moment it is
made; the bank's report of execution posts the hold, a failure voids it so the next run tries again. Reports are
idempotent: the same report again answers as before, a contradicting one is refused.
"""

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from escrow import ledger
from escrow.auth.tokens import Principal
from escrow.errors import Conflict, NotFound
from escrow.kit.clock import utcnow
from escrow.kit.ids import new_id
from escrow.models import Card, EscrowAccount, Instruction, Merchant, Refund


class InstructionSettled(Conflict):
    code = "instruction_settled"
    title = "The instruction was already reported otherwise"


async def lock_payable(session: AsyncSession, escrow_account_id: str) -> None:
    """Serialize everything that spends one escrow account's ``merchant_payable`` (payout runs, set-offs)."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended('payable:' || :account, 0))"),
        {"account": escrow_account_id},
    )


async def _hold(session: AsyncSession, instruction: Instruction, payable: str, principal: str) -> None:
    instruction.hold_entry_id = await ledger.hold(
        session,
        ledger.Entry(
            instruction.escrow_account_id,
            instruction.kind,
            ledger.transfer(payable, "custody_cash", instruction.amount),
            refs={
                "instruction_id": instruction.id,
                **({"refund_id": instruction.refund_id} if instruction.refund_id else {}),
            },
            principal=principal,
        ),
    )
    session.add(instruction)


async def run_payouts(session: AsyncSession, principal: str, merchant_id: str | None = None) -> list[Instruction]:
    """One payout instruction per active escrow account for its available payable balance (none when zero)."""
    query = (
        select(EscrowAccount.id, Merchant.settlement_account_masked)
        .join(Merchant, Merchant.id == EscrowAccount.merchant_id)
        .where(EscrowAccount.status == "active")
        .order_by(EscrowAccount.id)
    )
    if merchant_id is not None:
        query = query.where(EscrowAccount.merchant_id == merchant_id)
    made = []
    for account_id, settlement in (await session.execute(query)).all():
        await lock_payable(session, account_id)
        available = (await ledger.balance(session, account_id, "merchant_payable")).available
        if available <= 0:
            continue
        instruction = Instruction(
            id=new_id("ins"),
            escrow_account_id=account_id,
            kind="payout",
            status="pending",
            amount=available,
            beneficiary=f"merchant settlement account {settlement}",
        )
        await _hold(session, instruction, "merchant_payable", principal)
        made.append(instruction)
    await session.flush()
    return made


async def instruct_refund(session: AsyncSession, refund: Refund, card: Card, principal: str) -> Instruction | None:
    """Order the bank to pay an approved refund back along the original payment (None when the bank owes nothing)."""
    amount = refund.from_custody + refund.set_off
    if amount == 0:
        return None
    instruction = Instruction(
        id=new_id("ins"),
        escrow_account_id=refund.escrow_account_id,
        kind="refund",
        status="pending",
        amount=amount,
        beneficiary=f"original payment {card.deposit_transaction_id} (reference {card.payment_reference})",
        refund_id=refund.id,
    )
    await _hold(session, instruction, "refund_payable", principal)
    refund.status = "instructed"
    await session.flush()
    return instruction


def _visible(principal: Principal, account: EscrowAccount) -> bool:
    return (
        principal.role == "regulator"
        or (principal.role == "bank" and account.bank_id == principal.id)
        or (principal.role == "merchant" and account.merchant_id == principal.id)
    )


async def get(session: AsyncSession, principal: Principal, instruction_id: str, *, lock: bool = False) -> Instruction:
    instruction = await session.get(Instruction, instruction_id)
    account = await session.get(EscrowAccount, instruction.escrow_account_id) if instruction else None
    if instruction is None or account is None or not _visible(principal, account):
        raise NotFound(f"no instruction {instruction_id}")
    if lock:  # only once it is known to be the caller's
        instruction = await session.get(Instruction, instruction_id, with_for_update=True, populate_existing=True)
        assert instruction is not None
    return instruction


async def list_visible(
    session: AsyncSession, principal: Principal, *, status: str | None, after: str | None, limit: int
) -> list[Instruction]:
    query = (
        select(Instruction)
        .join(EscrowAccount, EscrowAccount.id == Instruction.escrow_account_id)
        .order_by(Instruction.id)
        .limit(limit + 1)
    )
    if principal.role == "bank":
        query = query.where(EscrowAccount.bank_id == principal.id)
    elif principal.role == "merchant":
        query = query.where(EscrowAccount.merchant_id == principal.id)
    if status is not None:
        query = query.where(Instruction.status == status)
    if after is not None:
        query = query.where(Instruction.id > after)
    return list(await session.scalars(query))


async def report_executed(
    session: AsyncSession, principal: Principal, instruction_id: str, bank_transaction_id: str
) -> Instruction:
    instruction = await get(session, principal, instruction_id, lock=True)
    if instruction.status == "executed" and instruction.bank_transaction_id == bank_transaction_id:
        return instruction
    if instruction.status != "pending":
        raise InstructionSettled(
            f"instruction {instruction.id} is {instruction.status}"
            + (f" with transaction {instruction.bank_transaction_id}" if instruction.bank_transaction_id else "")
        )
    await ledger.post_pending(
        session,
        instruction.hold_entry_id,
        principal=principal.id,
        refs={"instruction_id": instruction.id, "bank_transaction_id": bank_transaction_id},
    )
    instruction.status = "executed"
    instruction.bank_transaction_id = bank_transaction_id
    instruction.reported_at = utcnow()
    if instruction.refund_id is not None:
        refund = await session.get(Refund, instruction.refund_id, with_for_update=True)
        assert refund is not None
        refund.status = "paid"
        refund.paid_at = instruction.reported_at
    await session.flush()
    return instruction


async def report_failed(session: AsyncSession, principal: Principal, instruction_id: str, reason: str) -> Instruction:
    instruction = await get(session, principal, instruction_id, lock=True)
    if instruction.status == "failed":
        return instruction
    if instruction.status != "pending":
        raise InstructionSettled(f"instruction {instruction.id} is {instruction.status}")
    await ledger.void_pending(
        session, instruction.hold_entry_id, principal=principal.id, refs={"instruction_id": instruction.id}
    )
    instruction.status = "failed"
    instruction.failure_reason = reason
    instruction.reported_at = utcnow()
    if instruction.refund_id is not None:
        refund = await session.get(Refund, instruction.refund_id, with_for_update=True)
        assert refund is not None
        refund.status = "approved"  # instructed again by the next run
    await session.flush()
    return instruction


async def reinstruct_refunds(session: AsyncSession, limit: int) -> int:
    """Approved refunds whose instruction failed get a new one."""
    rows = list(
        await session.scalars(
            select(Refund)
            .join(EscrowAccount, EscrowAccount.id == Refund.escrow_account_id)
            .where(Refund.status == "approved", EscrowAccount.status == "active")
            .order_by(Refund.id)
            .limit(limit)
            .with_for_update(of=Refund, skip_locked=True)
        )
    )
    for refund in rows:
        card = await session.get(Card, refund.card_id)
        assert card is not None
        await instruct_refund(session, refund, card, "system:refunds")
    return len(rows)
