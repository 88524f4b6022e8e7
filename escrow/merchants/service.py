"""Merchants: onboarded by the regulator with a verified credit code; ``active ⇄ suspended`` here, closing later."""

from datetime import date

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.auth.tokens import Principal, issue_token
from escrow.errors import Conflict, NotFound
from escrow.kit.crypto import Keyring, mask_account_number
from escrow.kit.ids import new_id
from escrow.merchants.schemas import MerchantCreate, MerchantStatusChange
from escrow.models import Merchant

# Moves the regulator may make by hand; closing and closed belong to the closure process.
TRANSITIONS = {("active", "suspended"), ("suspended", "active")}


class InvalidTransition(Conflict):
    code = "invalid_transition"
    title = "Status change not allowed"


async def create(session: AsyncSession, keyring: Keyring, data: MerchantCreate) -> tuple[Merchant, str]:
    merchant_id = new_id("mer")
    merchant = Merchant(
        id=merchant_id,
        name=data.name,
        category=data.category,
        uscc=data.uscc,
        credit_rating=data.credit_rating,
        settlement_account_enc=keyring.encrypt(data.settlement_account, f"merchants.settlement_account:{merchant_id}"),
        settlement_account_masked=mask_account_number(data.settlement_account),
        status="active",
        opened_on=data.opened_on or date.today(),  # noqa: DTZ011 - a calendar date, not an instant
        region=data.region,
    )
    session.add(merchant)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(
            "a merchant with this unified social credit code is already onboarded",
            errors=[{"field": "uscc", "rule": "unique", "message": "already onboarded"}],
        ) from exc
    _, token = await issue_token(session, "merchant", f"{data.name} API", principal_id=merchant.id)
    return merchant, token


async def get(session: AsyncSession, principal: Principal, merchant_id: str, *, lock: bool = False) -> Merchant:
    merchant = await session.get(Merchant, merchant_id, with_for_update={"key_share": True} if lock else False)
    if merchant is None or (principal.role == "merchant" and principal.id != merchant_id):
        raise NotFound(f"no merchant {merchant_id}")
    return merchant


async def list_all(session: AsyncSession) -> list[Merchant]:
    return list(await session.scalars(select(Merchant).order_by(Merchant.created_at, Merchant.id)))


async def change_status(
    session: AsyncSession, principal: Principal, merchant_id: str, change: MerchantStatusChange
) -> Merchant:
    merchant = await get(session, principal, merchant_id, lock=True)
    if (merchant.status, change.status) not in TRANSITIONS:
        raise InvalidTransition(f"a merchant cannot go from {merchant.status} to {change.status} by hand")
    merchant.status = change.status
    await session.flush()
    return merchant


async def set_custody_model(session: AsyncSession, principal: Principal, merchant_id: str, model: str) -> Merchant:
    """Move a merchant between full custody and the ratio model; cards already sold keep their ratio."""
    merchant = await get(session, principal, merchant_id, lock=True)
    merchant.custody_model = model
    await session.flush()
    return merchant


async def set_region(session: AsyncSession, principal: Principal, merchant_id: str, region: str) -> Merchant:
    """Set the county-level division a merchant trades in (validated by the request model)."""
    merchant = await get(session, principal, merchant_id, lock=True)
    merchant.region = region
    await session.flush()
    return merchant
