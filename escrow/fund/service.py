"""The first-compensation fund (先行赔付): one platform-wide fund with its own account at a bank.

Ledger book ``fund``: ``fund_cash`` (its bank balance, never below zero), ``fund_contributions`` (what was paid
in, by source), ``fund_payable`` (compensation owed to consumers, awaiting the bank) and one
``fund_claims:<escrow account>`` per closed merchant (what the fund paid for that merchant's consumers, the
claim it took over from them). Each payment the fund makes for a consumer moves, in the same transaction, the
consumer's claim in the merchant's book from ``refund_claims`` to ``fund_subrogation``, so the two books
mirror each other to the fen (``escrow verify`` checks it). A recovery lowers both.

The fund never goes below zero: a closure is planned against what is ``available`` (cash less holds, less the
fund shares of settlements under way); what it can't pay is owed, and paid in queue order (closure items by
id) whenever money comes in (a contribution or a recovery). All of it runs under one advisory lock.
"""

from collections.abc import Callable
from contextlib import AsyncExitStack

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from escrow import ledger
from escrow.auth.tokens import Principal
from escrow.errors import Conflict, FieldInvalid
from escrow.fund.schemas import ContributionCreate, FundBankAccount, RecoveryCreate
from escrow.kit.crypto import Keyring, mask_account_number
from escrow.kit.ids import new_id
from escrow.models import (
    Bank,
    Closure,
    ClosureItem,
    EscrowAccount,
    FundAccount,
    FundContribution,
    FundRecovery,
    Instruction,
)
from escrow.payouts.service import hold_entry

BOOK = ledger.FUND_BOOK


class FundNotReady(Conflict):
    code = "fund_not_ready"
    title = "The fund has no bank account"


def claims_code(escrow_account_id: str) -> str:
    return f"fund_claims:{escrow_account_id}"


async def lock(session: AsyncSession) -> None:
    """Serialize everything that commits the fund's money."""
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended('fund', 0))"))


async def _ensure_book(session: AsyncSession) -> None:
    await ledger.open_book(session, BOOK)


async def _cash(session: AsyncSession) -> ledger.Balance | None:
    try:
        return await ledger.balance(session, BOOK, "fund_cash")
    except ledger.UnknownAccount:
        return None


async def available(session: AsyncSession) -> int:
    """What the fund can still commit: cash not held, less the fund shares of settlements not yet executed."""
    cash = await _cash(session)
    if cash is None:
        return 0
    reserved = await session.scalar(
        select(func.coalesce(func.sum(ClosureItem.fund_paid), 0))
        .join(Closure, Closure.id == ClosureItem.closure_id)
        .where(Closure.status == "settling", ClosureItem.status == "planned")
    )
    return max(0, cash.available - int(reserved or 0))


async def bank_id(session: AsyncSession) -> str:
    account = await session.get(FundAccount, 1)
    if account is None:
        raise FundNotReady("set the fund's bank account first (PUT /v1/fund/bank-account)")
    return account.bank_id


def pay_consumer(
    entries: list[ledger.Entry],
    instruct: Callable[[Instruction, str], None],
    item: ClosureItem,
    amount: int,
    fund_bank_id: str,
    principal: str,
) -> None:
    """The fund pays ``amount`` of a consumer's claim: it owes it (``fund_payable``) and holds the claim on the
    merchant (``fund_claims:<escrow account>``); a bank instruction from the fund's account follows."""
    refs = {"closure_id": item.closure_id, "closure_item_id": item.id, "consumer_id": item.consumer_id}
    entries.append(
        ledger.Entry(
            BOOK,
            "fund_payout",
            ledger.transfer(claims_code(item.escrow_account_id), "fund_payable", amount),
            refs,
            principal,
        )
    )
    instruct(
        Instruction(
            id=new_id("ins"),
            escrow_account_id=None,
            book=BOOK,
            bank_id=fund_bank_id,
            kind="fund_payout",
            status="pending",
            amount=amount,
            beneficiary=f"consumer {item.consumer_id} (closure {item.closure_id})",
            closure_item_id=item.id,
        ),
        "fund_payable",
    )


# --- the fund's account, contributions, recoveries -----------------------------------------------------


async def set_bank_account(session: AsyncSession, keyring: Keyring, data: FundBankAccount) -> FundAccount:
    if await session.get(Bank, data.bank_id) is None:
        raise FieldInvalid("bank_id", f"no bank {data.bank_id}")
    account = await session.get(FundAccount, 1, with_for_update=True)
    if account is None:
        account = FundAccount(id=1)
        session.add(account)
    account.bank_id = data.bank_id
    account.bank_account_enc = keyring.encrypt(data.bank_account_number, "fund_account.bank_account")
    account.bank_account_masked = mask_account_number(data.bank_account_number)
    account.updated_at = func.now()
    await _ensure_book(session)
    await session.flush()
    await session.refresh(account)
    return account


async def contribute(
    session: AsyncSession, principal: Principal, data: ContributionCreate, owed_limit: int
) -> tuple[FundContribution, int]:
    """Money paid into the fund, with its source; owed compensation is paid out of it at once, in order.
    Idempotent on the bank's transaction id."""
    earlier = await session.scalar(
        select(FundContribution).where(FundContribution.bank_transaction_id == data.bank_transaction_id)
    )
    if earlier is not None:
        if (earlier.amount, earlier.source_kind, earlier.source_name) != (
            data.amount.amount,
            data.source_kind,
            data.source_name,
        ):
            raise Conflict(f"bank transaction {data.bank_transaction_id} was recorded as contribution {earlier.id}")
        return earlier, 0
    if data.amount.amount <= 0:
        raise FieldInvalid("amount", "must be more than 0 fen")
    await _ensure_book(session)
    contribution_id = new_id("fct")
    entry_id = await ledger.post(
        session,
        ledger.Entry(
            BOOK,
            "fund_contribution",
            ledger.transfer("fund_cash", "fund_contributions", data.amount.amount),
            refs={
                "contribution_id": contribution_id,
                "source_kind": data.source_kind,
                "bank_transaction_id": data.bank_transaction_id,
            },
            principal=principal.id,
            idempotency_ref=f"contribution:{data.bank_transaction_id}",
        ),
    )
    contribution = FundContribution(
        id=contribution_id,
        source_kind=data.source_kind,
        source_name=data.source_name,
        amount=data.amount.amount,
        bank_transaction_id=data.bank_transaction_id,
        entry_id=entry_id,
    )
    session.add(contribution)
    await session.flush()
    await session.refresh(contribution)
    return contribution, await pay_owed(session, principal.id, owed_limit)


async def recover(
    session: AsyncSession, principal: Principal, data: RecoveryCreate, owed_limit: int
) -> tuple[FundRecovery, int]:
    """A subrogated claim (partly) paid back to the fund: both books' claims go down by the amount."""
    earlier = await session.scalar(
        select(FundRecovery).where(FundRecovery.bank_transaction_id == data.bank_transaction_id)
    )
    if earlier is not None:
        if (earlier.amount, earlier.escrow_account_id) != (data.amount.amount, data.escrow_account_id):
            raise Conflict(f"bank transaction {data.bank_transaction_id} was recorded as recovery {earlier.id}")
        return earlier, 0
    if await session.get(EscrowAccount, data.escrow_account_id) is None:
        raise FieldInvalid("escrow_account_id", f"no escrow account {data.escrow_account_id}")
    await lock(session)
    try:
        outstanding = (await ledger.balance(session, BOOK, claims_code(data.escrow_account_id))).posted
    except ledger.UnknownAccount:
        outstanding = 0
    if not 0 < data.amount.amount <= outstanding:
        raise FieldInvalid("amount", f"the fund's claim on {data.escrow_account_id} is {outstanding} fen")
    recovery = FundRecovery(
        id=new_id("frc"),
        escrow_account_id=data.escrow_account_id,
        amount=data.amount.amount,
        bank_transaction_id=data.bank_transaction_id,
        note=data.note,
    )
    refs = {"recovery_id": recovery.id, "bank_transaction_id": data.bank_transaction_id}
    async with ledger.settlement_window(session, data.escrow_account_id):
        await ledger.post_many(
            session,
            [
                ledger.Entry(
                    BOOK,
                    "fund_recovery",
                    ledger.transfer("fund_cash", claims_code(data.escrow_account_id), data.amount.amount),
                    refs,
                    principal.id,
                ),
                ledger.Entry(
                    data.escrow_account_id,
                    "fund_recovery",
                    ledger.transfer("fund_subrogation", "merchant_obligation", data.amount.amount),
                    refs,
                    principal.id,
                ),
            ],
        )
    session.add(recovery)
    await session.flush()
    await session.refresh(recovery)
    return recovery, await pay_owed(session, principal.id, owed_limit)


async def pay_owed(session: AsyncSession, principal: str, limit: int) -> int:
    """Pay what the fund owes consumers of settled items, oldest first, as far as its money goes. Returns the
    number of payments made (a consumer's owed amount may be paid in several)."""
    await lock(session)
    money = await available(session)
    if money <= 0:
        return 0
    items = list(
        await session.scalars(
            select(ClosureItem)
            .where(ClosureItem.fund_owed_paid < ClosureItem.fund_owed, ClosureItem.status == "done")
            .order_by(ClosureItem.id)
            .limit(limit)
            .with_for_update()
        )
    )
    if not items:
        return 0
    fund_bank = await bank_id(session)
    entries: list[ledger.Entry] = []
    holds: list[tuple[Instruction, str]] = []
    paid = 0
    for item in items:
        if money <= 0:
            break
        amount = min(item.fund_owed - item.fund_owed_paid, money)
        refs = {"closure_item_id": item.id, "consumer_id": item.consumer_id}
        entries.append(
            ledger.Entry(
                item.escrow_account_id,
                "fund_subrogation",
                ledger.transfer("refund_claims", "fund_subrogation", amount),
                refs,
                principal,
            )
        )
        pay_consumer(entries, lambda i, p: holds.append((i, p)), item, amount, fund_bank, principal)
        item.fund_owed_paid += amount
        money -= amount
        paid += 1
    books = sorted({i.escrow_account_id for i in items[:paid]})
    for book in books:
        await ledger.open_account(session, BOOK, claims_code(book))
    async with AsyncExitStack() as windows:
        for book in books:
            await windows.enter_async_context(ledger.settlement_window(session, book))
        await ledger.post_many(session, entries)
    hold_ids = await ledger.post_many(session, [hold_entry(i, p, principal) for i, p in holds], pending=True)
    for (instruction, _), hold_id in zip(holds, hold_ids, strict=True):
        instruction.hold_entry_id = hold_id
        session.add(instruction)
    await session.flush()
    return paid


# --- reading -------------------------------------------------------------------------------------------


async def overview(session: AsyncSession) -> dict:
    cash = await _cash(session)
    if cash is None:
        contributions = payable = claims = 0
    else:
        contributions = (await ledger.balance(session, BOOK, "fund_contributions")).posted
        payable = (await ledger.balance(session, BOOK, "fund_payable")).posted
        claims = int(
            await session.scalar(
                text(
                    "SELECT coalesce(sum(a.posted_debits - a.posted_credits"
                    " + coalesce((SELECT sum(s.posted_debits - s.posted_credits) FROM ledger_account_slots s"
                    "             WHERE s.account_id = a.id), 0)), 0)"
                    " FROM ledger_accounts a WHERE a.escrow_account_id = :book AND a.code LIKE 'fund_claims:%'"
                ),
                {"book": BOOK},
            )
            or 0
        )
    owed = (
        await session.execute(
            select(func.coalesce(func.sum(ClosureItem.fund_owed - ClosureItem.fund_owed_paid), 0), func.count()).where(
                ClosureItem.fund_owed_paid < ClosureItem.fund_owed
            )
        )
    ).one()
    return {
        "cash": cash.posted if cash else 0,
        "available": await available(session),
        "contributions": contributions,
        "payable": payable,
        "claims_outstanding": claims,
        "owed_to_consumers": int(owed[0]),
        "owed_items": int(owed[1]),
        "bank_account": await session.get(FundAccount, 1),
    }


async def claims(session: AsyncSession) -> list[dict]:
    """Per escrow account: what the fund paid for its consumers, what was recovered, what is outstanding."""
    rows = await session.execute(
        text(
            "SELECT split_part(a.code, ':', 2) AS account, e.merchant_id,"
            " coalesce(sum(p.amount) FILTER (WHERE p.side = 'D' AND p.kind = 'posted'), 0),"
            " coalesce(sum(p.amount) FILTER (WHERE p.side = 'C' AND p.kind = 'posted'), 0)"
            " FROM ledger_accounts a JOIN escrow_accounts e ON e.id = split_part(a.code, ':', 2)"
            " LEFT JOIN ledger_postings p ON p.account_id = a.id"
            " WHERE a.escrow_account_id = :book AND a.code LIKE 'fund_claims:%'"
            " GROUP BY 1, 2 ORDER BY 1"
        ),
        {"book": BOOK},
    )
    return [
        {"escrow_account_id": a, "merchant_id": m, "paid": int(d), "recovered": int(c), "outstanding": int(d) - int(c)}
        for a, m, d, c in rows
    ]


async def contributions(session: AsyncSession, limit: int) -> list[FundContribution]:
    return list(
        await session.scalars(select(FundContribution).order_by(FundContribution.received_at.desc()).limit(limit))
    )
