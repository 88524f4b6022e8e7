"""The signals, each one set-based statement over all merchants (never a loop per merchant).

Every statement selects, for the merchants whose figures cross the signal's threshold at ``:now``, the columns
``merchant_id, level, figures, period_start, period_end``; :func:`escrow.risk.service.run_signals` wraps each in an
``INSERT … ON CONFLICT`` on the one live warning per merchant and kind. Thresholds are settings (escrow/config.py,
``warning_*``); windows are those of issue #14. Amounts are fen; rates are compared in exact arithmetic (numeric), so
a figure one unit past its threshold raises the warning and one at the threshold does not.

Services are consumptions that are not voided, excluding the daily releases of period plans (``service_date`` set),
which nobody renders at a counter. A card is active in a window when it was paid before the window ended and not
closed before it began.
"""

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from escrow.config import Settings
from escrow.kit.clock import business_date

NOT_CLOSED = "m.status <> 'closed'"


def _active_cards(start: str, end: str) -> str:
    return f"k.paid_at IS NOT NULL AND k.paid_at < {end} AND (k.closed_at IS NULL OR k.closed_at >= {start})"


SALES_SURGE = f"""
WITH s AS (
    SELECT k.merchant_id,
           coalesce(sum(k.price) FILTER (WHERE k.paid_at >= :now - interval '7 days'), 0) AS recent,
           count(*) FILTER (WHERE k.paid_at >= :now - interval '7 days') AS cards_recent,
           coalesce(sum(k.price) FILTER (WHERE k.paid_at < :now - interval '7 days'), 0) AS baseline
    FROM cards k
    WHERE k.paid_at >= :now - interval '97 days' AND k.paid_at < :now
    GROUP BY k.merchant_id
)
SELECT s.merchant_id,
       CASE WHEN s.recent * 90 > :alert * :factor * 7 * s.baseline AND s.recent > :alert * :floor
            THEN 'alert' ELSE 'attention' END AS level,
       jsonb_build_object(
           'sales_last_7_days', s.recent,
           'cards_last_7_days', s.cards_recent,
           'sales_previous_90_days', s.baseline,
           'weekly_average_previous_90_days', round(s.baseline * 7 / 90.0),
           'factor', :factor,
           'floor', :floor
       ) AS figures,
       (:now - interval '97 days')::date AS period_start,
       :now ::date AS period_end
FROM s JOIN merchants m ON m.id = s.merchant_id
WHERE {NOT_CLOSED} AND s.recent > :floor AND s.recent * 90 > :factor * 7 * s.baseline
"""

DEEP_DISCOUNT = f"""
WITH d AS (
    SELECT p.merchant_id, p.id, p.price, p.created_at,
           CASE WHEN p.kind = 'stored_value' THEN p.units ELSE p.units * p.list_unit_price END AS list_value
    FROM plans p
    WHERE p.active AND (p.kind = 'stored_value' OR (p.kind = 'sessions' AND p.list_unit_price IS NOT NULL))
), hits AS (
    SELECT d.*, count(*) OVER (PARTITION BY d.merchant_id) AS plans,
           min(d.created_at) OVER (PARTITION BY d.merchant_id) AS since
    FROM d WHERE d.price * 100 < :percent * d.list_value
), worst AS (
    SELECT DISTINCT ON (merchant_id) * FROM hits ORDER BY merchant_id, price::numeric / list_value, id
)
SELECT w.merchant_id,
       CASE WHEN w.price * 100 * :alert < :percent * w.list_value THEN 'alert' ELSE 'attention' END AS level,
       jsonb_build_object(
           'plans_below_threshold', w.plans,
           'plan_id', w.id,
           'price', w.price,
           'list_value', w.list_value,
           'price_percent_of_list', round(w.price * 100.0 / w.list_value, 2),
           'threshold_percent', :percent
       ) AS figures,
       least(w.since::date, :now ::date) AS period_start,
       :now ::date AS period_end
FROM worst w JOIN merchants m ON m.id = w.merchant_id
WHERE {NOT_CLOSED}
"""

SERVICE_COLLAPSE = f"""
WITH svc AS (
    SELECT k.merchant_id,
           count(*) FILTER (WHERE c.recorded_at >= :now - interval '14 days') AS recent,
           count(*) FILTER (WHERE c.recorded_at < :now - interval '14 days') AS previous
    FROM consumptions c JOIN cards k ON k.id = c.card_id
    WHERE c.status <> 'voided' AND c.service_date IS NULL
      AND c.recorded_at >= :now - interval '74 days' AND c.recorded_at < :now
    GROUP BY k.merchant_id
), cards_in AS (
    SELECT k.merchant_id,
           count(*) FILTER (WHERE {_active_cards(":now - interval '14 days'", ":now")}) AS recent,
           count(*) FILTER (WHERE {_active_cards(":now - interval '74 days'", ":now - interval '14 days'")})
               AS previous,
           count(*) FILTER (WHERE k.status = 'active' AND k.price - k.consumed - k.refunded - k.transferred > 0
                              AND k.paid_at < :now - make_interval(days => :silence)) AS holding_value
    FROM cards k WHERE k.kind <> 'period'
    GROUP BY k.merchant_id
), last_service AS (
    SELECT k.merchant_id, max(c.recorded_at) AS at
    FROM consumptions c JOIN cards k ON k.id = c.card_id
    WHERE c.status <> 'voided' AND c.service_date IS NULL AND c.recorded_at < :now
    GROUP BY k.merchant_id
), f AS (
    SELECT a.merchant_id, coalesce(s.recent, 0) AS svc_recent, coalesce(s.previous, 0) AS svc_previous,
           a.recent AS cards_recent, a.previous AS cards_previous, a.holding_value, l.at AS last_at,
           (a.holding_value > 0 AND (l.at IS NULL OR l.at < :now - make_interval(days => :silence))) AS silent
    FROM cards_in a LEFT JOIN svc s USING (merchant_id) LEFT JOIN last_service l USING (merchant_id)
), g AS (
    SELECT f.*,
           (f.svc_previous > 0 AND f.cards_recent > 0 AND f.cards_previous > 0
            AND f.svc_recent * f.cards_previous * 60 * 100 < :percent * f.svc_previous * f.cards_recent * 14)
               AS collapsed
    FROM f
)
SELECT g.merchant_id,
       CASE WHEN g.silent OR g.svc_recent * g.cards_previous * 60 * 100 * :alert
                                < :percent * g.svc_previous * g.cards_recent * 14
            THEN 'alert' ELSE 'attention' END AS level,
       jsonb_build_object(
           'services_last_14_days', g.svc_recent,
           'active_cards_last_14_days', g.cards_recent,
           'services_previous_60_days', g.svc_previous,
           'active_cards_previous_60_days', g.cards_previous,
           'percent_of_previous_rate', CASE WHEN g.svc_previous > 0 AND g.cards_recent > 0 THEN
               round(g.svc_recent::numeric * g.cards_previous * 60 * 100 / (g.svc_previous * g.cards_recent * 14), 1)
               END,
           'threshold_percent', :percent,
           'days_since_last_service', CASE WHEN g.last_at IS NOT NULL THEN
               extract(day FROM :now - g.last_at)::int END,
           'cards_holding_value', g.holding_value,
           'silent', g.silent
       ) AS figures,
       (:now - interval '74 days')::date AS period_start,
       :now ::date AS period_end
FROM g JOIN merchants m ON m.id = g.merchant_id
WHERE {NOT_CLOSED} AND (g.collapsed OR g.silent)
"""

UNPROTECTED_EXPOSURE = f"""
WITH u AS (
    SELECT k.merchant_id,
           sum(greatest(k.price - k.consumed - k.refunded - k.transferred - (k.protected_paid - k.protected_out), 0))
               AS unprotected
    FROM cards k WHERE k.status = 'active'
    GROUP BY k.merchant_id
), r AS (
    SELECT k.merchant_id, sum(c.amount) AS released
    FROM consumptions c JOIN cards k ON k.id = c.card_id
    WHERE c.status = 'confirmed' AND c.resolved_at >= :now - interval '12 months' AND c.resolved_at < :now
    GROUP BY k.merchant_id
), f AS (
    SELECT u.merchant_id, u.unprotected, coalesce(r.released, 0) AS released
    FROM u LEFT JOIN r USING (merchant_id) WHERE u.unprotected > 0
)
SELECT f.merchant_id,
       CASE WHEN f.unprotected * 100 > :alert * :percent * f.released AND f.unprotected > :alert * :amount
            THEN 'alert' ELSE 'attention' END AS level,
       jsonb_build_object(
           'unprotected_outstanding', f.unprotected,
           'released_last_12_months', f.released,
           'percent_of_released', CASE WHEN f.released > 0 THEN round(f.unprotected * 100.0 / f.released, 2) END,
           'threshold_percent', :percent,
           'threshold_amount', :amount
       ) AS figures,
       (:now - interval '12 months')::date AS period_start,
       :now ::date AS period_end
FROM f JOIN merchants m ON m.id = f.merchant_id
WHERE {NOT_CLOSED} AND (f.unprotected * 100 > :percent * f.released OR f.unprotected > :amount)
"""


def _rate(events: str, name: str) -> str:
    return f"""
WITH e AS ({events}), a AS (
    SELECT k.merchant_id, count(*) AS cards
    FROM cards k WHERE {_active_cards(":now - interval '30 days'", ":now")}
    GROUP BY k.merchant_id
)
SELECT a.merchant_id,
       CASE WHEN e.events * 100 >= :alert * :rate * a.cards THEN 'alert' ELSE 'attention' END AS level,
       jsonb_build_object(
           '{name}_last_30_days', e.events,
           'active_cards_last_30_days', a.cards,
           'per_100_active_cards', round(e.events * 100.0 / a.cards, 2),
           'threshold_per_100', :rate
       ) AS figures,
       (:now - interval '30 days')::date AS period_start,
       :now ::date AS period_end
FROM e JOIN a USING (merchant_id) JOIN merchants m ON m.id = a.merchant_id
WHERE {NOT_CLOSED} AND e.events * 100 > :rate * a.cards
"""


REFUND_RATE = _rate(
    "SELECT k.merchant_id, count(*) AS events FROM refunds r JOIN cards k ON k.id = r.card_id"
    " WHERE r.cause IN ('consumer', 'merchant', 'cooling_off')"
    " AND r.requested_at >= :now - interval '30 days' AND r.requested_at < :now GROUP BY k.merchant_id",
    "refund_requests",
)

DISPUTE_RATE = _rate(
    "SELECT k.merchant_id, count(*) AS events FROM consumptions c JOIN cards k ON k.id = c.card_id"
    " WHERE c.dispute_reason IS NOT NULL"
    " AND c.recorded_at >= :now - interval '30 days' AND c.recorded_at < :now GROUP BY k.merchant_id",
    "disputes",
)

REFUND_OVERDUE = f"""
WITH o AS (
    SELECT k.merchant_id, count(*) AS refunds, sum(r.amount) AS amount, min(r.due_on) AS oldest_due_on
    FROM refunds r JOIN cards k ON k.id = r.card_id
    WHERE r.status IN ('approved', 'instructed') AND r.due_on < :today
    GROUP BY k.merchant_id
)
SELECT o.merchant_id, 'alert' AS level,
       jsonb_build_object(
           'overdue_refunds', o.refunds,
           'overdue_amount', o.amount,
           'oldest_due_on', o.oldest_due_on,
           'days_overdue', :today - o.oldest_due_on
       ) AS figures,
       o.oldest_due_on AS period_start,
       greatest(o.oldest_due_on, :today) AS period_end
FROM o JOIN merchants m ON m.id = o.merchant_id
WHERE {NOT_CLOSED}
"""

PRESENCE = f"""
WITH p AS (
    SELECT k.merchant_id,
           count(*) FILTER (WHERE c.resolved_at >= :now - interval '30 days') AS confirmed,
           count(*) FILTER (WHERE c.resolved_at >= :now - interval '30 days' AND c.resolved_by = 'presence')
               AS with_code,
           count(*) FILTER (WHERE c.resolved_by = 'presence') AS with_code_90_days
    FROM consumptions c JOIN cards k ON k.id = c.card_id
    WHERE c.status = 'confirmed' AND c.service_date IS NULL
      AND c.resolved_at >= :now - interval '90 days' AND c.resolved_at < :now
    GROUP BY k.merchant_id
)
SELECT p.merchant_id,
       CASE WHEN (p.confirmed - p.with_code) * 100 >= :alert * :percent * p.confirmed
                 AND (p.confirmed - p.with_code) * 100 > 0 AND :percent * :alert <= 100
            THEN 'alert' ELSE 'attention' END AS level,
       jsonb_build_object(
           'confirmed_last_30_days', p.confirmed,
           'confirmed_with_presence_code', p.with_code,
           'confirmed_without_presence_code', p.confirmed - p.with_code,
           'percent_without_code', round((p.confirmed - p.with_code) * 100.0 / p.confirmed, 2),
           'presence_confirmations_last_90_days', p.with_code_90_days,
           'threshold_percent', :percent
       ) AS figures,
       (:now - interval '30 days')::date AS period_start,
       :now ::date AS period_end
FROM p JOIN merchants m ON m.id = p.merchant_id
WHERE {NOT_CLOSED} AND p.with_code_90_days > 0 AND p.confirmed > 0
  AND (p.confirmed - p.with_code) * 100 > :percent * p.confirmed
"""

MONEY_TRAIL = f"""
WITH b AS (
    SELECT a.merchant_id, count(*) AS breaks, min(x.detected_at) AS oldest
    FROM reconciliation_breaks x JOIN escrow_accounts a ON a.id = x.escrow_account_id
    WHERE x.state = 'open' AND x.detected_at < :now - make_interval(days => :break_days)
    GROUP BY a.merchant_id
), f AS (
    SELECT a.merchant_id, count(*) AS failed
    FROM instructions i JOIN escrow_accounts a ON a.id = i.escrow_account_id
    WHERE i.kind = 'payout' AND i.status = 'failed' AND i.created_at >= :now - interval '30 days'
    GROUP BY a.merchant_id
), u AS (
    SELECT k.merchant_id, count(*) AS unapplied, sum(d.amount) AS amount
    FROM unapplied_deposits d JOIN cards k ON k.payment_reference = d.payment_reference
    WHERE d.received_at >= :now - interval '30 days' AND d.received_at < :now
    GROUP BY k.merchant_id
), t AS (
    SELECT merchant_id, coalesce(b.breaks, 0) AS breaks, b.oldest, coalesce(f.failed, 0) AS failed,
           coalesce(u.unapplied, 0) AS unapplied, coalesce(u.amount, 0) AS unapplied_amount
    FROM b FULL JOIN f USING (merchant_id) FULL JOIN u USING (merchant_id)
)
SELECT t.merchant_id,
       CASE WHEN (t.breaks > 0)::int + (t.failed > 0)::int + (t.unapplied > 0)::int >= 2
            THEN 'alert' ELSE 'attention' END AS level,
       jsonb_build_object(
           'breaks_open_over_days', t.breaks,
           'break_days', :break_days,
           'oldest_break_detected_at', t.oldest,
           'failed_payouts_last_30_days', t.failed,
           'unapplied_deposits_last_30_days', t.unapplied,
           'unapplied_amount', t.unapplied_amount
       ) AS figures,
       least(coalesce(t.oldest::date, :now ::date), (:now - interval '30 days')::date) AS period_start,
       :now ::date AS period_end
FROM t JOIN merchants m ON m.id = t.merchant_id
WHERE {NOT_CLOSED}
"""


# every bound parameter is typed in the statement, so PostgreSQL never guesses (numbers are exact numerics)
TYPES = {"kind": "varchar", "now": "timestamptz", "today": "date", "silence": "int", "break_days": "int"}


def typed(sql: str) -> str:
    return re.sub(r"(?<![:\w]):(\w+)", lambda m: f"CAST(:{m.group(1)} AS {TYPES.get(m.group(1), 'numeric')})", sql)


@dataclass(frozen=True)
class Signal:
    kind: str
    sql: str

    def statement(self) -> str:
        return typed(self.sql)

    def params(self, settings: Settings, now: datetime) -> dict:
        common = {
            "now": now,
            "today": business_date(now, settings.business_timezone),
            "alert": Decimal(str(settings.warning_alert_multiple)),
        }
        own: dict = {
            "sales_surge": {"factor": settings.warning_sales_surge_factor, "floor": settings.warning_sales_surge_floor},
            "deep_discount": {"percent": settings.warning_deep_discount_percent},
            "service_collapse": {
                "percent": settings.warning_service_collapse_percent,
                "silence": settings.warning_service_silence_days,
            },
            "unprotected_exposure": {
                "percent": settings.warning_exposure_percent,
                "amount": settings.warning_exposure_amount,
            },
            "refund_rate": {"rate": settings.warning_refund_rate},
            "dispute_rate": {"rate": settings.warning_dispute_rate},
            "refund_overdue": {},
            "presence": {"percent": settings.warning_presence_percent},
            "money_trail": {"break_days": settings.warning_break_days},
        }[self.kind]
        used = set(re.findall(r"(?<![:\w]):(\w+)", self.sql))
        return {
            k: v if k in TYPES else Decimal(str(v)) for k, v in {**common, **own}.items() if k in used or k == "now"
        }


SIGNALS = (
    Signal("sales_surge", SALES_SURGE),
    Signal("deep_discount", DEEP_DISCOUNT),
    Signal("service_collapse", SERVICE_COLLAPSE),
    Signal("unprotected_exposure", UNPROTECTED_EXPOSURE),
    Signal("refund_rate", REFUND_RATE),
    Signal("dispute_rate", DISPUTE_RATE),
    Signal("refund_overdue", REFUND_OVERDUE),
    Signal("presence", PRESENCE),
    Signal("money_trail", MONEY_TRAIL),
)
