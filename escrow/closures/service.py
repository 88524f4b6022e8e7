"""Closures: when a merchant closes, every consumer gets their unused value back (domain.md §4 events 5-6, §5).

The life of a closure:

1. **Announced** by the merchant (effective ≥ ``closure_notice_days`` ahead: sales stop at once, services go
   on until the date) or **ordered** by the regulator (effective at once). The merchant is ``closing``.
2. **Frozen** on the effective date (a job, or at once when ordered), in one transaction per merchant: open
   refund requests are superseded, unpaid sales cancelled, and the escrow accounts frozen behind the ledger's
   cut-off lock (the ledger refuses every movement except a settlement's; see ``ledger.settlement_window``).
   Right after, in a transaction of its own (the jobs, or computing the plan), services still awaiting
   confirmation are voided and payouts the bank has not taken are cancelled (``release_holds``).
3. The **plan** is computed by one set-based statement: one item per card with value left (and per earlier
   refund the merchant still owes), saying what custody pays, what the merchant's unpaid ``merchant_payable``
   covers by set-off, what the first-compensation fund pays within its cap (pro rata when it is short, the rest
   owed), and what stays the consumer's unpaid claim. Cards whose consumer accepted a takeover move to the
   successor instead.
4. **Settling**: starting fixes the plan against the fund's balance at that moment (under the fund's lock, so
   two closures never count the same money); items are then executed in batches, one transaction per batch,
   each item's movements, instructions and its ``done`` mark written together — a crash loses a whole batch
   or nothing, and a rerun continues where the last committed batch ended.
5. **Settled** when every item is done; **confirmed** by the regulator, which pays the surplus (what is left of
   ``merchant_payable``) to the merchant and closes the merchant and its escrow accounts.

Rounding (all integer fen): shares of a pool (set-off within an escrow account, the fund across a closure) are
given cumulatively in plan order — item k gets ⌊pool·C_k/T⌋ - ⌊pool·C_{k-1}/T⌋ where C_k is the running total
of the claims and T their sum — so the shares add up to the pool exactly and no item gets more than its claim.
The fund's cap applies per consumer per closure, to the consumer's items in plan order.
"""

import json
import secrets
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from escrow import ledger, notices
from escrow.auth.tokens import Principal
from escrow.cards import service as cards
from escrow.closures.schemas import ClosureCreate, TakeoverProposal
from escrow.config import Settings
from escrow.consumptions import service as consumptions
from escrow.errors import Conflict, FieldInvalid, NotFound
from escrow.fund import service as fund
from escrow.kit.clock import business_date, utcnow
from escrow.kit.ids import new_id
from escrow.models import (
    Card,
    Closure,
    ClosureItem,
    ConsumerLink,
    Consumption,
    EscrowAccount,
    Instruction,
    Merchant,
    Refund,
    TakeoverDecision,
)
from escrow.payouts import service as payouts

OPEN_STATES = ("announced", "frozen")  # before the plan is fixed
Fault = Callable[[str], None]  # test hook: called at points of a batch; raising there aborts the batch


class InvalidState(Conflict):
    code = "invalid_state"
    title = "Not possible in the closure's state"


class TakeoverOpen(Conflict):
    code = "takeover_open"
    title = "Consumers may still answer the takeover"


class PlanStale(Conflict):
    code = "plan_stale"
    title = "A card changed since the plan was computed"


# --- reading ---------------------------------------------------------------------------------------------


def _visible(principal: Principal, closure: Closure) -> bool:
    return principal.role == "regulator" or (
        principal.role == "merchant" and principal.id in (closure.merchant_id, closure.successor_merchant_id)
    )


async def get(
    session: AsyncSession, principal: Principal, closure_id: str, *, lock: bool = False, items: bool = False
) -> Closure:
    """A closure the caller may see (``items``: its consumers' items too, which the successor may not)."""
    closure = await session.get(Closure, closure_id)
    if closure is None or not _visible(principal, closure):
        raise NotFound(f"no closure {closure_id}")
    if items and principal.role == "merchant" and principal.id != closure.merchant_id:
        raise NotFound(f"no closure {closure_id}")
    if lock:
        closure = await session.get(Closure, closure_id, with_for_update=True, populate_existing=True)
        assert closure is not None
    return closure


async def list_visible(session: AsyncSession, principal: Principal) -> list[Closure]:
    query = select(Closure).order_by(Closure.announced_at, Closure.id)
    if principal.role == "merchant":
        query = query.where((Closure.merchant_id == principal.id) | (Closure.successor_merchant_id == principal.id))
    return list(await session.scalars(query))


@dataclass(frozen=True)
class Totals:
    items: int
    done: int
    unused: int
    from_custody: int
    set_off: int
    fund_paid: int
    fund_owed: int
    fund_owed_paid: int
    unpaid: int
    transferred: int
    assumed: int


async def totals(session: AsyncSession, closure_id: str) -> Totals:
    row = (
        await session.execute(
            select(
                func.count(),
                func.count().filter(ClosureItem.status == "done"),
                *(
                    func.coalesce(func.sum(getattr(ClosureItem, column)), 0)
                    for column in (
                        "unused",
                        "from_custody",
                        "set_off",
                        "fund_paid",
                        "fund_owed",
                        "fund_owed_paid",
                        "unpaid",
                        "transferred",
                        "assumed",
                    )
                ),
            ).where(ClosureItem.closure_id == closure_id)
        )
    ).one()
    return Totals(*(int(value) for value in row))


async def items_page(
    session: AsyncSession, closure_id: str, *, after: int | None, limit: int, consumer_id: str | None = None
) -> list[ClosureItem]:
    query = select(ClosureItem).where(ClosureItem.closure_id == closure_id).order_by(ClosureItem.seq).limit(limit + 1)
    if after is not None:
        query = query.where(ClosureItem.seq > after)
    if consumer_id is not None:
        query = query.where(ClosureItem.consumer_id == consumer_id)
    return list(await session.scalars(query))


async def consumer_statements(session: AsyncSession, consumer_id: str) -> list[ClosureItem]:
    """What each of a consumer's cards and claims got in closures, and from where."""
    return list(
        await session.scalars(
            select(ClosureItem).where(ClosureItem.consumer_id == consumer_id).order_by(ClosureItem.id).limit(500)
        )
    )


# --- announcing and freezing -----------------------------------------------------------------------------


async def open_closure(session: AsyncSession, settings: Settings, principal: Principal, data: ClosureCreate) -> Closure:
    """The merchant announces its closure, or the regulator orders one (at once, or from a date)."""
    if principal.role == "merchant" and data.merchant_id not in (None, principal.id):
        raise FieldInvalid("merchant_id", "a merchant can only announce its own closure: leave merchant_id out")
    merchant_id = principal.id if principal.role == "merchant" else data.merchant_id
    if merchant_id is None:
        raise FieldInvalid("merchant_id", "required: the merchant to close")
    # the merchant row is locked, as sales lock it: a sale and the closure can't cross
    merchant = await session.get(Merchant, merchant_id, with_for_update=cards.NO_KEY_UPDATE)
    if merchant is None:
        raise FieldInvalid("merchant_id", f"no merchant {merchant_id}")
    if merchant.status not in ("active", "suspended"):
        raise InvalidState(f"merchant {merchant.id} is {merchant.status}")
    if await session.scalar(select(Closure.id).where(Closure.merchant_id == merchant.id)) is not None:
        raise InvalidState(f"merchant {merchant.id} already has a closure")
    now = utcnow()
    today = business_date(now, settings.business_timezone)
    if principal.role == "merchant":
        earliest = today + timedelta(days=settings.closure_notice_days)
        if data.effective_on is None or data.effective_on < earliest:
            raise FieldInvalid(
                "effective_on",
                f"an announced closure takes effect on {earliest} or later "
                f"({settings.closure_notice_days} days' notice, closure_notice_days)",
            )
        mode, effective_on = "announced", data.effective_on
    else:
        if data.effective_on is not None and data.effective_on < today:
            raise FieldInvalid("effective_on", f"must be today ({today}) or later; leave it out to close at once")
        effective_on = data.effective_on or today
        mode = "ordered" if effective_on == today else "announced"
    closure = Closure(
        id=new_id("clo"),
        merchant_id=merchant.id,
        mode=mode,
        status="announced",
        reason=data.reason,
        requested_by=principal.id,
        effective_on=effective_on,
    )
    session.add(closure)
    merchant.status = "closing"  # no sales from now on
    await session.flush()
    facts = {"closure_id": closure.id, "mode": mode, "effective_on": effective_on}
    await notices.add_for_merchant_cards(session, notices.CLOSURE, merchant.id, facts, closure.id)
    if effective_on <= today:
        await freeze(session, closure, principal.id)
    return closure


async def freeze(session: AsyncSession, closure: Closure, principal: str) -> None:
    """The closure moment, in one transaction: no sales, no services, no releases, no payouts from here on.

    Row changes come first and the ledger's cut-off last (movements under way finish first, none starts after it
    unseen): nothing is locked after the cut-off, so no transaction waiting on the ledger can be waiting on this
    one. What is still held (services, payouts the bank hasn't taken) is released next, by ``release_holds``."""
    now = utcnow()
    accounts = list(
        await session.scalars(
            select(EscrowAccount)
            .where(EscrowAccount.merchant_id == closure.merchant_id, EscrowAccount.status.in_(("active", "frozen")))
            .order_by(EscrowAccount.id)
            .with_for_update(key_share=True)
        )
    )
    await session.execute(
        update(Refund)
        .where(
            Refund.status == "requested",
            Refund.card_id.in_(select(Card.id).where(Card.merchant_id == closure.merchant_id)),
        )
        .values(status="rejected", reason=f"superseded by closure {closure.id}: the card is settled by it")
    )
    await session.execute(
        update(Card)
        .where(Card.merchant_id == closure.merchant_id, Card.status == "awaiting_payment")
        .values(status="cancelled", closed_at=now)
    )
    for account in accounts:
        account.status = "frozen"
        account.freeze_reason = f"{payouts.CLOSURE_FREEZE}{closure.id}"
    closure.status = "frozen"
    closure.frozen_at = now
    await session.flush()
    for account in accounts:
        await ledger.freeze_book(session, account.id, "all")


async def release_holds(session: AsyncSession, closure: Closure) -> int:
    """After the freeze, in a transaction of its own: void the services still held on the cards (their value goes
    back on the card) and cancel the payouts the bank hasn't taken. Idempotent; returns how many it released.

    The rows are locked first and the ledger's cut-off (``settlement_window``) last — the order every movement
    takes them in (a consumer's late confirmation holds its card, then meets the frozen ledger and gives up)."""
    await session.flush()
    principal = f"closure:{closure.id}"
    released = 0
    accounts = await session.scalars(
        select(EscrowAccount.id)
        .where(
            EscrowAccount.merchant_id == closure.merchant_id,
            EscrowAccount.freeze_reason == f"{payouts.CLOSURE_FREEZE}{closure.id}",
        )
        .order_by(EscrowAccount.id)
    )
    for account_id in list(accounts):
        held = (
            await session.execute(
                select(Consumption.id, Consumption.card_id).where(
                    Consumption.escrow_account_id == account_id,
                    Consumption.status.in_(("pending_confirmation", "disputed")),
                )
            )
        ).all()
        locked = {
            card.id: card
            for card in await session.scalars(
                select(Card)
                .where(Card.id.in_(sorted({card_id for _, card_id in held})))
                .order_by(Card.id)
                .with_for_update(key_share=True)
                .execution_options(populate_existing=True)
            )
        }
        services = list(
            await session.scalars(
                select(Consumption)
                .where(
                    Consumption.id.in_([consumption_id for consumption_id, _ in held]),
                    Consumption.status.in_(("pending_confirmation", "disputed")),
                )
                .order_by(Consumption.id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        )
        unsent = list(
            await session.scalars(
                select(Instruction.id)
                .where(
                    Instruction.escrow_account_id == account_id,
                    Instruction.kind == "payout",
                    Instruction.status == "pending",
                )
                .order_by(Instruction.id)
                .with_for_update()
            )
        )
        if not services and not unsent:
            continue
        async with ledger.settlement_window(session, account_id):
            for consumption in services:
                await consumptions.void(session, locked[consumption.card_id], consumption, principal)
            released += len(services) + await payouts.cancel_unsent_payouts(session, account_id, principal)
    await session.flush()
    return released


async def release_due(session: AsyncSession) -> int:
    """The jobs release what is still held in frozen closures, one closure per call."""
    for closure_id in await session.scalars(
        select(Closure.id).where(Closure.status == "frozen").order_by(Closure.frozen_at, Closure.id)
    ):
        closure = await session.get(Closure, closure_id, with_for_update=True, populate_existing=True)
        if closure is not None and closure.status == "frozen" and await release_holds(session, closure):
            return 1
    return 0


async def freeze_due(session: AsyncSession, settings: Settings, now: datetime, limit: int) -> int:
    """Announced closures whose effective date has come are frozen (a job)."""
    today = business_date(now, settings.business_timezone)
    due = list(
        await session.scalars(
            select(Closure.id)
            .where(Closure.status == "announced", Closure.effective_on <= today)
            .order_by(Closure.effective_on, Closure.id)
            .limit(limit)
        )
    )
    frozen = 0
    for closure_id in due:
        closure = await session.get(Closure, closure_id, with_for_update=True, populate_existing=True)
        if closure is None or closure.status != "announced":
            continue
        await freeze(session, closure, "system:closure")
        frozen += 1
    return frozen


# --- takeover --------------------------------------------------------------------------------------------


async def propose_takeover(
    session: AsyncSession, principal: Principal, closure_id: str, data: TakeoverProposal
) -> Closure:
    closure = await get(session, principal, closure_id, lock=True)
    if principal.role == "merchant" and principal.id != closure.merchant_id:
        raise NotFound(f"no closure {closure_id}")  # the successor can't propose itself
    if closure.status not in OPEN_STATES:
        raise InvalidState(f"closure {closure.id} is {closure.status}: too late for a takeover")
    if data.successor_merchant_id == closure.merchant_id:
        raise FieldInvalid("successor_merchant_id", "the successor must be another merchant")
    successor = await session.get(Merchant, data.successor_merchant_id)
    if successor is None or successor.status != "active":
        raise FieldInvalid("successor_merchant_id", f"no active merchant {data.successor_merchant_id}")
    account = await session.scalar(
        select(EscrowAccount)
        .where(EscrowAccount.merchant_id == successor.id, EscrowAccount.status == "active")
        .order_by(EscrowAccount.id)
        .limit(1)
    )
    if account is None:
        raise FieldInvalid("successor_merchant_id", "the successor has no active escrow account to take the cards")
    if data.deadline <= utcnow():
        raise FieldInvalid("deadline", "must be in the future")
    closure.successor_merchant_id = successor.id
    closure.successor_escrow_account_id = account.id
    closure.takeover_deadline = data.deadline
    await session.execute(delete(TakeoverDecision).where(TakeoverDecision.closure_id == closure.id))
    await session.flush()
    facts = {"closure_id": closure.id, "successor": successor.name, "deadline": data.deadline}
    offer = f"{closure.id}:{successor.id}:{data.deadline.isoformat()}"
    await notices.add_for_merchant_cards(session, notices.TAKEOVER_OFFERED, closure.merchant_id, facts, offer)
    return closure


async def decide_takeover(session: AsyncSession, principal: Principal, card_id: str, decision: str) -> TakeoverDecision:
    """A consumer accepts the move of a card to the successor, or declines it (and is refunded)."""
    card = await cards.get(session, principal, card_id)
    # the closure first, then the card: the order the freeze and the settlement lock them in
    closure = await session.scalar(select(Closure).where(Closure.merchant_id == card.merchant_id).with_for_update())
    if closure is None or closure.successor_merchant_id is None or closure.takeover_deadline is None:
        raise InvalidState(f"no takeover is proposed for card {card.id}")
    card = await cards.lock(session, card.id)
    if closure.status not in OPEN_STATES or utcnow() >= closure.takeover_deadline:
        raise InvalidState(f"the takeover of closure {closure.id} is no longer open (deadline passed or settling)")
    if card.status != "active":
        raise cards.CardNotActive(f"card {card.id} is {card.status}")
    row = await session.get(TakeoverDecision, (closure.id, card.id), with_for_update=True)
    if row is None:
        row = TakeoverDecision(closure_id=closure.id, card_id=card.id, decision=decision)
        session.add(row)
    else:
        row.decision = decision  # a consumer may change their mind before the deadline
        row.decided_at = utcnow()
    await session.flush()
    return row


# --- the plan --------------------------------------------------------------------------------------------

# One statement: every card with value left and every earlier refund the merchant still owes becomes an item;
# set-off shares per escrow account and fund shares across the closure by the cumulative rule above.
_PLAN = text(
    """
WITH pools AS (
    SELECT * FROM unnest(CAST(:pool_accounts AS text[]), CAST(:pool_amounts AS bigint[])) AS p(account, pool)
), base AS (
    SELECT 'card' AS kind, c.escrow_account_id, c.consumer_id, c.id AS card_id, NULL::text AS refund_id,
           c.price - c.consumed - c.refunded AS unused,
           c.protected_paid - c.protected_out AS protected,
           coalesce(d.decision = 'accept', false) AS takeover
      FROM cards c
      LEFT JOIN takeover_decisions d ON d.closure_id = :closure AND d.card_id = c.id
     WHERE c.merchant_id = :merchant AND c.status = 'active' AND c.price - c.consumed - c.refunded > 0
    UNION ALL
    SELECT 'claim', r.escrow_account_id, r.consumer_id, r.card_id, r.id, r.merchant_owes, 0, false
      FROM refunds r JOIN cards c ON c.id = r.card_id
     WHERE c.merchant_id = :merchant AND r.merchant_owes > 0 AND r.cause <> 'closure'
       AND r.status IN ('approved', 'instructed', 'paid')
), numbered AS (
    SELECT b.*, row_number() OVER (ORDER BY b.escrow_account_id, b.kind, b.card_id, b.refund_id) AS seq,
           CASE WHEN b.takeover THEN 0 ELSE b.unused - b.protected END AS q
      FROM base b
), setoff AS (
    SELECT n.*, coalesce(p.pool, 0) AS pool,
           sum(n.q) OVER (PARTITION BY n.escrow_account_id) AS q_total,
           sum(n.q) OVER (PARTITION BY n.escrow_account_id ORDER BY n.seq) AS q_upto
      FROM numbered n LEFT JOIN pools p ON p.account = n.escrow_account_id
), shares AS (
    SELECT s.*,
           CASE WHEN s.q = 0 THEN 0
                WHEN s.pool >= s.q_total THEN s.q
                ELSE (div(s.pool::numeric * s.q_upto, s.q_total)
                      - div(s.pool::numeric * (s.q_upto - s.q), s.q_total))::bigint
           END AS set_off
      FROM setoff s
), capped AS (
    SELECT sh.*,
           greatest(0, least(sh.q - sh.set_off,
                             :cap - coalesce(sum(sh.q - sh.set_off) OVER (
                                 PARTITION BY sh.consumer_id ORDER BY sh.seq
                                 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0))) AS demand
      FROM shares sh
), fund AS (
    SELECT c.*, sum(c.demand) OVER () AS d_total, sum(c.demand) OVER (ORDER BY c.seq) AS d_upto FROM capped c
), final AS (
    SELECT f.*,
           CASE WHEN f.demand = 0 THEN 0
                WHEN :available >= f.d_total THEN f.demand
                ELSE (div(CAST(:available AS numeric) * f.d_upto, f.d_total)
                      - div(CAST(:available AS numeric) * (f.d_upto - f.demand), f.d_total))::bigint
           END AS fund_paid
      FROM fund f
), lines AS (
    SELECT seq, kind, CASE WHEN takeover THEN 'transfer' ELSE 'refund' END AS decision, escrow_account_id,
           consumer_id, card_id, refund_id, unused,
           CASE WHEN takeover THEN 0 ELSE protected END AS from_custody,
           set_off, fund_paid, demand - fund_paid AS fund_owed, q - set_off - demand AS unpaid,
           CASE WHEN takeover THEN protected ELSE 0 END AS transferred,
           CASE WHEN takeover THEN unused - protected ELSE 0 END AS assumed
      FROM final
), kept AS (
    -- a line of the plan computed before (same card, or same earlier refund) keeps its id; revised_at marks it when
    -- its figures changed
    UPDATE closure_items i
       SET seq = l.seq, decision = l.decision, escrow_account_id = l.escrow_account_id,
           consumer_id = l.consumer_id, unused = l.unused, from_custody = l.from_custody, set_off = l.set_off,
           fund_paid = l.fund_paid, fund_owed = l.fund_owed, unpaid = l.unpaid, transferred = l.transferred,
           assumed = l.assumed,
           revised_at = CASE WHEN (i.decision, i.unused, i.from_custody, i.set_off, i.fund_paid, i.fund_owed,
                                   i.unpaid, i.transferred, i.assumed)
                                  IS DISTINCT FROM (l.decision, l.unused, l.from_custody, l.set_off, l.fund_paid,
                                                    l.fund_owed, l.unpaid, l.transferred, l.assumed)
                             THEN CAST(:now AS timestamptz) ELSE i.revised_at END
      FROM lines l
     WHERE i.closure_id = :closure AND i.kind = l.kind AND i.card_id IS NOT DISTINCT FROM l.card_id
       AND i.refund_id IS NOT DISTINCT FROM l.refund_id
    RETURNING i.id
)
INSERT INTO closure_items (closure_id, seq, kind, decision, status, escrow_account_id, consumer_id, card_id,
                           refund_id, unused, from_custody, set_off, fund_paid, fund_owed, fund_owed_paid, unpaid,
                           transferred, assumed, revised_at)
SELECT :closure, seq, kind, decision, 'planned', escrow_account_id, consumer_id, card_id, refund_id, unused,
       from_custody, set_off, fund_paid, fund_owed, 0, unpaid, transferred, assumed,
       CASE WHEN :recomputed THEN CAST(:now AS timestamptz) END
  FROM lines l
 WHERE NOT EXISTS (SELECT 1 FROM closure_items i WHERE i.closure_id = :closure AND i.kind = l.kind
                     AND i.card_id IS NOT DISTINCT FROM l.card_id AND i.refund_id IS NOT DISTINCT FROM l.refund_id)
"""
)


async def compute_plan(session: AsyncSession, settings: Settings, closure: Closure, fund_available: int) -> int:
    """(Re)write the closure's items from the cards as they stand (frozen); returns how many there are.

    Computed again (the regulator asks again, or the settlement starts and fixes the fund's share under its lock),
    each line of the plan shown before keeps its id — a card's line, or an earlier refund's — so what was read
    (``GET …/items``, ``plan.csv``) and the instructions that pay it name the same items; a line whose figures
    changed is marked ``revised_at`` (the closure's new ``planned_at``), a line new since then too, and a line
    that is no longer owed is dropped."""
    now = utcnow()
    recomputed = closure.planned_at is not None
    # positions are given again from 1: the old ones step aside first (the index on them is checked row by row)
    await session.execute(update(ClosureItem).where(ClosureItem.closure_id == closure.id).values(seq=-ClosureItem.seq))
    pools: dict[str, int] = {}
    for account_id in await session.scalars(
        select(EscrowAccount.id).where(EscrowAccount.merchant_id == closure.merchant_id).order_by(EscrowAccount.id)
    ):
        try:
            pools[account_id] = (await ledger.balance(session, account_id, "merchant_payable")).available
        except ledger.UnknownAccount:
            continue  # never activated: no ledger
    await session.execute(
        _PLAN,
        {
            "closure": closure.id,
            "merchant": closure.merchant_id,
            "pool_accounts": list(pools),
            "pool_amounts": list(pools.values()),
            "cap": settings.fund_cap_per_consumer,
            "available": fund_available,
            "now": now,
            "recomputed": recomputed,
        },
    )
    await session.execute(delete(ClosureItem).where(ClosureItem.closure_id == closure.id, ClosureItem.seq < 0))
    closure.items_total = int(
        await session.scalar(select(func.count()).where(ClosureItem.closure_id == closure.id)) or 0
    )
    closure.items_done = 0
    closure.planned_at = now
    await session.flush()
    return closure.items_total


async def plan(session: AsyncSession, settings: Settings, principal: Principal, closure_id: str) -> Closure:
    """Compute (or compute again) the plan of a frozen closure, to be seen before it is executed. The fund's
    share is counted with its balance now; starting the settlement counts it again and fixes it."""
    closure = await get(session, principal, closure_id, lock=True)
    if closure.status != "frozen":
        raise InvalidState(f"closure {closure.id} is {closure.status}: the plan is computed once it is frozen")
    await release_holds(session, closure)
    await compute_plan(session, settings, closure, await fund.available(session))
    return closure


async def start(session: AsyncSession, settings: Settings, principal: Principal, closure_id: str) -> Closure:
    """Fix the plan and start executing it (in batches: the jobs, or ``escrow closure settle``)."""
    closure = await get(session, principal, closure_id, lock=True)
    if closure.status != "frozen":
        raise InvalidState(f"closure {closure.id} is {closure.status}, not frozen")
    if closure.takeover_deadline is not None and utcnow() < closure.takeover_deadline:
        undecided = await session.scalar(
            select(func.count())
            .select_from(Card)
            .where(
                Card.merchant_id == closure.merchant_id,
                Card.status == "active",
                ~select(TakeoverDecision.card_id)
                .where(TakeoverDecision.closure_id == closure.id, TakeoverDecision.card_id == Card.id)
                .exists(),
            )
        )
        if undecided:
            raise TakeoverOpen(
                f"{undecided} consumers have not answered the takeover; it is open until {closure.takeover_deadline}"
            )
    await release_holds(session, closure)
    await fund.lock(session)  # two closures starting at once never count the same money
    await compute_plan(session, settings, closure, await fund.available(session))
    closure.status = "settling"
    closure.settling_at = utcnow()
    await session.flush()
    return closure


# --- execution -------------------------------------------------------------------------------------------


@dataclass
class _Batch:
    """What one batch writes, gathered first so each kind of row goes to the database in one statement."""

    entries: list[ledger.Entry]
    holds: list[tuple[Instruction, str]]  # instruction, the payable it pays out of
    principal: str
    cards: list[tuple[str, int, int]] = field(default_factory=list)  # card refunded: id, unused, from custody
    done: list[tuple[int, str | None]] = field(default_factory=list)  # item done (not transfers): id, refund id
    refunds: list[dict[str, Any]] = field(default_factory=list)  # refunds rows, by _REFUND_COLUMNS

    def instruct(self, instruction: Instruction, payable: str) -> None:
        self.holds.append((instruction, payable))


# Items and cards are read as plain rows, not ORM objects, and written back by one statement each: loading,
# tracking and flushing a thousand ORM objects of each cost more than the batch's ledger work.
_ITEM = ClosureItem.__table__
_CARD_COLUMNS = (
    Card.id,
    Card.status,
    Card.price,
    Card.consumed,
    Card.refunded,
    Card.escrow_account_id,
    Card.consumer_id,
    Card.deposit_transaction_id,
    Card.payment_reference,
)
_CARDS_REFUNDED = text(
    "UPDATE cards c SET refunded = c.refunded + u.unused, protected_out = c.protected_out + u.custody,"
    " status = 'closed_settled', closed_at = :now"
    " FROM unnest(CAST(:ids AS text[]), CAST(:unused AS bigint[]), CAST(:custody AS bigint[]))"
    " AS u(id, unused, custody) WHERE c.id = u.id"
)
_ITEMS_DONE = text(
    "UPDATE closure_items i SET status = 'done', done_at = CAST(:now AS timestamptz), refund_id = u.refund_id,"
    # nothing for the banks to pay (all of it a claim on the merchant): paid as it is done
    "  paid_at = CASE WHEN i.from_custody + i.set_off + i.fund_paid + i.fund_owed + i.transferred = 0"
    "   THEN CAST(:now AS timestamptz) END"
    " FROM unnest(CAST(:ids AS bigint[]), CAST(:refund_ids AS text[])) AS u(id, refund_id) WHERE i.id = u.id"
)


def _insert_unnest(table: str, columns: dict[str, str], constants: str = "", values: str = "") -> Any:
    """INSERT INTO table (columns…) SELECT … FROM unnest(one array parameter per column): any number of rows,
    one statement, one round trip."""
    names = ", ".join(columns)
    arrays = ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in columns.items())
    return text(f"INSERT INTO {table} ({names}{constants}) SELECT {names}{values} FROM unnest({arrays}) AS u({names})")


_REFUND_COLUMNS = {
    "id": "text",
    "card_id": "text",
    "escrow_account_id": "text",
    "consumer_id": "text",
    "status": "text",
    "amount": "bigint",
    "from_custody": "bigint",
    "set_off": "bigint",
    "from_fund": "bigint",
    "merchant_owes": "bigint",
    "computation": "jsonb",
    "reason": "text",
    "paid_at": "timestamptz",
}
_INSERT_REFUNDS = _insert_unnest(
    "refunds", _REFUND_COLUMNS, ", cause, retained, approved_at, due_on", ", 'closure', 0, :now, :due_on"
)
_INSTRUCTION_COLUMNS = {
    "id": "text",
    "escrow_account_id": "text",
    "book": "text",
    "bank_id": "text",
    "kind": "text",
    "status": "text",
    "amount": "bigint",
    "beneficiary": "text",
    "refund_id": "text",
    "closure_item_id": "bigint",
    "target_card_id": "text",
    "hold_entry_id": "bigint",
}
_INSERT_INSTRUCTIONS = _insert_unnest("instructions", _INSTRUCTION_COLUMNS)


async def settle_batch(
    session: AsyncSession, settings: Settings, closure_id: str, limit: int, fault: Fault | None = None
) -> Closure:
    """Execute the next ``limit`` items of a settling closure in this transaction (the caller commits)."""

    def at(point: str) -> None:
        if fault is not None:
            fault(point)

    closure = await session.get(Closure, closure_id, with_for_update=True, populate_existing=True)
    if closure is None:
        raise NotFound(f"no closure {closure_id}")
    if closure.status != "settling":
        return closure
    items = (
        await session.execute(
            select(_ITEM)
            .where(_ITEM.c.closure_id == closure.id, _ITEM.c.status == "planned")
            .order_by(_ITEM.c.seq)
            .limit(limit)
        )
    ).all()
    if not items:
        closure.status = "settled"
        closure.settled_at = utcnow()
        await session.flush()
        return closure
    if any(i.fund_paid for i in items):
        # the fund's reserve becomes holds in this batch: no one may count the fund's money meanwhile
        await fund.lock(session)
    now = utcnow()
    today = business_date(now, settings.business_timezone)
    principal = f"closure:{closure.id}"
    card_ids = sorted({i.card_id for i in items if i.kind == "card" and i.card_id})
    locked = {
        c.id: c
        for c in await session.execute(
            select(*_CARD_COLUMNS)
            .where(Card.id.in_(card_ids))
            .order_by(Card.id)
            .with_for_update(of=Card, key_share=True)
        )
    }
    banks = dict(
        (
            await session.execute(
                select(EscrowAccount.id, EscrowAccount.bank_id).where(
                    EscrowAccount.id.in_({i.escrow_account_id for i in items})
                )
            )
        ).all()
    )
    fund_bank = await fund.bank_id(session) if any(i.fund_paid for i in items) else None
    batch = _Batch([], [], principal)
    at("start")
    for item in items:
        if item.kind == "card":
            card = locked[item.card_id]  # type: ignore[index]
            if card.status != "active" or card.price - card.consumed - card.refunded != item.unused:
                raise PlanStale(f"card {card.id} changed since the plan was computed; compute the plan again")
            if item.decision == "transfer":  # rare, and it makes a card: the ORM objects, marked done by the flush
                taken = await session.get(ClosureItem, item.id, populate_existing=True)
                moved = await session.get(Card, card.id, populate_existing=True)
                assert taken is not None and moved is not None
                await _transfer(session, closure, taken, moved, banks[item.escrow_account_id], batch, today)
                taken.status = "done"
                taken.done_at = now
                taken.paid_at = None if item.transferred else now  # nothing to move: the new card is live
                continue
            _refund_card(item, card, banks[item.escrow_account_id], batch, now)
        else:
            _settle_claim(item, banks[item.escrow_account_id], batch)
            batch.done.append((item.id, item.refund_id))
        if item.fund_paid:
            assert fund_bank is not None
            fund.pay_consumer(batch.entries, batch.instruct, item, item.fund_paid, fund_bank, principal)
    at("built")
    await _open_accounts(
        session, {i.escrow_account_id for i in items}, {i.escrow_account_id for i in items if i.fund_paid}
    )
    async with AsyncExitStack() as windows:
        for book in sorted({i.escrow_account_id for i in items}):
            await windows.enter_async_context(ledger.settlement_window(session, book))
        await ledger.post_many(session, batch.entries)
        at("posted")
        hold_ids = await ledger.post_many(
            session, [payouts.hold_entry(ins, payable, principal) for ins, payable in batch.holds], pending=True
        )
    at("held")
    if batch.refunds:
        await session.execute(
            _INSERT_REFUNDS,
            {
                "now": now,
                "due_on": today + timedelta(days=settings.refund_due_days),
                **{c: [r[c] for r in batch.refunds] for c in _REFUND_COLUMNS},
            },
        )
    await session.flush()  # refunds and cards first: instructions refer to them
    if batch.holds:
        for (instruction, _), hold_id in zip(batch.holds, hold_ids, strict=True):
            instruction.hold_entry_id = hold_id
        await session.execute(
            _INSERT_INSTRUCTIONS, {c: [getattr(i, c) for i, _ in batch.holds] for c in _INSTRUCTION_COLUMNS}
        )
    if batch.cards:
        ids, unused, custody = zip(*batch.cards, strict=True)
        await session.execute(_CARDS_REFUNDED, {"now": now, "ids": ids, "unused": unused, "custody": custody})
    if batch.done:
        ids, refund_ids = zip(*batch.done, strict=True)
        await session.execute(_ITEMS_DONE, {"now": now, "ids": ids, "refund_ids": refund_ids})
    closure.items_done += len(items)
    await session.flush()
    at("flushed")
    return closure


async def _open_accounts(session: AsyncSession, books: set[str], fund_claims: set[str]) -> None:
    """The accounts a settlement writes to that an escrow account's ledger doesn't open from the start."""
    for book in sorted(books):
        for code in ("refund_claims", "fund_subrogation", "transfer_payable"):
            await ledger.open_account(session, book, code)
    for book in sorted(fund_claims):
        await ledger.open_account(session, ledger.FUND_BOOK, fund.claims_code(book))


def _bank_instruction(
    item: ClosureItem, kind: str, amount: int, bank_id: str, beneficiary: str, **extra: Any
) -> Instruction:
    return Instruction(
        id=new_id("ins"),
        escrow_account_id=item.escrow_account_id,
        book=item.escrow_account_id,
        bank_id=bank_id,
        kind=kind,
        status="pending",
        amount=amount,
        beneficiary=beneficiary,
        closure_item_id=item.id,
        **extra,
    )


def _claim_legs(item: ClosureItem, source: str, amount: int) -> list[ledger.Leg]:
    """``amount`` fen of a consumer's claim outside custody leave ``source`` (their card's unprotected value, or
    an earlier claim): the set-off is paid from ``merchant_payable`` through the bank, the fund takes over what
    it pays, the rest stays the consumer's claim on the merchant (``refund_claims``)."""
    legs = [ledger.Leg(source, "D", amount)]
    if item.set_off:
        legs += [
            ledger.Leg("merchant_obligation", "C", item.set_off),
            *ledger.transfer("merchant_payable", "refund_payable", item.set_off),
        ]
    if item.fund_paid:
        legs.append(ledger.Leg("fund_subrogation", "C", item.fund_paid))
    rest = amount - item.set_off - item.fund_paid
    if rest:
        legs.append(ledger.Leg("refund_claims", "C", rest))
    return legs


def _refund_card(item: Any, card: Any, bank_id: str, batch: _Batch, now: datetime) -> None:
    """A card refunded: its entry, its refund row, the bank instruction; item and card are rows (the card locked)."""
    refs = {"card_id": card.id, "closure_item_id": item.id}
    legs: list[ledger.Leg] = []
    if item.from_custody:
        legs += ledger.transfer(cards.card_code(card.id), "refund_payable", item.from_custody)
    q = item.unused - item.from_custody
    if q:
        legs += _claim_legs(item, cards.unprotected_code(card.id), q)
    batch.entries.append(ledger.Entry(card.escrow_account_id, "closure_refund", legs, refs, batch.principal))
    by_bank = item.from_custody + item.set_off
    refund_id = new_id("rfd")
    owed = _paid_by_instructions(item)  # the refund is paid when the banks executed all of it: custody, fund
    batch.refunds.append(  # cause closure, approved now, due in refund_due_days: see _INSERT_REFUNDS
        {
            "id": refund_id,
            "card_id": card.id,
            "escrow_account_id": card.escrow_account_id,
            "consumer_id": card.consumer_id,
            "status": "instructed" if owed else "paid",
            "amount": item.unused,
            "from_custody": item.from_custody,
            "set_off": item.set_off,
            "from_fund": item.fund_paid + item.fund_owed,
            "merchant_owes": item.unpaid,  # what the fund pays is the fund's claim now, not the consumer's
            "computation": json.dumps(statement(item, state=False)),
            "reason": f"closure {item.closure_id}",
            "paid_at": None if owed else now,
        }
    )
    batch.done.append((item.id, refund_id))
    if by_bank:
        beneficiary = f"original payment {card.deposit_transaction_id} (reference {card.payment_reference})"
        batch.instruct(
            _bank_instruction(item, "refund", by_bank, bank_id, beneficiary, refund_id=refund_id), "refund_payable"
        )
    batch.cards.append((card.id, item.unused, item.from_custody))  # refunded, closed_settled


def _paid_by_instructions(item: Any) -> int:
    """What the banks are to pay a consumer for an item: custody, set-off, the fund (now and what it owes), a
    transfer. The item is paid once instructions of exactly that much were executed (``payouts.item_paid``)."""
    return item.from_custody + item.set_off + item.fund_paid + item.fund_owed + item.transferred


def _settle_claim(item: ClosureItem, bank_id: str, batch: _Batch) -> None:
    """An earlier refund the merchant still owes: set-off and fund pay it like a card's unprotected value."""
    moving = item.set_off + item.fund_paid
    if moving:
        refs = {"refund_id": item.refund_id, "closure_item_id": item.id}
        legs = _claim_legs(item, "refund_claims", moving)
        batch.entries.append(ledger.Entry(item.escrow_account_id, "closure_claim", legs, refs, batch.principal))
    if item.set_off:
        beneficiary = f"consumer of refund {item.refund_id} (set-off at closure)"
        batch.instruct(_bank_instruction(item, "refund", item.set_off, bank_id, beneficiary), "refund_payable")


async def _transfer(
    session: AsyncSession, closure: Closure, item: ClosureItem, card: Card, bank_id: str, batch: _Batch, today: Any
) -> None:
    """Move a card whose consumer accepted the takeover: its custodied funds go to the successor's escrow account
    by a bank transfer (the new card activates when the bank reports it done); the successor assumes the rest."""
    assert closure.successor_escrow_account_id is not None and closure.successor_merchant_id is not None
    refs = {"card_id": card.id, "closure_item_id": item.id}
    legs: list[ledger.Leg] = []
    if item.transferred:
        legs += ledger.transfer(cards.card_code(card.id), "transfer_payable", item.transferred)
    if item.assumed:
        legs += ledger.transfer(cards.unprotected_code(card.id), "merchant_obligation", item.assumed)
    await ledger.open_account(session, card.escrow_account_id, "transfer_payable")
    batch.entries.append(ledger.Entry(card.escrow_account_id, "closure_transfer", legs, refs, batch.principal))
    remaining_units = card.units_total - card.units_used  # (membership days skipped while frozen are not used)
    successor_card = Card(
        id=new_id("card"),
        merchant_id=closure.successor_merchant_id,
        escrow_account_id=closure.successor_escrow_account_id,
        plan_id=card.plan_id,  # the card keeps its terms
        consumer_id=card.consumer_id,
        kind=card.kind,
        status="awaiting_payment",
        price=item.unused,
        units_total=max(remaining_units, 1),
        units_used=0,
        custody_ratio_bp=card.custody_ratio_bp,
        protected_paid=item.transferred,
        consumed=0,
        released=0,
        refunded=0,
        protected_out=0,
        payment_reference=f"PT{secrets.randbelow(10**18):018d}",
        days_settled=0,
        paid_at=card.paid_at,
        starts_on=today,
        valid_until=card.valid_until,
        predecessor_card_id=card.id,
    )
    session.add(successor_card)
    await session.flush()
    link = await session.get(ConsumerLink, (card.consumer_id, closure.successor_merchant_id))
    if link is None:
        session.add(ConsumerLink(consumer_id=card.consumer_id, merchant_id=closure.successor_merchant_id))
    item.new_card_id = successor_card.id
    card.transferred = item.unused
    card.protected_out += item.transferred
    card.status = "transferred"
    card.closed_at = utcnow()
    if item.transferred:
        beneficiary = f"escrow account {closure.successor_escrow_account_id} (card {successor_card.id})"
        batch.instruct(
            _bank_instruction(
                item, "transfer", item.transferred, bank_id, beneficiary, target_card_id=successor_card.id
            ),
            "transfer_payable",
        )
    else:  # nothing in custody to move: the successor's card is live at once
        await cards.activate_transferred(session, successor_card.id, 0, f"takeover:{card.id}")


def statement(item: ClosureItem, *, state: bool = True) -> dict[str, Any]:
    """A consumer's statement of one item: what was owed and what was paid from where (fen); with ``state``,
    whether it is all paid yet."""
    return {
        "closure_id": item.closure_id,
        "closure_item_id": item.id,
        "card_id": item.card_id,
        "refund_id": item.refund_id,
        "kind": item.kind,
        "decision": item.decision,
        "unused": item.unused,
        "from_custody": item.from_custody,
        "set_off": item.set_off,
        "fund_paid": item.fund_paid,
        "fund_owed": item.fund_owed - item.fund_owed_paid,
        "fund_paid_later": item.fund_owed_paid,
        "unpaid_claim": item.unpaid,
        "transferred": item.transferred,
        "assumed_by_successor": item.assumed,
        "new_card_id": item.new_card_id,
    } | ({"paid": item.paid_at is not None} if state else {})  # every part the banks were to pay was executed


async def settle_next(session: AsyncSession, settings: Settings) -> int:
    """One batch of the oldest settling closure no one else is working on (a job). Returns the items done."""
    closure_id = await session.scalar(
        select(Closure.id)
        .where(Closure.status == "settling")
        .order_by(Closure.settling_at, Closure.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    if closure_id is None:
        return 0
    before = await session.scalar(select(Closure.items_done).where(Closure.id == closure_id))
    closure = await settle_batch(session, settings, closure_id, settings.closure_batch_size)
    return closure.items_done - int(before or 0)


async def settle(
    sessionmaker: Any,
    settings: Settings,
    closure_id: str,
    *,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    fault: Fault | None = None,
) -> Closure:
    """Execute a settling closure to the end, one transaction per batch (the CLI and the jobs use this)."""
    while True:
        async with sessionmaker() as session, session.begin():
            closure = await settle_batch(
                session, settings, closure_id, batch_size or settings.closure_batch_size, fault
            )
            done, total, status = closure.items_done, closure.items_total, closure.status
        if progress is not None:
            progress(done, total)
        if status != "settling":
            return closure


# --- confirmation and the surplus ------------------------------------------------------------------------


async def confirm(session: AsyncSession, principal: Principal, closure_id: str) -> tuple[Closure, list[Instruction]]:
    """The regulator confirms a settled closure: what is left of ``merchant_payable`` (the surplus) is paid to the
    merchant, and the merchant and its escrow accounts are closed."""
    closure = await get(session, principal, closure_id, lock=True)
    if closure.status != "settled":
        raise InvalidState(f"closure {closure.id} is {closure.status}: only a settled closure can be confirmed")
    merchant = await session.get(Merchant, closure.merchant_id, with_for_update=cards.NO_KEY_UPDATE)
    assert merchant is not None
    made: list[Instruction] = []
    for account in await session.scalars(
        select(EscrowAccount)
        .where(EscrowAccount.merchant_id == merchant.id, EscrowAccount.status == "frozen")
        .order_by(EscrowAccount.id)
        .with_for_update(key_share=True)
    ):
        async with ledger.settlement_window(session, account.id):
            instruction = await payouts.pay_out_payable(
                session, account.id, account.bank_id, merchant.settlement_account_masked, principal.id
            )
        if instruction is not None:
            made.append(instruction)
        account.status = "closed"
    merchant.status = "closed"
    closure.status = "confirmed"
    closure.confirmed_at = utcnow()
    closure.confirmed_by = principal.id
    await session.flush()
    return closure, made
