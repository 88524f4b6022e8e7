"""Bank instructions: payouts of released money to the merchant (entry 3), refunds to consumers (entry 4), and
a closure's transfers to a successor's escrow account and first-compensation payouts from the fund's account.

Each instruction holds its amount on the ledger of its book (pending Dr payable, Cr cash) from the moment it is
made; the bank's report of execution posts the hold, a failure voids it so the next run tries again. The bank
may first say it took the instruction (``sent``): from then on a closure can no longer cancel it. Reports are
idempotent: the same report again answers as before, a contradicting one is refused. A report is a fact about
money that already moved, so it is recorded even in a frozen escrow account (``ledger.settlement_window``).
"""

from datetime import datetime

from sqlalchemy import or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from escrow import ledger, notices
from escrow.auth.tokens import Principal
from escrow.cards import service as cards
from escrow.errors import Conflict, NotFound
from escrow.kit.clock import utcnow
from escrow.kit.ids import new_id
from escrow.models import Card, ClosureItem, EscrowAccount, Instruction, Merchant, Refund

OPEN_STATES = ("pending", "sent")  # the bank has yet to report
PAYABLE = {  # the account each kind of instruction pays out of
    "payout": "merchant_payable",
    "refund": "refund_payable",
    "transfer": "transfer_payable",
    "fund_payout": "fund_payable",
}
CLOSURE_FREEZE = "closure "  # an escrow account's freeze_reason when a closure froze it


class InstructionSettled(Conflict):
    code = "instruction_settled"
    title = "The instruction was already reported otherwise"


async def lock_payable(session: AsyncSession, escrow_account_id: str) -> None:
    """Serialize everything that spends one escrow account's ``merchant_payable`` (payout runs, set-offs)."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended('payable:' || :account, 0))"),
        {"account": escrow_account_id},
    )


def hold_entry(instruction: Instruction, payable: str, principal: str) -> ledger.Entry:
    """The pending ledger entry an instruction holds its amount with (Dr payable, Cr the book's cash)."""
    cash = "fund_cash" if instruction.book == ledger.FUND_BOOK else "custody_cash"
    return ledger.Entry(
        instruction.book,
        instruction.kind,
        ledger.transfer(payable, cash, instruction.amount),
        refs={
            "instruction_id": instruction.id,
            **({"refund_id": instruction.refund_id} if instruction.refund_id else {}),
        },
        principal=principal,
    )


async def _hold(session: AsyncSession, instruction: Instruction, payable: str, principal: str) -> None:
    instruction.hold_entry_id = await ledger.hold(session, hold_entry(instruction, payable, principal))
    session.add(instruction)


async def run_payouts(session: AsyncSession, principal: str, merchant_id: str | None = None) -> list[Instruction]:
    """One payout instruction per active escrow account for its available payable balance (none when zero)."""
    query = (
        select(EscrowAccount.id, EscrowAccount.bank_id, Merchant.settlement_account_masked)
        .join(Merchant, Merchant.id == EscrowAccount.merchant_id)
        .where(EscrowAccount.status == "active")
        .order_by(EscrowAccount.id)
    )
    if merchant_id is not None:
        query = query.where(EscrowAccount.merchant_id == merchant_id)
    made = []
    for account_id, bank_id, settlement in (await session.execute(query)).all():
        instruction = await pay_out_payable(session, account_id, bank_id, settlement, principal)
        if instruction is not None:
            made.append(instruction)
    await session.flush()
    return made


async def pay_out_payable(
    session: AsyncSession, account_id: str, bank_id: str, settlement_masked: str, principal: str
) -> Instruction | None:
    """An instruction paying an escrow account's available ``merchant_payable`` to the merchant (None if zero)."""
    await lock_payable(session, account_id)
    available = (await ledger.balance(session, account_id, "merchant_payable")).available
    if available <= 0:
        return None
    instruction = Instruction(
        id=new_id("ins"),
        escrow_account_id=account_id,
        book=account_id,
        bank_id=bank_id,
        kind="payout",
        status="pending",
        amount=available,
        beneficiary=f"merchant settlement account {settlement_masked}",
    )
    await _hold(session, instruction, "merchant_payable", principal)
    return instruction


async def instruct_refund(session: AsyncSession, refund: Refund, card: Card, principal: str) -> Instruction | None:
    """Order the bank to pay an approved refund back along the original payment (None when the bank owes nothing)."""
    amount = refund.from_custody + refund.set_off
    if amount == 0:
        return None
    account = await session.get(EscrowAccount, refund.escrow_account_id)
    assert account is not None
    instruction = Instruction(
        id=new_id("ins"),
        escrow_account_id=refund.escrow_account_id,
        book=refund.escrow_account_id,
        bank_id=account.bank_id,
        kind="refund",
        status="pending",
        amount=amount,
        beneficiary=f"original payment {card.deposit_transaction_id} (reference {card.payment_reference})",
        refund_id=refund.id,
    )
    if refund.cause == "closure":  # paid again for the closure item it pays (see item_paid)
        instruction.closure_item_id = await session.scalar(
            select(ClosureItem.id).where(ClosureItem.refund_id == refund.id, ClosureItem.kind == "card")
        )
    async with ledger.settlement_window(session, instruction.book):
        await _hold(session, instruction, "refund_payable", principal)
    refund.status = "instructed"
    await session.flush()
    return instruction


async def _visible(session: AsyncSession, principal: Principal, instruction: Instruction) -> bool:
    if principal.role == "regulator":
        return True
    if principal.role == "bank":
        return instruction.bank_id == principal.id
    if principal.role == "merchant" and instruction.escrow_account_id is not None:
        account = await session.get(EscrowAccount, instruction.escrow_account_id)
        return account is not None and account.merchant_id == principal.id
    return False


async def get(session: AsyncSession, principal: Principal, instruction_id: str, *, lock: bool = False) -> Instruction:
    instruction = await session.get(Instruction, instruction_id)
    if instruction is None or not await _visible(session, principal, instruction):
        raise NotFound(f"no instruction {instruction_id}")
    if lock:  # only once it is known to be the caller's
        instruction = await session.get(Instruction, instruction_id, with_for_update=True, populate_existing=True)
        assert instruction is not None
    return instruction


async def list_visible(
    session: AsyncSession, principal: Principal, *, status: str | None, after: str | None, limit: int
) -> list[Instruction]:
    query = select(Instruction).order_by(Instruction.id).limit(limit + 1)
    if principal.role == "bank":
        query = query.where(Instruction.bank_id == principal.id)
    elif principal.role == "merchant":
        query = query.join(EscrowAccount, EscrowAccount.id == Instruction.escrow_account_id).where(
            EscrowAccount.merchant_id == principal.id
        )
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
    if instruction.status not in OPEN_STATES:
        raise InstructionSettled(
            f"instruction {instruction.id} is {instruction.status}"
            + (f" with transaction {instruction.bank_transaction_id}" if instruction.bank_transaction_id else "")
        )
    if instruction.closure_item_id is not None:
        # the item first, as the settlement and the fund's payments lock it (before the ledger): two parts of one
        # item reported at once are counted one after the other, so the last one sees the item paid
        await session.execute(
            select(ClosureItem.id).where(ClosureItem.id == instruction.closure_item_id).with_for_update()
        )
    async with ledger.settlement_window(session, instruction.book):
        await ledger.post_pending(
            session,
            instruction.hold_entry_id,
            principal=principal.id,
            refs={"instruction_id": instruction.id, "bank_transaction_id": bank_transaction_id},
        )
    if instruction.kind == "transfer" and instruction.target_card_id is not None:
        await cards.activate_transferred(session, instruction.target_card_id, instruction.amount, bank_transaction_id)
    instruction.status = "executed"
    instruction.bank_transaction_id = bank_transaction_id
    instruction.reported_at = utcnow()
    if instruction.refund_id is not None:
        refund = await session.get(Refund, instruction.refund_id, with_for_update=True)
        assert refund is not None
        if refund.cause != "closure":  # a closure's refund is paid when all of its item is (item_paid)
            refund.status = "paid"
            refund.paid_at = instruction.reported_at
            await session.flush()
            paid = {"amount": refund.from_custody + refund.set_off}
            await notices.add(session, notices.REFUND_PAID, refund.card_id, paid, refund.id)
    await session.flush()
    if instruction.closure_item_id is not None:
        await item_paid(session, instruction.closure_item_id, instruction.reported_at)
    return instruction


# A closure item is paid when instructions for exactly what the banks are to pay for it — custody, set-off, the
# fund's payment now and what it owed and paid later, a transfer — were executed (failed ones were replaced); then
# its consumer's closure refund is paid too.
_ITEM_PAID = text(
    "WITH item AS (UPDATE closure_items i SET paid_at = CAST(:now AS timestamptz)"
    "   WHERE i.id = :item AND i.status = 'done' AND i.paid_at IS NULL AND i.fund_owed_paid = i.fund_owed"
    "     AND i.from_custody + i.set_off + i.fund_paid + i.fund_owed + i.transferred"
    "       = (SELECT coalesce(sum(x.amount), 0) FROM instructions x"
    "          WHERE x.closure_item_id = i.id AND x.status = 'executed')"
    "   RETURNING i.kind, i.decision, i.refund_id)"
    " UPDATE refunds r SET status = 'paid', paid_at = CAST(:now AS timestamptz) FROM item"
    " WHERE item.kind = 'card' AND item.decision = 'refund' AND r.id = item.refund_id AND r.cause = 'closure'"
)


async def item_paid(session: AsyncSession, closure_item_id: int, now: datetime | None) -> None:
    """Mark a closure item (and its closure refund) paid if every part of it was executed (the item is locked)."""
    await session.execute(_ITEM_PAID, {"item": closure_item_id, "now": now or utcnow()})
    await session.flush()


async def report_failed(session: AsyncSession, principal: Principal, instruction_id: str, reason: str) -> Instruction:
    instruction = await get(session, principal, instruction_id, lock=True)
    if instruction.status == "failed":
        return instruction
    if instruction.status not in OPEN_STATES:
        raise InstructionSettled(f"instruction {instruction.id} is {instruction.status}")
    async with ledger.settlement_window(session, instruction.book):
        await ledger.void_pending(
            session, instruction.hold_entry_id, principal=principal.id, refs={"instruction_id": instruction.id}
        )
    instruction.status = "failed"
    instruction.failure_reason = reason
    instruction.reported_at = utcnow()
    if (
        instruction.kind in ("transfer", "fund_payout")
        or (instruction.kind == "refund" and instruction.refund_id is None)  # a closure's set-off of an old claim
        or (instruction.kind == "payout" and await _closed(session, instruction.book))
    ):
        # no payout run or job makes these again. (A payout failing while a closure is under way is not
        # replaced: its money stays in merchant_payable, for the set-off and the surplus.)
        await _replace(session, instruction, principal.id)
    if instruction.refund_id is not None:
        refund = await session.get(Refund, instruction.refund_id, with_for_update=True)
        assert refund is not None
        refund.status = "approved"  # instructed again by the next run
    await session.flush()
    return instruction


async def _closed(session: AsyncSession, book: str) -> bool:
    """The escrow account was closed by a confirmed closure (its surplus payout is the last one it makes)."""
    account = await session.get(EscrowAccount, book)
    return account is not None and account.status == "closed"


async def _replace(session: AsyncSession, failed: Instruction, principal: str) -> Instruction:
    """A new instruction for the same payment as a failed one (the failed one's hold was released)."""
    again = Instruction(
        id=new_id("ins"),
        escrow_account_id=failed.escrow_account_id,
        book=failed.book,
        bank_id=failed.bank_id,
        kind=failed.kind,
        status="pending",
        amount=failed.amount,
        beneficiary=failed.beneficiary,
        closure_item_id=failed.closure_item_id,
        target_card_id=failed.target_card_id,
    )
    async with ledger.settlement_window(session, again.book):
        await _hold(session, again, PAYABLE[again.kind], principal)
    return again


async def report_sent(session: AsyncSession, principal: Principal, instruction_id: str) -> Instruction:
    """The bank took the instruction: it will report it executed or failed, and it can no longer be cancelled."""
    instruction = await get(session, principal, instruction_id, lock=True)
    if instruction.status == "sent":
        return instruction
    if instruction.status != "pending":
        raise InstructionSettled(f"instruction {instruction.id} is {instruction.status}")
    instruction.status = "sent"
    instruction.sent_at = utcnow()
    await session.flush()
    return instruction


async def cancel_unsent_payouts(session: AsyncSession, account_id: str, principal: str) -> int:
    """Withdraw the payouts the bank has not taken yet (a closure's freeze): their holds are released."""
    rows = list(
        await session.scalars(
            select(Instruction)
            .where(
                Instruction.escrow_account_id == account_id,
                Instruction.kind == "payout",
                Instruction.status == "pending",
            )
            .order_by(Instruction.id)
            .with_for_update()
        )
    )
    for instruction in rows:
        await ledger.void_pending(
            session, instruction.hold_entry_id, principal=principal, refs={"instruction_id": instruction.id}
        )
        instruction.status = "cancelled"
        instruction.reported_at = utcnow()
    await session.flush()
    return len(rows)


async def reinstruct_refunds(session: AsyncSession, limit: int) -> int:
    """Approved refunds whose instruction failed get a new one."""
    rows = list(
        await session.scalars(
            select(Refund)
            .join(EscrowAccount, EscrowAccount.id == Refund.escrow_account_id)
            # active accounts, and accounts frozen by a closure (whose consumers are being paid back)
            .where(
                Refund.status == "approved",
                or_(EscrowAccount.status == "active", EscrowAccount.freeze_reason.startswith(CLOSURE_FREEZE)),
            )
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
