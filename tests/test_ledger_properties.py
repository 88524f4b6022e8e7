"""Random sequences of ledger movements against real PostgreSQL agree with a plain in-memory model.

A hypothesis state machine posts transfers (including ones that would overdraw), holds, full and partial posts,
voids, expiries, second resolutions and batches over one book, each movement in its own transaction, and after
every step checks every balance against the model, that the whole journal balances per kind of posting, and that
no constrained account is below zero.

Profiles (registered here, chosen with ``HYPOTHESIS_PROFILE``): ``ci`` (default, 200 examples) and ``long``
(5000 examples), e.g. ``HYPOTHESIS_PROFILE=long pytest tests/test_ledger_properties.py``.
"""

import asyncio
import itertools
import os
import secrets
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from escrow import ledger
from escrow.db import asyncpg_url, with_database
from escrow.ledger import Entry, Leg, transfer

_COMMON: dict[str, Any] = {
    "deadline": None,
    "stateful_step_count": 18,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
}
settings.register_profile("ci", max_examples=200, **_COMMON)
settings.register_profile("long", max_examples=5000, **_COMMON)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# code -> (normal side, never below zero); written out here rather than taken from the service under test
ACCOUNTS: dict[str, tuple[str, bool]] = {
    "custody_cash": ("D", True),
    "merchant_obligation": ("D", False),
    "merchant_payable": ("C", True),
    "refund_payable": ("C", True),
    "card:a": ("C", True),
    "card:b": ("C", True),
    "card:c": ("C", True),
}
CODES = sorted(ACCOUNTS)
CARDS = [code for code in CODES if code.startswith("card:")]
CONSTRAINED = [code for code in CODES if ACCOUNTS[code][1]]
PAIRS = [(debit, credit) for debit in CODES for credit in CODES if debit != credit]
FIELDS = ("posted_debits", "posted_credits", "pending_debits", "pending_credits")
FAR_FUTURE = datetime(2999, 1, 1, tzinfo=UTC)
EXPIRY = {None: None, "past": timedelta(hours=-1), "future": timedelta(days=1)}
RESOLVED_CODES = {"post": "already_posted", "void": "already_voided", "expire": "already_expired"}

Legs = tuple[tuple[str, str, int], ...]  # (code, side, amount)
Totals = dict[str, dict[str, int]]


def available(code: str, totals: dict[str, int]) -> int:
    if ACCOUNTS[code][0] == "C":
        return totals["posted_credits"] - totals["posted_debits"] - totals["pending_debits"]
    return totals["posted_debits"] - totals["posted_credits"] - totals["pending_credits"]


def applied(model: Totals, legs: Legs, kind: str) -> Totals:
    """The model after postings of ``kind`` (posted, pending or release) for ``legs``."""
    new = {code: dict(totals) for code, totals in model.items()}
    for code, side, amount in legs:
        if kind == "posted":
            new[code]["posted_debits" if side == "D" else "posted_credits"] += amount
        else:
            sign = 1 if kind == "pending" else -1
            new[code]["pending_debits" if side == "D" else "pending_credits"] += sign * amount
    return new


def overdrawn(model: Totals) -> bool:
    return any(available(code, model[code]) < 0 for code in CONSTRAINED)


def as_ledger_legs(legs: Legs) -> list[Leg]:
    return [Leg(code, side, amount) for code, side, amount in legs]  # type: ignore[arg-type]


@dataclass
class Hold:
    id: int
    legs: Legs
    expired: bool  # its deadline is already behind us
    status: str = "open"  # or post, void, expire

    @property
    def held(self) -> int:
        return sum(amount for _, side, amount in self.legs if side == "D")


@dataclass
class Database:
    """One event loop and engine shared by every example of a test; each example gets a book of its own."""

    url: str
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    books: Iterator[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.engine: AsyncEngine = create_async_engine(
            asyncpg_url(self.url), pool_size=2, max_overflow=0, connect_args={"server_settings": {"timezone": "UTC"}}
        )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=False)

    def new_book(self) -> str:
        return f"esc_sm{next(self.books)}"

    def run(self, work: Callable[[AsyncSession], Awaitable[Any]]) -> Any:
        """``work`` in a transaction of its own: committed when it returns, rolled back when it raises."""

        async def transaction() -> Any:
            async with self.sessions() as session:
                try:
                    result = await work(session)
                except BaseException:
                    await session.rollback()
                    raise
                await session.commit()
                return result

        return self.loop.run_until_complete(transaction())

    def attempt(self, work: Callable[[AsyncSession], Awaitable[Any]]) -> tuple[Any, ledger.LedgerError | None]:
        """Like ``run``, but a ledger refusal is returned (after the rollback) instead of raised."""
        try:
            return self.run(work), None
        except ledger.LedgerError as exc:
            return None, exc

    def close(self) -> None:
        self.loop.run_until_complete(self.engine.dispose())
        self.loop.close()


def lowered(debit: str, credit: str) -> list[str]:
    """The constrained accounts whose available balance a debit/credit pair lowers (and so may overdraw)."""
    sides = ((debit, "C"), (credit, "D"))  # a debit lowers a credit-normal account, a credit a debit-normal one
    return [code for code, normal in sides if ACCOUNTS[code] == (normal, True)]


def amounts_within(limit: int) -> st.SearchStrategy[int]:
    """Mostly amounts that fit ``limit``, sometimes exactly all of it, one fen more, or far more."""
    fitting = [st.integers(1, limit), st.just(limit)] if limit > 0 else []
    return st.one_of(*fitting, st.just(limit + 1), st.integers(limit + 1, 2 * limit + 1000))


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self, db: Database) -> None:
        super().__init__()
        self.db = db
        self.book = db.new_book()
        self.model: Totals = {code: dict.fromkeys(FIELDS, 0) for code in CODES}
        self.holds: list[Hold] = []
        self.entries = 0  # entries this book should have in the journal

    # -- helpers -----------------------------------------------------------------------------------------------

    def expect_refusal(self, error: ledger.LedgerError | None, code: str) -> None:
        assert error is not None, f"expected {code}, but the ledger accepted the movement"
        assert error.code == code, f"expected {code}, got {error.code}: {error}"

    def write(self, legs: Legs, *, pending: bool, kind: str, expiry: str | None = None) -> None:
        """Post (or hold) one entry and check the outcome the model predicts."""
        after = applied(self.model, legs, "pending" if pending else "posted")
        expires_at = None if EXPIRY[expiry] is None else datetime.now(UTC) + EXPIRY[expiry]
        entry = Entry(self.book, kind, as_ledger_legs(legs), expires_at=expires_at)
        entry_id, error = self.db.attempt(lambda s: (ledger.hold if pending else ledger.post)(s, entry))
        event(f"{kind} {'hold' if pending else 'post'}: {error.code if error else 'ok'}")
        if overdrawn(after):
            self.expect_refusal(error, "insufficient_funds")
            assert isinstance(error, ledger.InsufficientFunds)
            return
        assert error is None, f"refused {legs}: {error!r}"
        self.model = after
        self.entries += 1
        if pending:
            self.holds.append(Hold(entry_id, legs, expired=expiry == "past"))

    def limit(self, codes: list[str]) -> int:
        """How much can leave ``codes`` now (an arbitrary sum when none of them is constrained)."""
        return min((available(code, self.model[code]) for code in codes), default=20_000)

    def pick_pair(self, data: st.DataObject) -> tuple[str, str, int]:
        """A debit/credit pair, most often one that has money to move, and an amount around what it can move."""
        funded = [pair for pair in PAIRS if self.limit(lowered(*pair)) > 0]
        pairs = st.one_of(st.sampled_from(funded), st.sampled_from(PAIRS)) if funded else st.sampled_from(PAIRS)
        debit, credit = data.draw(pairs, label="pair")
        return debit, credit, data.draw(amounts_within(self.limit(lowered(debit, credit))), label="amount")

    def open_holds(self) -> list[Hold]:
        return [h for h in self.holds if h.status == "open"]

    def resolve(self, target: Hold, action: str, amount: int | None = None) -> None:
        """post / void one hold and check the outcome (or the refusal) the model predicts."""

        async def work(session: AsyncSession) -> int:
            if action == "void":
                return await ledger.void_pending(session, target.id)
            return await ledger.post_pending(session, target.id, amount)

        _, error = self.db.attempt(work)
        how = "in full" if amount is None else "in part"
        event(f"{action} {how}, {len(target.legs)} legs: {error.code if error else 'ok'}")
        if target.status != "open":
            self.expect_refusal(error, RESOLVED_CODES[target.status])
            assert isinstance(error, ledger.AlreadyResolved)
            return
        if action == "post" and target.expired:
            self.expect_refusal(error, "pending_expired")
            return
        if amount is not None and amount > target.held:
            self.expect_refusal(error, "post_exceeds_pending")
            assert isinstance(error, ledger.PostExceedsPending)
            return
        if amount is not None and amount != target.held and len(target.legs) != 2:
            self.expect_refusal(error, "partial_post_unsupported")
            return
        assert error is None, f"{action} {amount} of {target}: {error!r}"
        model = applied(self.model, target.legs, "release")
        if action == "post":
            # The hold's full amount posts every leg as held (a multi-leg hold has no single "amount" per leg).
            in_full = amount is None or amount == target.held
            posted = target.legs if in_full else tuple((code, side, amount) for code, side, _ in target.legs)
            model = applied(model, posted, "posted")
        self.model = model
        self.entries += 1
        target.status = action

    # -- rules -------------------------------------------------------------------------------------------------

    @initialize()
    def open_book(self) -> None:
        async def work(session: AsyncSession) -> None:
            await ledger.open_book(session, self.book)
            for card in CARDS:
                await ledger.open_account(session, self.book, card)

        self.db.run(work)

    @rule(card=st.sampled_from(CARDS), amount=st.integers(1, 50_000))
    def card_paid(self, card: str, amount: int) -> None:
        self.write((("custody_cash", "D", amount), (card, "C", amount)), pending=False, kind="card_paid")

    @rule(data=st.data())
    def transfer(self, data: st.DataObject) -> None:
        debit, credit, amount = self.pick_pair(data)
        self.write(((debit, "D", amount), (credit, "C", amount)), pending=False, kind="release")

    @rule(data=st.data(), expiry=st.sampled_from(list(EXPIRY)))
    def hold(self, data: st.DataObject, expiry: str | None) -> None:
        debit, credit, amount = self.pick_pair(data)
        self.write(((debit, "D", amount), (credit, "C", amount)), pending=True, kind="consumption", expiry=expiry)

    @rule(data=st.data())
    def split_hold(self, data: st.DataObject) -> None:
        card = data.draw(st.sampled_from([c for c in CARDS if self.limit([c]) >= 2] or CARDS), label="card")
        total = data.draw(amounts_within(self.limit([card])).filter(lambda amount: amount >= 2), label="total")
        merchant = data.draw(st.integers(1, total - 1), label="merchant share")
        refund = total - merchant
        legs = ((card, "D", merchant + refund), ("merchant_payable", "C", merchant), ("refund_payable", "C", refund))
        self.write(legs, pending=True, kind="consumption", expiry=None)

    @precondition(lambda self: self.open_holds())
    @rule(data=st.data())
    def post_in_full(self, data: st.DataObject) -> None:
        self.resolve(data.draw(st.sampled_from(self.open_holds()), label="hold"), "post")

    @precondition(lambda self: self.open_holds())
    @rule(data=st.data())
    def post_in_part(self, data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(self.open_holds()), label="hold")
        held = target.held
        amounts = st.integers(1, held + 2)
        self.resolve(target, "post", data.draw(amounts, label="amount"))

    @precondition(lambda self: self.open_holds())
    @rule(data=st.data())
    def void(self, data: st.DataObject) -> None:
        self.resolve(data.draw(st.sampled_from(self.open_holds()), label="hold"), "void")

    @precondition(lambda self: any(h.status != "open" for h in self.holds))
    @rule(data=st.data(), action=st.sampled_from(["post", "void", "part"]))
    def resolve_again(self, data: st.DataObject, action: str) -> None:
        target = data.draw(st.sampled_from([h for h in self.holds if h.status != "open"]), label="resolved hold")
        self.resolve(target, "void" if action == "void" else "post", 1 if action == "part" else None)

    @precondition(lambda self: self.open_holds())
    @rule()
    def expire(self) -> None:
        due = {h.id for h in self.holds if h.status == "open" and h.expired}
        expired, error = self.db.attempt(ledger.expire_pending)
        assert error is None, repr(error)
        event(f"expire: {len(due)} due")
        mine = {h.id: h for h in self.holds}
        assert {i for i in expired if i in mine} == due  # other ids are leftovers of earlier examples' books
        for pending_id in due:
            self.model = applied(self.model, mine[pending_id].legs, "release")
            mine[pending_id].status = "expire"
            self.entries += 1

    @rule(data=st.data(), count=st.integers(1, 4), pending=st.booleans())
    def batch(self, data: st.DataObject, count: int, pending: bool) -> None:
        batch = [self.pick_pair(data) for _ in range(count)]
        legs = [((debit, "D", amount), (credit, "C", amount)) for debit, credit, amount in batch]
        after = self.model
        for one in legs:
            after = applied(after, one, "pending" if pending else "posted")
        entries = [Entry(self.book, "adjustment", as_ledger_legs(one)) for one in legs]
        ids, error = self.db.attempt(lambda s: ledger.post_many(s, entries, pending=pending))
        event(f"batch {'hold' if pending else 'post'}: {error.code if error else 'ok'}")
        # A batch is one statement: constrained accounts are checked once, on its net effect.
        if overdrawn(after):
            self.expect_refusal(error, "insufficient_funds")
            return
        assert error is None, f"refused batch {legs}: {error!r}"
        assert len(ids) == count and ids == sorted(ids)
        self.model = after
        self.entries += count
        if pending:
            self.holds.extend(Hold(i, one, expired=False) for i, one in zip(ids, legs, strict=True))

    # -- invariants --------------------------------------------------------------------------------------------

    @invariant()
    def ledger_agrees_with_model(self) -> None:
        async def read(session: AsyncSession) -> tuple[dict[str, Any], dict[str, Any], list[Any], int]:
            now = {code: await ledger.balance(session, self.book, code) for code in CODES}
            replayed = {code: await ledger.balance(session, self.book, code, as_of=FAR_FUTURE) for code in CODES}
            sums = (
                await session.execute(
                    text("SELECT kind, side, sum(amount) FROM ledger_postings GROUP BY kind, side ORDER BY 1, 2")
                )
            ).all()
            entries = await session.scalar(
                text("SELECT count(*) FROM ledger_entries WHERE escrow_account_id = :book"), {"book": self.book}
            )
            return now, replayed, sums, entries

        now, replayed, sums, entries = self.db.run(read)
        for code in CODES:
            expected = self.model[code]
            got = now[code]
            assert {name: getattr(got, name) for name in FIELDS} == expected, code
            assert got.normal_side == ACCOUNTS[code][0]
            assert got.available == available(code, expected), code
            if ACCOUNTS[code][0] == "C":
                assert got.posted == expected["posted_credits"] - expected["posted_debits"], code
                assert got.pending == expected["pending_debits"], code
            else:
                assert got.posted == expected["posted_debits"] - expected["posted_credits"], code
                assert got.pending == expected["pending_credits"], code
            if ACCOUNTS[code][1]:
                assert got.available >= 0, code
            assert replayed[code] == got, f"{code}: running totals and journal disagree"
        by_kind: dict[str, dict[str, int]] = {}
        for kind, side, total in sums:
            by_kind.setdefault(kind, {})[side] = int(total)
        for kind, sides in by_kind.items():
            assert sides.get("D", 0) == sides.get("C", 0), f"{kind} postings: {sides}"
        assert entries == self.entries


@pytest.fixture
def machine_db_url(pg_server_url: str, template_url: str) -> Iterator[str]:
    """A migrated database for the whole state-machine run (examples keep apart by book, not by database)."""
    template = urlsplit(template_url).path.lstrip("/")
    name = f"escrow_props_{os.getpid()}_{secrets.token_hex(4)}"

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(pg_server_url)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(admin(f"CREATE DATABASE {name} TEMPLATE {template}"))
    yield with_database(pg_server_url, name)
    asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.mark.slow
def test_ledger_matches_model(machine_db_url: str) -> None:
    db = Database(machine_db_url)
    try:
        run_state_machine_as_test(lambda: LedgerMachine(db), settings=settings(PROFILE))
    finally:
        db.close()


def test_multi_leg_hold_posted_with_its_full_amount_moves_only_what_was_held(machine_db_url: str) -> None:
    db = Database(machine_db_url)
    book = db.new_book()
    legs = [Leg("card:a", "D", 50), Leg("card:b", "D", 50), Leg("merchant_payable", "C", 50)]
    legs.append(Leg("refund_payable", "C", 50))

    async def setup(session: AsyncSession) -> int:
        await ledger.open_book(session, book)
        for card in ("card:a", "card:b"):
            await ledger.open_account(session, book, card)
            await ledger.post(session, Entry(book, "card_paid", transfer("custody_cash", card, 1000)))
        return await ledger.hold(session, Entry(book, "consumption", legs))

    async def balances(session: AsyncSession) -> dict[str, int]:
        codes = ("card:a", "card:b", "merchant_payable", "refund_payable")
        return {code: (await ledger.balance(session, book, code)).posted for code in codes}

    try:
        pending_id = db.run(setup)
        # 100 fen is exactly what the hold holds (its debits), so this must be the same as posting it in full...
        _, error = db.attempt(lambda s: ledger.post_pending(s, pending_id, 100))
        assert error is None or error.code == "partial_post_unsupported"
        # ... but every leg is posted at 100 fen: 200 fen leave the cards and 200 fen arrive for a 100 fen hold.
        if error is None:
            assert db.run(balances) == {"card:a": 950, "card:b": 950, "merchant_payable": 50, "refund_payable": 50}
        else:
            assert db.run(balances) == {"card:a": 1000, "card:b": 1000, "merchant_payable": 0, "refund_payable": 0}
    finally:
        db.close()
