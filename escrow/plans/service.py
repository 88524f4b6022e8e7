"""Plans: a merchant defines what it sells; a plan is immutable once made, and retired rather than changed."""

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.auth.tokens import Principal
from escrow.config import Settings
from escrow.errors import Conflict, NotFound
from escrow.kit.ids import new_id
from escrow.models import Merchant, Plan
from escrow.plans import rules
from escrow.plans.schemas import PlanCreate, check_fields


async def create(session: AsyncSession, settings: Settings, principal: Principal, data: PlanCreate) -> Plan:
    check_fields(data)
    merchant = await session.get(Merchant, principal.id)
    if merchant is None or merchant.status != "active":
        raise Conflict("only an active merchant can create plans")
    units = {"sessions": data.sessions, "stored_value": data.face_value.amount if data.face_value else None}.get(
        data.kind, data.days
    )
    plan = Plan(
        id=new_id("pln"),
        merchant_id=merchant.id,
        name=data.name,
        kind=data.kind,
        price=data.price.amount,
        units=units,
        list_unit_price=data.list_price_per_session.amount if data.list_price_per_session else None,
        validity_days=data.validity_days,
        terms=data.terms,
        active=True,
    )
    rules.check(settings, merchant.category, plan)
    session.add(plan)
    await session.flush()
    await session.refresh(plan)
    return plan


async def get(session: AsyncSession, principal: Principal, plan_id: str) -> Plan:
    plan = await session.get(Plan, plan_id)
    if plan is None or (principal.role == "merchant" and plan.merchant_id != principal.id):
        raise NotFound(f"no plan {plan_id}")
    return plan


async def list_visible(session: AsyncSession, principal: Principal) -> list[Plan]:
    query = select(Plan).order_by(Plan.created_at, Plan.id)
    if principal.role == "merchant":
        query = query.where(Plan.merchant_id == principal.id)
    return list(await session.scalars(query))


async def retire(session: AsyncSession, principal: Principal, plan_id: str) -> Plan:
    """Stop selling a plan; cards already sold keep their terms."""
    plan = await get(session, principal, plan_id)
    plan.active = False
    await session.flush()
    return plan
