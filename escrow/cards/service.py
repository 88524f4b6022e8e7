"""Cards: sold by a merchant, paid into custody when the bank confirms the deposit, read by all four roles.

A card's row is locked (``SELECT … FOR UPDATE``) by every movement of its value — consumption, release,
refund — so its counters and its ledger accounts change together, one movement at a time; the ledger's own
never-below-zero rule is the second line of defence.
"""

import secrets
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Exists, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from escrow import db, ledger, notices
from escrow.auth.tokens import Principal
from escrow.cards.pricing import CardMoney, protected_part_of_price, split
from escrow.cards.schemas import CardSale, DepositReport
from escrow.config import Settings
from escrow.errors import Conflict, EscrowError, FieldInvalid, NotFound
from escrow.kit.clock import business_date, utcnow
from escrow.kit.ids import new_id
from escrow.models import Card, EscrowAccount, Merchant, Refund, UnappliedDeposit
from escrow.plans import rules

LIVE_STATES = ("awaiting_payment", "active")
# Row locks are FOR NO KEY UPDATE: they exclude each other as FOR UPDATE would, but not the key-share locks that
# foreign-key checks take — so a transaction inserting a row that refers to a locked card, escrow account or
# merchant (an instruction, a refund) never waits on the lock holder while holding ledger locks it waits for.
NO_KEY_UPDATE = {"key_share": True}


class SalesStopped(Conflict):
    code = "sales_stopped"
    title = "No sales now"


class CardNotActive(Conflict):
    code = "card_not_active"
    title = "The card is not active"


class DepositRefused(EscrowError):
    """A deposit the service can't apply; it is kept (unapplied) for reconciliation."""

    code = "deposit_refused"
    status = 422
    title = "Deposit not applied"


class DepositNotApplicable(DepositRefused):
    status = 409


def card_code(card_id: str) -> str:
    return f"card:{card_id}"


def unprotected_code(card_id: str) -> str:
    return f"card_unprotected:{card_id}"


def custody_ratio(settings: Settings, merchant: Merchant, now: datetime) -> int:
    """The custody ratio (basis points) a card sold now is fixed at: full custody unless the regulator moved
    the merchant to the ratio model and it is past its first year (domain.md §5)."""
    if merchant.custody_model != "ratio":
        return 10_000
    if (business_date(now, settings.business_timezone) - merchant.opened_on).days < settings.custody_full_first_days:
        return 10_000
    return settings.custody_ratio_bp_by_rating[merchant.credit_rating]


def last_valid_day(settings: Settings, valid_until: date | None, today: date) -> date | None:
    """A card's last valid day as the date alone decides it (business dates), whether the expiry job has run yet
    or not.

    With ``expiry_action=refund`` it is the day the card was sold with: past it, the card is expired. With
    ``extend`` a card past it is extended by ``expiry_extension_days`` counted from that day — never from the day a
    job happens to run — and, should that still be past, by as many more such periods as it takes to reach today:
    exactly what the job, run every day, would have made of it (it extends a card again each time it lapses), so
    under ``extend`` a card never lapses and is never refunded at expiry."""
    if valid_until is None or valid_until >= today or settings.expiry_action != "extend":
        return valid_until
    periods = -(-(today - valid_until).days // settings.expiry_extension_days)  # rounded up: at least one
    return valid_until + timedelta(days=periods * settings.expiry_extension_days)


def expired(settings: Settings, valid_until: date | None, today: date) -> bool:
    """Whether a card is past its last valid day (:func:`last_valid_day`) on ``today``."""
    last = last_valid_day(settings, valid_until, today)
    return last is not None and last < today


def money_of(card: Card) -> CardMoney:
    return CardMoney(
        price=card.price,
        ratio_bp=card.custody_ratio_bp,
        protected_paid=card.protected_paid,
        out=card.consumed + card.refunded,
        protected_out=card.protected_out,
    )


def take(card: Card, amount: int) -> tuple[int, int]:
    """Take ``amount`` fen out of the card's remaining value (for a consumption or a refund): returns its
    (custodied, unprotected) parts and advances the card's custody counter."""
    protected, unprotected = split(money_of(card), amount)
    card.protected_out += protected
    return protected, unprotected


def release_legs(card: Card, protected: int, unprotected: int) -> list[ledger.Leg]:
    """Entry 2 of domain.md §4: value moves from the card to the merchant (payable, or obligation discharged)."""
    legs: list[ledger.Leg] = []
    if protected:
        legs += ledger.transfer(card_code(card.id), "merchant_payable", protected)
    if unprotected:
        legs += ledger.transfer(unprotected_code(card.id), "merchant_obligation", unprotected)
    return legs


async def lock(session: AsyncSession, card_id: str) -> Card:
    await session.flush()  # re-reading the row must not throw away changes not yet written
    card = await session.get(Card, card_id, with_for_update=NO_KEY_UPDATE, populate_existing=True)
    if card is None:
        raise NotFound(f"no card {card_id}")
    return card


async def visible(session: AsyncSession, principal: Principal, card: Card) -> bool:
    """Whether the card is the caller's to see (others' cards are answered 404)."""
    if principal.role == "regulator":
        return True
    if principal.role == "merchant":
        return card.merchant_id == principal.id
    if principal.role == "consumer":
        return card.consumer_id == principal.id
    if principal.role == "bank":
        account = await session.get(EscrowAccount, card.escrow_account_id)
        return account is not None and account.bank_id == principal.id
    return False


def visible_sql(principal: Principal, param: str) -> str:
    """SQL condition on a ``cards`` row: the card is the caller's to see; ``param`` is the placeholder that holds
    the caller's id (the SQL twin of :func:`visible`)."""
    return {
        "regulator": f"{param}::text IS NOT NULL",
        "merchant": f"merchant_id = {param}",
        "consumer": f"consumer_id = {param}",
        "bank": f"escrow_account_id IN (SELECT id FROM escrow_accounts WHERE bank_id = {param})",
    }[principal.role]


async def save_row(session: AsyncSession, card: db.Row, *columns: str) -> None:
    """Write back the named columns of a card row changed under its lock."""
    assignments = ", ".join(f"{column} = ${n}" for n, column in enumerate(columns, start=2))
    await db.fetch(session, f"UPDATE cards SET {assignments} WHERE id = $1", card.id, *(card[c] for c in columns))


async def get(session: AsyncSession, principal: Principal, card_id: str, *, for_update: bool = False) -> Card:
    card = await session.get(Card, card_id)
    if card is None or not await visible(session, principal, card):
        raise NotFound(f"no card {card_id}")
    return await lock(session, card_id) if for_update else card  # others' cards are never locked


def refund_requested(card_id: Any) -> Exists:
    """SQL: the card (an id, or the ``Card.id`` column) has a refund request awaiting a decision."""
    return select(Refund.id).where(Refund.card_id == card_id, Refund.status == "requested").exists()


async def has_refund_requested(session: AsyncSession, card_id: str) -> bool:
    return bool(await session.scalar(select(refund_requested(card_id))))


async def check_account_active(session: AsyncSession, card: Card) -> None:
    """Services and refunds need the card's escrow account active (not frozen by the regulator or a closure)."""
    account = await session.get(EscrowAccount, card.escrow_account_id)
    check_account_status(card.id, account.status if account else None)


def check_account_status(card_id: str, status: str | None, errors: list[dict[str, str]] | None = None) -> None:
    if status != "active":
        raise CardNotActive(
            f"the escrow account of card {card_id} is {status or 'missing'}: the card is on hold", errors=errors
        )


# The merchant, share-locked — concurrent sales go ahead together, while a closure or a suspension (which update
# the row) and a sale can't cross — and what the sale checks, in one round trip ($1 merchant, $2 plan,
# $3 consumer, $4 escrow account or NULL): the plan, whether the merchant registered the consumer, the escrow
# account named (or the merchant's only active one, ``candidates`` telling how many there are) with its bank,
# and the consumer's paid, unused value at this merchant.
_SALE_CONTEXT = (
    "SELECT m.*, p.id AS plan_id, p.name AS plan_name, p.kind, p.price, p.units, p.validity_days, p.terms,"
    "  p.active AS plan_active,"
    "  EXISTS (SELECT 1 FROM consumer_links WHERE consumer_id = $3 AND merchant_id = m.id) AS registered,"
    "  a.id AS account_id, a.status AS account_status, a.bank_account_masked, a.candidates, b.name AS bank_name,"
    # unpaid sales hold no money and may be abandoned: only paid, active cards count
    "  (SELECT coalesce(sum(price - consumed - refunded), 0)::bigint FROM cards"
    "    WHERE merchant_id = m.id AND consumer_id = $3 AND status = 'active') AS prepaid"
    " FROM merchants m"
    " LEFT JOIN plans p ON p.id = $2 AND p.merchant_id = m.id"
    " LEFT JOIN LATERAL (SELECT *, count(*) OVER () AS candidates FROM escrow_accounts"
    "   WHERE merchant_id = m.id AND (id = $4 OR ($4::text IS NULL AND status = 'active')) LIMIT 1) a ON true"
    " LEFT JOIN banks b ON b.id = a.bank_id"
    " WHERE m.id = $1 FOR SHARE OF m"
)
_NEW_CARD = (
    "INSERT INTO cards (id, merchant_id, escrow_account_id, plan_id, consumer_id, kind, status, price, units_total,"
    " units_used, custody_ratio_bp, protected_paid, consumed, released, refunded, protected_out, payment_reference,"
    " days_settled) VALUES ($1, $2, $3, $4, $5, $6, 'awaiting_payment', $7, $8, 0, $9, $10, 0, 0, 0, 0, $11, 0)"
    " RETURNING *"
)


@dataclass(frozen=True, slots=True)
class Sale:
    card: db.Row
    bank_name: str
    escrow_account_number_masked: str


async def sell(session: AsyncSession, settings: Settings, principal: Principal, data: CardSale) -> Sale:
    sale = await db.one(session, _SALE_CONTEXT, principal.id, data.plan_id, data.consumer_id, data.escrow_account_id)
    if sale is None:
        raise NotFound(f"no merchant {principal.id}")
    merchant = sale  # the merchant's own columns, with the sale's context beside them
    if merchant.status != "active":  # before anything else: a closing merchant's accounts are frozen too
        raise SalesStopped(f"merchant {merchant.id} is {merchant.status}: no sales")
    if sale.plan_id is None:
        raise FieldInvalid("plan_id", f"no plan {data.plan_id} of this merchant")
    if not sale.plan_active:
        raise FieldInvalid("plan_id", "the plan is retired")
    if not sale.registered:
        raise FieldInvalid("consumer_id", "register the consumer (POST /v1/consumers) before selling to them")
    if data.escrow_account_id is not None and sale.account_id is None:
        raise FieldInvalid("escrow_account_id", f"no escrow account {data.escrow_account_id} of this merchant")
    if data.escrow_account_id is None and sale.candidates != 1:
        raise FieldInvalid("escrow_account_id", "required: the merchant has no active escrow account or more than one")
    if sale.account_status != "active":
        raise SalesStopped(f"escrow account {sale.account_id} is {sale.account_status}: no sales")
    plan = db.Row(
        id=sale.plan_id, name=sale.plan_name, kind=sale.kind, price=sale.price, units=sale.units,
        validity_days=sale.validity_days, terms=sale.terms,
    )  # fmt: skip
    rules.check(settings, merchant.category, plan)
    if merchant.category == "gym" and sale.prepaid + plan.price > settings.fitness_consumer_max_total:
        raise rules.PlanRuleBroken(
            f"this consumer would hold {rules.yuan(sale.prepaid + plan.price)} of prepaid value at this gym; "
            f"the limit is {rules.yuan(settings.fitness_consumer_max_total)} (fitness_consumer_max_total)",
            errors=[
                {
                    "field": "consumer_id",
                    "message": "prepaid total per consumer per gym exceeded",
                    "rule": "fitness_consumer_max_total",
                }
            ],
        )
    ratio = custody_ratio(settings, merchant, utcnow())
    card = await db.one(
        session,
        _NEW_CARD,
        new_id("card"),
        merchant.id,
        sale.account_id,
        plan.id,
        data.consumer_id,
        plan.kind,
        plan.price,
        plan.units,
        ratio,
        protected_part_of_price(plan.price, ratio),
        f"PE{secrets.randbelow(10**18):018d}",
    )
    assert card is not None
    return Sale(card, sale.bank_name, sale.bank_account_masked or "")


# The card a payment reference names, locked, with what else the deposit depends on ($1 reference, $2 bank,
# $3 bank transaction id): an earlier refusal of this bank transaction, and a card it already paid (one bank
# transaction pays one card, never two). For an unknown reference, the same without the card.
# The card a bank's transaction already paid: one pays one card, never two.
_PAID_CARD = (
    "(SELECT c.id FROM cards c JOIN escrow_accounts a ON a.id = c.escrow_account_id"
    " WHERE c.deposit_transaction_id = {transaction} AND a.bank_id = {bank} LIMIT 1)"
)
_HISTORY = (
    "(SELECT detail FROM unapplied_deposits WHERE bank_id = $2 AND bank_transaction_id = $3) AS refused,"
    " (SELECT reason FROM unapplied_deposits WHERE bank_id = $2 AND bank_transaction_id = $3) AS refused_reason,"
    f" {_PAID_CARD.format(bank='$2', transaction='$3')} AS paid_card"
)
_PAYABLE = "c.*, a.bank_id AS account_bank_id, a.status AS account_status, p.validity_days"
_PAYABLE_FROM = " FROM cards c JOIN escrow_accounts a ON a.id = c.escrow_account_id JOIN plans p ON p.id = c.plan_id"
_DEPOSIT = f"SELECT {_PAYABLE}, {_HISTORY}{_PAYABLE_FROM} WHERE c.payment_reference = $1 FOR NO KEY UPDATE OF c"
_PAYABLE_BY_ID = f"SELECT {_PAYABLE}{_PAYABLE_FROM} WHERE c.id = $1 FOR NO KEY UPDATE OF c"
_NO_CARD = f"SELECT {_HISTORY} FROM (SELECT $1::text) AS reference"


async def confirm_deposit(
    session: AsyncSession, settings: Settings, principal: Principal, data: DepositReport
) -> db.Row:
    """Apply a deposit the bank reports (entry 1 of domain.md §4), idempotent on the bank's transaction id.

    A deposit that can't be applied — unknown reference, wrong amount, a card already paid, an account that
    can't take money — is refused and kept as unapplied for reconciliation; its money is never put on a card.
    """
    card = await db.one(session, _DEPOSIT, data.payment_reference, principal.id, data.bank_transaction_id)
    history = card or await db.one(session, _NO_CARD, data.payment_reference, principal.id, data.bank_transaction_id)
    assert history is not None
    if history.refused is not None:
        raise DepositRefused(history.refused, reason=history.refused_reason)

    def refuse(reason: str, detail: str, status: int = 422) -> DepositRefused:
        kind = DepositRefused if status == 422 else DepositNotApplicable
        return kind(
            detail,
            reason=reason,
            keep=[
                UnappliedDeposit(
                    bank_id=principal.id,
                    bank_transaction_id=data.bank_transaction_id,
                    payment_reference=data.payment_reference,
                    amount=data.amount.amount,
                    reason=reason,
                    detail=detail,
                )
            ],
        )

    if card is None or card.account_bank_id != principal.id:
        raise refuse("unknown_reference", f"no card awaits payment reference {data.payment_reference} at this bank")
    if card.deposit_transaction_id == data.bank_transaction_id:
        return card  # the same deposit reported again
    if card.predecessor_card_id is not None:  # paid by the transfer from the closing merchant, never by a deposit
        raise refuse("unknown_reference", f"no card awaits payment reference {data.payment_reference} at this bank")
    if card.paid_card is not None:
        raise refuse(
            "transaction_already_applied",
            f"bank transaction {data.bank_transaction_id} already paid card {card.paid_card}",
            409,
        )
    if card.status == "cancelled":
        raise refuse("card_cancelled", f"card {card.id} was cancelled unpaid (its merchant closed)", 409)
    if card.status != "awaiting_payment":
        raise refuse("already_paid", f"card {card.id} is {card.status}; this payment can't be applied", 409)
    if data.amount.amount != card.price:
        raise refuse(
            "amount_mismatch", f"card {card.id} costs {card.price} fen; the deposit is {data.amount.amount} fen"
        )
    if card.account_status != "active":
        raise refuse("account_not_active", f"escrow account {card.escrow_account_id} is {card.account_status}", 409)
    return await activate_paid(session, settings, card, principal.id, data.bank_transaction_id, "deposit")


_PAID_BY = f"SELECT {_PAID_CARD.format(bank='$1', transaction='$2')}"


async def paid_by(session: AsyncSession, bank_id: str, bank_transaction_id: str) -> str | None:
    """The card a bank's transaction already paid, if any (however the payment was told: reported or attached)."""
    return await db.fetchval(session, _PAID_BY, bank_id, bank_transaction_id)


async def lock_payable(session: AsyncSession, card_id: str) -> db.Row | None:
    """A card, locked, with what paying it needs (its escrow account's bank and status, its plan's validity)."""
    return await db.one(session, _PAYABLE_BY_ID, card_id)


async def activate_paid(
    session: AsyncSession, settings: Settings, card: db.Row, principal: str, bank_transaction_id: str, how: str
) -> db.Row:
    """A card awaiting payment (a row of :func:`lock_payable`) is paid by a bank transaction (``how``: a ``deposit``
    the bank reported, or a ``statement`` line reconciliation attached to it): the money goes into custody, the
    card's validity starts."""
    await _post_paid(session, card, principal, bank_transaction_id, how)
    now = utcnow()
    card.status = "active"
    card.deposit_transaction_id = bank_transaction_id
    card.paid_at = now
    card.starts_on = business_date(now, settings.business_timezone)
    card.valid_until = card.starts_on + timedelta(days=card.validity_days - 1)
    await save_row(session, card, "status", "deposit_transaction_id", "paid_at", "starts_on", "valid_until")
    await notices.add(
        session, notices.CARD_PAID, card.id, {"amount": card.price, "protected": card.protected_paid}, card.id
    )
    return card


def payment_ref(how: str, bank_transaction_id: str) -> str:
    """The ledger's idempotency reference of a card's payment. A bank transaction pays one card, however it was
    told (a deposit the bank reported, a statement line reconciliation attached): one reference for both, so the
    ledger's unique index refuses a second payment by the same transaction in the escrow account even when the
    two race past the checks before it."""
    return f"{'transfer' if how == 'transfer' else 'paid'}:{bank_transaction_id}"


async def _post_paid(
    session: AsyncSession, card: Card | db.Row, principal: str, bank_transaction_id: str, how: str
) -> None:
    """Entry 1 of domain.md §4: the card's custodied part into custody, the rest the merchant's obligation."""
    legs: list[ledger.Leg] = []
    if card.protected_paid:
        legs += ledger.transfer("custody_cash", card_code(card.id), card.protected_paid)
    if card.price > card.protected_paid:
        legs += ledger.transfer("merchant_obligation", unprotected_code(card.id), card.price - card.protected_paid)
    codes = [card_code(card.id)] + ([unprotected_code(card.id)] if card.price > card.protected_paid else [])
    await ledger.open_accounts(session, card.escrow_account_id, codes)
    await ledger.post(
        session,
        ledger.Entry(
            card.escrow_account_id,
            "card_paid",
            legs,
            refs={"card_id": card.id, "bank_transaction_id": bank_transaction_id, "paid_by": how},
            principal=principal,
            idempotency_ref=payment_ref(how, bank_transaction_id),
        ),
    )


async def activate_transferred(session: AsyncSession, card_id: str, amount: int, bank_transaction_id: str) -> Card:
    """A card taken over by a successor becomes active when the closing merchant's bank has moved its custodied
    funds (``amount``) into the successor's escrow account; it keeps its validity and terms."""
    card = await lock(session, card_id)
    if card.status != "awaiting_payment" or card.protected_paid != amount:
        raise Conflict(f"card {card.id} is {card.status} and takes {card.protected_paid} fen, not {amount}")
    await _post_paid(session, card, "system:takeover", bank_transaction_id, "transfer")
    card.status = "active"
    card.deposit_transaction_id = bank_transaction_id
    card.paid_at = card.paid_at or utcnow()  # the consumer's own payment date: no second cooling-off
    await session.flush()
    return card


@dataclass(frozen=True)
class CardBalances:
    protected: int  # custodied value left on the card, pending services included
    unprotected: int
    pending: int  # value held by services awaiting confirmation or in dispute

    @property
    def remaining(self) -> int:
        return self.protected + self.unprotected


async def balances(session: AsyncSession, card: Card) -> CardBalances:
    if card.status in ("awaiting_payment", "cancelled"):  # never paid: no ledger accounts
        return CardBalances(0, 0, 0)
    protected = await ledger.balance(session, card.escrow_account_id, card_code(card.id))
    unprotected_posted = unprotected_pending = 0
    if card.price > card.protected_paid:
        unprotected = await ledger.balance(session, card.escrow_account_id, unprotected_code(card.id))
        unprotected_posted, unprotected_pending = unprotected.posted, unprotected.pending
    return CardBalances(protected.posted, unprotected_posted, protected.pending + unprotected_pending)


async def list_visible(
    session: AsyncSession,
    principal: Principal,
    *,
    status: str | None,
    merchant_id: str | None,
    after: str | None,
    limit: int,
) -> list[Card]:
    query = select(Card).order_by(Card.id).limit(limit + 1)
    if principal.role == "merchant":
        query = query.where(Card.merchant_id == principal.id)
    elif principal.role == "consumer":
        query = query.where(Card.consumer_id == principal.id)
    elif principal.role == "bank":
        query = query.join(EscrowAccount, EscrowAccount.id == Card.escrow_account_id).where(
            EscrowAccount.bank_id == principal.id
        )
    if status is not None:
        query = query.where(Card.status == status)
    if merchant_id is not None:
        query = query.where(Card.merchant_id == merchant_id)
    if after is not None:
        query = query.where(Card.id > after)
    return list(await session.scalars(query))


@dataclass(frozen=True)
class HistoryItem:
    entry_id: int
    occurred_at: datetime
    event: str
    amount: int
    protected: int
    refs: dict


_EVENT = {
    "posted": None,
    "pending": "held",
    "post_pending": "released",
    "void_pending": "voided",
    "expire_pending": "expired",
}


async def history(session: AsyncSession, card: Card, *, before: int | None, limit: int) -> list[HistoryItem]:
    """The card's movements, newest first: one line per journal entry touching its two accounts.

    An entry that resolves a hold carries two kinds of posting on the card: the hold's release (``release``) and,
    when it posts the hold, the movement itself (``posted``). A posted hold is counted by what it moved only —
    counting its release too would show every confirmed service twice over; a voided or expired one by what it
    gave back (its only postings)."""
    rows = await session.execute(
        text(
            "SELECT e.id, e.occurred_at, e.kind, e.type, e.refs,"
            "  sum(p.amount) AS amount, coalesce(sum(p.amount) FILTER (WHERE a.code = :card), 0) AS protected"
            " FROM ledger_accounts a"
            " JOIN ledger_postings p ON p.account_id = a.id"
            " JOIN ledger_entries e ON e.id = p.entry_id"
            " WHERE a.escrow_account_id = :book AND a.code IN (:card, :unprotected)"
            "   AND NOT (e.type = 'post_pending' AND p.kind = 'release')"
            "   AND (CAST(:before AS bigint) IS NULL OR e.id < :before)"
            " GROUP BY e.id ORDER BY e.id DESC LIMIT :limit"
        ),
        {
            "book": card.escrow_account_id,
            "card": card_code(card.id),
            "unprotected": unprotected_code(card.id),
            "before": before,
            "limit": limit,
        },
    )
    items = []
    for entry_id, occurred_at, kind, entry_type, refs, amount, protected in rows:
        suffix = _EVENT.get(entry_type)
        event = kind if suffix is None else f"{kind}_{suffix}"
        items.append(HistoryItem(entry_id, occurred_at, event, int(amount), int(protected), refs or {}))
    return items


async def account_totals(session: AsyncSession, principal: Principal, escrow_account_id: str) -> dict[str, int]:
    account = await session.get(EscrowAccount, escrow_account_id)
    visible = account is not None and (
        principal.role == "regulator"
        or (principal.role == "bank" and account.bank_id == principal.id)
        or (principal.role == "merchant" and account.merchant_id == principal.id)
    )
    if not visible:
        raise NotFound(f"no escrow account {escrow_account_id}")
    row = (
        await session.execute(
            text(
                "SELECT"
                " coalesce(sum(t.bal) FILTER (WHERE t.code = 'custody_cash'), 0),"
                " coalesce(sum(t.bal) FILTER (WHERE t.code LIKE 'card:%'), 0),"
                " coalesce(sum(t.bal) FILTER (WHERE t.code LIKE 'card_unprotected:%'), 0),"
                " coalesce(sum(t.bal) FILTER (WHERE t.code = 'merchant_payable'), 0),"
                " coalesce(sum(t.bal) FILTER (WHERE t.code = 'refund_payable'), 0),"
                " coalesce(sum(t.pend) FILTER (WHERE t.code = 'merchant_payable'), 0),"
                " coalesce(sum(t.bal) FILTER (WHERE t.code = 'custody_difference'), 0)"
                " FROM (SELECT a.code,"
                "   CASE a.normal_side"
                "     WHEN 'D' THEN a.posted_debits - a.posted_credits"
                "       + coalesce(sum(s.posted_debits - s.posted_credits), 0)"
                "     ELSE a.posted_credits - a.posted_debits + coalesce(sum(s.posted_credits - s.posted_debits), 0)"
                "   END AS bal,"
                "   a.pending_debits + coalesce(sum(s.pending_debits), 0) AS pend"
                "   FROM ledger_accounts a LEFT JOIN ledger_account_slots s ON s.account_id = a.id"
                "   WHERE a.escrow_account_id = :book GROUP BY a.id) t"
            ),
            {"book": escrow_account_id},
        )
    ).one()
    counts = dict(
        (
            await session.execute(
                select(Card.status, func.count())
                .where(Card.escrow_account_id == escrow_account_id, Card.status.in_(LIVE_STATES))
                .group_by(Card.status)
            )
        ).all()
    )
    keys = (
        "custody_cash",
        "cards_protected",
        "cards_unprotected",
        "merchant_payable",
        "refund_payable",
        "payouts_in_flight",
        "custody_difference",
    )
    totals = {key: int(value) for key, value in zip(keys, row, strict=True)}
    totals["cards_active"] = counts.get("active", 0)
    totals["cards_awaiting_payment"] = counts.get("awaiting_payment", 0)
    return totals


async def unapplied_deposits(session: AsyncSession, principal: Principal, limit: int) -> list[UnappliedDeposit]:
    query = select(UnappliedDeposit).order_by(UnappliedDeposit.received_at.desc()).limit(limit)
    if principal.role == "bank":
        query = query.where(UnappliedDeposit.bank_id == principal.id)
    return list(await session.scalars(query))
