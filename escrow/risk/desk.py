"""Figures for the regulator's desk, each one set-based statement (never a loop per merchant or card).

* :func:`outstanding` — prepaid value outstanding, protected (the cards' ``card:`` accounts, held in custody) and
  unprotected (their ``card_unprotected:`` accounts), summed from the ledger's balances exactly as
  :func:`escrow.cards.service.account_totals` sums one escrow account's (posted balances plus their slots; a pending
  hold is still the consumer's), grouped by merchant category and by region in one pass (``GROUPING SETS``).
* :func:`merchant_months` — one merchant's figures per business month (Asia/Shanghai by default): sales paid,
  services delivered (count and value; not voided, not the daily releases of period plans, as the warning signals
  count them), refunds requested, services disputed, and custody cash held at the month's end (its posted ledger
  movements summed up to then).
"""

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

_OUTSTANDING = """
WITH bal AS (
    SELECT a.escrow_account_id, a.code LIKE 'card:%' AS protected,
           a.posted_credits - a.posted_debits + coalesce(sum(s.posted_credits - s.posted_debits), 0) AS amount
    FROM ledger_accounts a LEFT JOIN ledger_account_slots s ON s.account_id = a.id
    WHERE a.code LIKE 'card:%' OR a.code LIKE 'card\\_unprotected:%'
    GROUP BY a.id
)
SELECT GROUPING(m.category) AS by_region, GROUPING(m.region) AS by_category, m.category, m.region,
       coalesce(sum(b.amount) FILTER (WHERE b.protected), 0) AS protected,
       coalesce(sum(b.amount) FILTER (WHERE NOT b.protected), 0) AS unprotected,
       count(DISTINCT m.id) FILTER (WHERE b.amount > 0) AS merchants
FROM bal b
JOIN escrow_accounts e ON e.id = b.escrow_account_id
JOIN merchants m ON m.id = e.merchant_id
GROUP BY GROUPING SETS ((m.category), (m.region), ())
ORDER BY by_region, by_category, m.category, m.region NULLS LAST
"""

_COUNTS = """
SELECT (SELECT count(*) FROM warnings WHERE state = 'open') AS warnings_open,
       (SELECT count(*) FROM warnings WHERE state IN ('open', 'acknowledged', 'escalated')) AS warnings_live,
       (SELECT count(*) FROM reconciliation_breaks WHERE state = 'open') AS breaks_open,
       (SELECT count(*) FROM closures WHERE status <> 'settled') AS closures_in_progress
"""

_MONTHS = """
WITH months AS (
    SELECT g::date AS month
    FROM generate_series(date_trunc('month', timezone(:tz, :now)) - make_interval(months => :n - 1),
                         date_trunc('month', timezone(:tz, :now)), interval '1 month') AS g
), sales AS (
    SELECT date_trunc('month', timezone(:tz, k.paid_at))::date AS month, sum(k.price) AS value, count(*) AS cards
    FROM cards k WHERE k.merchant_id = :merchant AND k.paid_at IS NOT NULL
    GROUP BY 1
), services AS (
    SELECT date_trunc('month', timezone(:tz, c.recorded_at))::date AS month,
           count(*) FILTER (WHERE c.status <> 'voided') AS n,
           coalesce(sum(c.amount) FILTER (WHERE c.status <> 'voided'), 0) AS value,
           count(*) FILTER (WHERE c.dispute_reason IS NOT NULL) AS disputed
    FROM consumptions c JOIN cards k ON k.id = c.card_id
    WHERE k.merchant_id = :merchant AND (c.status <> 'voided' OR c.dispute_reason IS NOT NULL)
      AND c.service_date IS NULL
    GROUP BY 1
), refunds AS (
    SELECT date_trunc('month', timezone(:tz, r.requested_at))::date AS month, count(*) AS n, sum(r.amount) AS value
    FROM refunds r JOIN cards k ON k.id = r.card_id
    WHERE k.merchant_id = :merchant
    GROUP BY 1
), custody AS (
    SELECT date_trunc('month', timezone(:tz, le.occurred_at))::date AS month,
           sum(CASE p.side WHEN 'D' THEN p.amount ELSE -p.amount END) AS delta
    FROM escrow_accounts e
    JOIN ledger_accounts a ON a.escrow_account_id = e.id AND a.code = 'custody_cash'
    JOIN ledger_postings p ON p.account_id = a.id AND p.kind = 'posted'
    JOIN ledger_entries le ON le.id = p.entry_id
    WHERE e.merchant_id = :merchant
    GROUP BY 1
)
SELECT mo.month,
       coalesce(s.value, 0) AS sales, coalesce(s.cards, 0) AS cards_sold,
       coalesce(v.n, 0) AS services,
       coalesce(v.value, 0) AS services_value,
       coalesce(r.n, 0) AS refunds, coalesce(r.value, 0) AS refunds_value,
       coalesce(v.disputed, 0) AS disputes,
       (SELECT coalesce(sum(c.delta), 0) FROM custody c WHERE c.month <= mo.month) AS custody
FROM months mo
LEFT JOIN sales s USING (month) LEFT JOIN services v USING (month) LEFT JOIN refunds r USING (month)
ORDER BY mo.month
"""


@dataclass(frozen=True)
class Outstanding:
    label: str | None  # the category or the region (None: merchants without a region)
    protected: int
    unprotected: int
    merchants: int

    @property
    def total(self) -> int:
        return self.protected + self.unprotected


@dataclass(frozen=True)
class OutstandingTable:
    total: Outstanding
    by_category: list[Outstanding]
    by_region: list[Outstanding]


async def outstanding(session: AsyncSession) -> OutstandingTable:
    total = Outstanding(None, 0, 0, 0)
    by_category: list[Outstanding] = []
    by_region: list[Outstanding] = []
    for row in (await session.execute(text(_OUTSTANDING))).all():
        if row.by_region and row.by_category:
            total = Outstanding(None, int(row.protected), int(row.unprotected), int(row.merchants))
        elif row.by_region:
            by_region.append(Outstanding(row.region, int(row.protected), int(row.unprotected), int(row.merchants)))
        else:
            by_category.append(Outstanding(row.category, int(row.protected), int(row.unprotected), int(row.merchants)))
    return OutstandingTable(total, by_category, by_region)


async def merchant_names(session: AsyncSession, merchant_ids: list[str]) -> dict[str, str]:
    rows = await session.execute(text("SELECT id, name FROM merchants WHERE id = ANY(:ids)"), {"ids": merchant_ids})
    return {row.id: row.name for row in rows}


async def counts(session: AsyncSession) -> dict[str, int]:
    row = (await session.execute(text(_COUNTS))).one()
    return {key: int(value) for key, value in row._mapping.items()}


@dataclass(frozen=True)
class Month:
    month: date
    sales: int
    cards_sold: int
    services: int
    services_value: int
    refunds: int
    refunds_value: int
    disputes: int
    custody: int


async def merchant_months(
    session: AsyncSession, merchant_id: str, *, now: datetime, timezone: str, months: int = 12
) -> list[Month]:
    rows = await session.execute(text(_MONTHS), {"merchant": merchant_id, "now": now, "tz": timezone, "n": months})
    return [Month(*(row[0], *(int(v) for v in row[1:]))) for row in rows.all()]
