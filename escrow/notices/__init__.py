"""Notices to consumers (issue #13 §5): what happened to their card, by SMS, with a link to the card's page.

A notice is a row of ``notices`` written in the transaction of the movement it tells of — so it exists exactly
when the movement committed — by one set-based ``INSERT … SELECT`` that takes the consumer from the card; its
``dedup_key`` names the cause (``service_recorded:<consumption id>``), so a retried request or a rerun job adds
nothing. The hot paths pay that one statement only: no phone is decrypted and no text rendered there.

The notices job (:func:`queue_due`) renders due notices (escrow/notices/texts.py, with the merchant's and the
bank's names and the closure's statement looked up then) into the SMS outbox (``sms_outbox``, dedup key
``notice:<dedup key>``) and marks them queued, in one transaction per batch; the outbox's ``deliver_due`` sends
them. Consumers with no phone kept (``consumers.phone_enc``) get no SMS: their notices are marked queued and
counted in the job's log line.
"""

import json
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from escrow import db
from escrow.config import Settings
from escrow.consumers.service import phone_context
from escrow.kit.crypto import Keyring
from escrow.notices import texts
from escrow.sms import queue

log = structlog.get_logger("escrow.notices")

CARD_PAID = "card_paid"
SERVICE_RECORDED = "service_recorded"
SERVICE_AUTO_CONFIRMED = "service_auto_confirmed"
DISPUTE_RESOLVED = "dispute_resolved"
REFUND_APPROVED = "refund_approved"
REFUND_PAID = "refund_paid"
CLOSURE = "closure"
TAKEOVER_OFFERED = "takeover_offered"
CARD_EXPIRING = "card_expiring"


def _json(params: dict[str, Any]) -> str:
    return json.dumps(params, default=lambda v: v.isoformat() if isinstance(v, date | datetime) else str(v))


def card_link(settings: Settings, card_id: str) -> str:
    return f"{settings.public_url.rstrip('/')}/app/cards/{card_id}"


# The consumer of each card, from the card: callers give only the card, its figures and the cause's key.
_ADD = (
    "INSERT INTO notices (consumer_id, kind, card_id, params, dedup_key)"
    " SELECT k.consumer_id, $1::text, u.card_id, u.params::jsonb, $1::text || ':' || u.cause"
    " FROM unnest($2::text[], $3::text[], $4::text[]) AS u(card_id, params, cause) JOIN cards k ON k.id = u.card_id"
    " ON CONFLICT (dedup_key) DO NOTHING"
)


async def add_many(session: AsyncSession, kind: str, items: Sequence[tuple[str, dict[str, Any], str]]) -> None:
    """Notices of one kind, one per ``(card id, params, cause)``, in the caller's transaction (one statement); the
    dedup key is ``<kind>:<cause>``."""
    if not items:
        return
    await db.fetch(session, _ADD, kind, [i[0] for i in items], [_json(i[1]) for i in items], [str(i[2]) for i in items])


async def add(session: AsyncSession, kind: str, card_id: str, params: dict[str, Any], cause: str) -> None:
    await add_many(session, kind, [(card_id, params, cause)])


# Every card of a merchant with value left (its holder has something to lose): one statement.
_FOR_MERCHANT = (
    "INSERT INTO notices (consumer_id, kind, card_id, params, dedup_key)"
    " SELECT k.consumer_id, $1::text, k.id,"
    "   $3::jsonb || jsonb_build_object('unused', k.price - k.consumed - k.refunded),"
    "   $1::text || ':' || $4::text || ':' || k.id"
    " FROM cards k WHERE k.merchant_id = $2 AND k.status = 'active' AND k.price - k.consumed - k.refunded > 0"
    " ON CONFLICT (dedup_key) DO NOTHING"
)


async def add_for_merchant_cards(
    session: AsyncSession, kind: str, merchant_id: str, params: dict[str, Any], cause: str
) -> None:
    """A notice to the holder of each of the merchant's active cards with value left; dedup key
    ``<kind>:<cause>:<card id>``."""
    await db.fetch(session, _FOR_MERCHANT, kind, merchant_id, _json(params), cause)


# Cards whose validity ends within the notice period and that were valid before it began (a card sold for fewer
# days is not warned on the day it is paid): once per card per validity end.
_EXPIRING = (
    "INSERT INTO notices (consumer_id, kind, card_id, params, dedup_key)"
    " SELECT k.consumer_id, 'card_expiring', k.id,"
    "   jsonb_build_object('valid_until', k.valid_until, 'remaining', k.price - k.consumed - k.refunded),"
    "   'card_expiring:' || k.id || ':' || k.valid_until"
    " FROM cards k WHERE k.status = 'active' AND k.valid_until BETWEEN $1::date AND $1::date + $2::int"
    "   AND k.starts_on <= k.valid_until - $2::int AND k.price - k.consumed - k.refunded > 0"
    " ON CONFLICT (dedup_key) DO NOTHING RETURNING 1"
)


async def cards_expiring(session: AsyncSession, settings: Settings, today: date) -> int:
    """The daily job: a notice to the holder of each card whose validity ends within ``card_expiry_notice_days``
    (once per card per validity end, however often it runs). Returns how many were added."""
    return len(await db.fetch(session, _EXPIRING, today, settings.card_expiry_notice_days))


# Due notices, oldest first, claimed (SKIP LOCKED: concurrent jobs take different ones), with what rendering needs.
_DUE = (
    "SELECT n.id, n.kind, n.card_id, n.params, n.dedup_key, n.consumer_id, c.phone_enc,"
    "  m.name AS merchant, b.name AS bank, s.statement"
    " FROM notices n JOIN consumers c ON c.id = n.consumer_id"
    " LEFT JOIN cards k ON k.id = n.card_id"
    " LEFT JOIN merchants m ON m.id = k.merchant_id"
    " LEFT JOIN escrow_accounts a ON a.id = k.escrow_account_id"
    " LEFT JOIN banks b ON b.id = a.bank_id"
    " LEFT JOIN LATERAL (SELECT jsonb_build_object('decision', i.decision, 'from_custody', i.from_custody,"
    "     'set_off', i.set_off, 'fund_paid', i.fund_paid, 'fund_owed', i.fund_owed, 'unpaid', i.unpaid,"
    "     'transferred', i.transferred) AS statement"
    "   FROM closure_items i WHERE n.kind = 'closure' AND i.closure_id = n.params->>'closure_id'"
    "     AND i.kind = 'card' AND i.card_id = n.card_id LIMIT 1) s ON true"
    " WHERE n.queued_at IS NULL ORDER BY n.id LIMIT $1 FOR UPDATE OF n SKIP LOCKED"
)
_QUEUED = "UPDATE notices SET queued_at = now() WHERE id = ANY($1::bigint[])"


def _loaded(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def queue_due(session: AsyncSession, settings: Settings, keyring: Keyring, limit: int) -> int:
    """Render up to ``limit`` due notices into the SMS outbox and mark them queued, in the caller's transaction.
    Returns how many were handled (queued, or skipped for want of a phone)."""
    due = await db.fetch(session, _DUE, limit)
    if not due:
        return 0
    without_phone = queued = 0
    for row in due:
        if row["phone_enc"] is None:
            without_phone += 1
            continue
        facts = {
            **_loaded(row["params"]),
            "merchant": row["merchant"] or "",
            "bank": row["bank"] or "",
            "statement": _loaded(row["statement"]),
        }
        text_ = texts.render(row["kind"], facts, card_link(settings, row["card_id"]), settings.business_timezone)
        phone = keyring.decrypt(row["phone_enc"], phone_context(row["consumer_id"]))
        queued += await queue(session, keyring, phone, text_, f"notice:{row['dedup_key']}")
    await db.fetch(session, _QUEUED, [row["id"] for row in due])
    log.info("notices_queued", queued=queued, without_phone=without_phone)
    return len(due)
