"""Escrow accounts: a merchant applies at a bank (``pending``), the bank activates or rejects it, the regulator
freezes and unfreezes it; activation opens its ledger book with the accounts of domain.md §4."""

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from escrow import ledger
from escrow.auth.tokens import Principal
from escrow.errors import Conflict, FieldInvalid, NotFound
from escrow.kit.crypto import Keyring, mask_account_number
from escrow.kit.ids import new_id
from escrow.models import Bank, EscrowAccount, Merchant
from escrow.payouts.service import CLOSURE_FREEZE


class InvalidState(Conflict):
    code = "invalid_state"
    title = "Not possible in the escrow account's state"


def _visible(principal: Principal, account: EscrowAccount) -> bool:
    return (
        principal.role == "regulator"
        or (principal.role == "merchant" and account.merchant_id == principal.id)
        or (principal.role == "bank" and account.bank_id == principal.id)
    )


async def get(session: AsyncSession, principal: Principal, account_id: str, *, lock: bool = False) -> EscrowAccount:
    account = await session.get(EscrowAccount, account_id, with_for_update={"key_share": True} if lock else False)
    if account is None or not _visible(principal, account):
        raise NotFound(f"no escrow account {account_id}")
    return account


async def list_visible(session: AsyncSession, principal: Principal) -> list[EscrowAccount]:
    query = select(EscrowAccount).order_by(EscrowAccount.created_at, EscrowAccount.id)
    if principal.role == "merchant":
        query = query.where(EscrowAccount.merchant_id == principal.id)
    elif principal.role == "bank":
        query = query.where(EscrowAccount.bank_id == principal.id)
    return list(await session.scalars(query))


async def apply(session: AsyncSession, principal: Principal, bank_id: str) -> EscrowAccount:
    merchant = await session.get(Merchant, principal.id)
    if merchant is None or merchant.status != "active":
        raise InvalidState("only an active merchant can open an escrow account")
    if await session.get(Bank, bank_id) is None:
        raise FieldInvalid("bank_id", f"no bank {bank_id}")
    account = EscrowAccount(id=new_id("esc"), merchant_id=merchant.id, bank_id=bank_id, status="pending")
    session.add(account)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict("this merchant already has an open escrow account at this bank") from exc
    return account


def _require(account: EscrowAccount, *states: str) -> None:
    if account.status not in states:
        raise InvalidState(f"escrow account {account.id} is {account.status}, not {' or '.join(states)}")


async def activate(
    session: AsyncSession, keyring: Keyring, principal: Principal, account_id: str, bank_account_number: str
) -> EscrowAccount:
    account = await get(session, principal, account_id, lock=True)
    _require(account, "pending")
    account.status = "active"
    account.bank_account_enc = keyring.encrypt(bank_account_number, f"escrow_accounts.bank_account:{account.id}")
    account.bank_account_masked = mask_account_number(bank_account_number)
    account.activated_at = func.now()
    await ledger.open_book(session, account.id)
    await session.flush()
    await session.refresh(account)
    return account


async def reject(session: AsyncSession, principal: Principal, account_id: str, reason: str) -> EscrowAccount:
    account = await get(session, principal, account_id, lock=True)
    _require(account, "pending")
    account.status = "rejected"
    account.rejection_reason = reason
    await session.flush()
    return account


async def freeze(session: AsyncSession, principal: Principal, account_id: str, reason: str) -> EscrowAccount:
    account = await get(session, principal, account_id, lock=True)
    _require(account, "active")
    account.status = "frozen"
    account.freeze_reason = reason
    await ledger.freeze_book(session, account.id, "all")
    await session.flush()
    return account


async def unfreeze(session: AsyncSession, principal: Principal, account_id: str) -> EscrowAccount:
    account = await get(session, principal, account_id, lock=True)
    _require(account, "frozen")
    if account.freeze_reason and account.freeze_reason.startswith(CLOSURE_FREEZE):
        raise InvalidState(f"escrow account {account.id} is frozen by a closure ({account.freeze_reason})")
    account.status = "active"
    account.freeze_reason = None
    await ledger.freeze_book(session, account.id, "none")
    await session.flush()
    return account
