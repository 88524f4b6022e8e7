"""Custodian banks: the regulator admits them; each gets a token and a request-signing secret, shown once."""

import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.auth.tokens import Principal, issue_token
from escrow.banks.schemas import BankCreate
from escrow.errors import Conflict, NotFound
from escrow.kit.crypto import Keyring
from escrow.kit.ids import new_id
from escrow.models import Bank


async def create(session: AsyncSession, keyring: Keyring, data: BankCreate) -> tuple[Bank, str, str]:
    signing_secret = f"ess_{secrets.token_urlsafe(32)}"
    bank_id = new_id("bnk")
    bank = Bank(
        id=bank_id,
        name=data.name,
        code=data.code,
        signing_algorithm=data.signing_algorithm,
        signing_secret_enc=keyring.encrypt(signing_secret, signing_secret_context(bank_id)),
    )
    session.add(bank)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(
            f"a bank with code {data.code} already exists",
            errors=[{"field": "code", "rule": "unique", "message": "already taken"}],
        ) from exc
    _, token = await issue_token(session, "bank", f"{data.name} API", principal_id=bank.id)
    return bank, token, signing_secret


def signing_secret_context(bank_id: str) -> str:
    return f"banks.signing_secret:{bank_id}"


async def get(session: AsyncSession, principal: Principal, bank_id: str) -> Bank:
    bank = await session.get(Bank, bank_id)
    if bank is None or (principal.role == "bank" and principal.id != bank_id):
        raise NotFound(f"no bank {bank_id}")
    return bank


async def list_all(session: AsyncSession) -> list[Bank]:
    return list(await session.scalars(select(Bank).order_by(Bank.created_at, Bank.id)))
