"""Public disclosure (公示, issue #14 §4): what anyone may check about a merchant before paying.

Read-only and anonymous. It tells only what a business licence or the regulator's own findings would: the
merchant's name, code, category and status; whether its prepaid money is in bank custody (an escrow account the
bank activated), where, and the custody ratio a card sold now gets (the same rule cards are sold with,
``escrow.cards.service.custody_ratio``); its credit rating; white-list status (``escrow.credit.service``, as
read now); its closure; and complaints upheld or partly upheld in the last year, counted by category. Never a
consumer, a card, an amount or a complaint's text.
"""

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from escrow import db
from escrow.cards.service import custody_ratio
from escrow.config import Settings
from escrow.credit.service import standings
from escrow.disclosure.schemas import PublicClosure, PublicComplaints, PublicCustody, PublicMerchant
from escrow.errors import FieldInvalid, NotFound
from escrow.kit.clock import business_date, utcnow
from escrow.kit.pagination import decode_cursor
from escrow.kit.uscc import LENGTH as USCC_LENGTH
from escrow.models import Merchant

COMPLAINTS_WINDOW_DAYS = 365

# Per merchant: custodian banks (escrow accounts the bank activated and not closed), the closure, and upheld
# complaints of the window by outcome and category; one statement for the whole page.
_FACTS = (
    "SELECT m.id,"
    "  (SELECT coalesce(array_agg(DISTINCT b.name ORDER BY b.name), '{}') FROM escrow_accounts a"
    "     JOIN banks b ON b.id = a.bank_id WHERE a.merchant_id = m.id AND a.status IN ('active', 'frozen')) AS banks,"
    "  c.mode AS closure_mode, c.status AS closure_status, c.effective_on AS closure_effective_on,"
    "  (SELECT coalesce(jsonb_agg(jsonb_build_object('outcome', x.outcome, 'category', x.category, 'n', x.n)),"
    "          '[]'::jsonb)"
    "     FROM (SELECT k.outcome, k.category, count(*) AS n FROM complaints k"
    "           WHERE k.merchant_id = m.id AND k.outcome IN ('upheld', 'partly_upheld') AND k.mediated_at >= $2"
    "           GROUP BY k.outcome, k.category) x) AS complaints"
    " FROM merchants m LEFT JOIN closures c ON c.merchant_id = m.id WHERE m.id = ANY($1::text[])"
)


def _loaded(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def _disclose(
    session: AsyncSession, settings: Settings, merchants: list[Merchant], now: datetime
) -> list[PublicMerchant]:
    since = now - timedelta(days=COMPLAINTS_WINDOW_DAYS)
    facts = {row["id"]: row for row in await db.fetch(session, _FACTS, [m.id for m in merchants], since)}
    credit = await standings(session, settings, merchants, now)
    out = []
    for m in merchants:
        f = facts[m.id]
        counts = {"upheld": 0, "partly_upheld": 0}
        by_category: dict[str, int] = {}
        for item in _loaded(f["complaints"]):
            counts[item["outcome"]] += item["n"]
            by_category[item["category"]] = by_category.get(item["category"], 0) + item["n"]
        closure = (
            PublicClosure(mode=f["closure_mode"], status=f["closure_status"], effective_on=f["closure_effective_on"])
            if f["closure_mode"]
            else None
        )
        out.append(
            PublicMerchant(
                id=m.id,
                name=m.name,
                category=m.category,
                uscc=m.uscc,
                status=m.status,
                custody=PublicCustody(
                    in_bank_custody=bool(f["banks"]),
                    custodian_banks=list(f["banks"]),
                    model=m.custody_model,  # type: ignore[arg-type]
                    ratio_bp=custody_ratio(settings, m, now),
                ),
                credit_rating=m.credit_rating,
                white_list=credit[m.id].white_list.on_list,
                closing=closure is not None or m.status in ("closing", "closed"),
                closure=closure,
                complaints_upheld=PublicComplaints(
                    since=business_date(since, settings.business_timezone),
                    upheld=counts["upheld"],
                    partly_upheld=counts["partly_upheld"],
                    by_category=dict(sorted(by_category.items())),
                ),
            )
        )
    return out


def _like(q: str) -> str:
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def search(
    session: AsyncSession, settings: Settings, q: str, cursor: str | None, limit: int
) -> list[PublicMerchant]:
    """Up to ``limit + 1`` merchants in id order after the cursor's whose name contains ``q`` (case-insensitive)
    or whose unified social credit code is ``q`` exactly."""
    q = q.strip()
    if not q or "\x00" in q:  # the edge refuses both; a caller inside the service gets the same answer
        raise FieldInvalid("q", "must hold a name or code, without the NUL character", rule="pattern")
    matches = [Merchant.name.ilike(_like(q), escape="\\")]
    if len(q) == USCC_LENGTH:
        matches.append(Merchant.uscc == q.upper())
    query = select(Merchant).where(or_(*matches)).order_by(Merchant.id).limit(limit + 1)
    after = decode_cursor(cursor)
    if after is not None:
        query = query.where(Merchant.id > after)
    return await _disclose(session, settings, list(await session.scalars(query)), utcnow())


async def one(session: AsyncSession, settings: Settings, merchant_id: str) -> PublicMerchant:
    merchant = await session.get(Merchant, merchant_id)
    if merchant is None:
        raise NotFound(f"No merchant {merchant_id}.")
    return (await _disclose(session, settings, [merchant], utcnow()))[0]
