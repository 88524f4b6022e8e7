"""Many connections moving money at the same instant: no overdraft, no lost update, no deadlock, one resolution.

Every task holds a connection of its own (checked by backend pid) and waits at a barrier until all of them are
connected, so the movements really reach PostgreSQL together. Each movement is its own transaction.
"""

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from escrow import ledger
from escrow.db import asyncpg_url
from escrow.ledger import Entry, transfer

pytestmark = pytest.mark.slow

BOOK = "esc_race"
TASKS = 60  # the embedded test server allows 100 connections
TIMEOUT = 120  # seconds; a deadlock or a lost wake-up fails the test instead of hanging it

Sessions = async_sessionmaker[AsyncSession]


@dataclass
class Outcome:
    task: int
    pid: int
    result: Any = None
    error: ledger.LedgerError | None = None


@pytest.fixture
async def sessions(db_url: str) -> AsyncIterator[Sessions]:
    """A pool big enough for every task to hold its own connection at once."""
    engine = create_async_engine(
        asyncpg_url(db_url), pool_size=TASKS + 2, max_overflow=0, connect_args={"server_settings": {"timezone": "UTC"}}
    )
    yield async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
    await engine.dispose()


async def run(sessions: Sessions, work: Callable[[AsyncSession], Awaitable[Any]]) -> Any:
    async with sessions() as session:
        result = await work(session)
        await session.commit()
        return result


async def all_at_once(
    sessions: Sessions, works: list[Callable[[AsyncSession], Awaitable[Any]]], rounds: int = 1
) -> list[Outcome]:
    """Run each work on its own connection, released together; each of ``rounds`` movements is one transaction."""
    barrier = asyncio.Barrier(len(works))

    async def task(number: int, work: Callable[[AsyncSession], Awaitable[Any]]) -> list[Outcome]:
        async with sessions() as session:
            pid = await session.scalar(text("SELECT pg_backend_pid()"))
            await session.commit()  # the connection stays with this session until it closes
            await barrier.wait()
            outcomes = []
            for _ in range(rounds):
                outcome = Outcome(number, pid)
                try:
                    outcome.result = await work(session)
                    await session.commit()
                except ledger.LedgerError as exc:
                    await session.rollback()
                    outcome.error = exc
                outcomes.append(outcome)
            return outcomes

    per_task = await asyncio.wait_for(asyncio.gather(*(task(n, w) for n, w in enumerate(works))), TIMEOUT)
    assert len({outcomes[0].pid for outcomes in per_task}) == len(works), "tasks shared a connection"
    return [outcome for outcomes in per_task for outcome in outcomes]


async def open_book(sessions: Sessions, cards: list[str], funds: list[int]) -> None:
    async def work(session: AsyncSession) -> None:
        await ledger.open_book(session, BOOK)
        for card in cards:
            await ledger.open_account(session, BOOK, card)
        entries = [Entry(BOOK, "card_paid", transfer("custody_cash", c, f)) for c, f in zip(cards, funds, strict=True)]
        await ledger.post_many(session, entries)

    await run(sessions, work)


async def balance(sessions: Sessions, code: str) -> ledger.Balance:
    return await run(sessions, lambda s: ledger.balance(s, BOOK, code))


async def scalar(sessions: Sessions, sql: str, **params: Any) -> Any:
    return await run(sessions, lambda s: s.scalar(text(sql), params))


@pytest.mark.parametrize("movement", ["post", "hold"])
async def test_many_tasks_drain_one_card_without_overdrawing_it(sessions: Sessions, movement: str) -> None:
    rng = random.Random(20261125)
    amounts = [rng.randint(1, 500) for _ in range(TASKS)]
    fund = sum(amounts) * 2 // 3  # about a third of the demand must be refused
    await open_book(sessions, ["card:hot"], [fund])
    write = ledger.post if movement == "post" else ledger.hold

    def spend(task: int) -> Callable[[AsyncSession], Awaitable[int]]:
        entry = Entry(BOOK, "release", transfer("card:hot", "merchant_payable", amounts[task]), refs={"task": task})
        return lambda session: write(session, entry)

    outcomes = await all_at_once(sessions, [spend(task) for task in range(TASKS)])

    won = [o for o in outcomes if o.error is None]
    lost = [o for o in outcomes if o.error is not None]
    assert all(isinstance(o.error, ledger.InsufficientFunds) for o in lost), [repr(o.error) for o in lost]
    assert won and lost
    spent = sum(amounts[o.task] for o in won)
    card, payable = await balance(sessions, "card:hot"), await balance(sessions, "merchant_payable")
    assert card.available == fund - spent >= 0
    if movement == "post":
        assert (card.posted, card.pending) == (fund - spent, 0)
        assert (payable.posted, payable.pending) == (spent, 0)
    else:
        assert (card.posted, card.pending) == (fund, spent)
        assert (payable.posted, payable.pending, payable.pending_credits) == (0, 0, spent)
    # The available balance only fell during the race, so each refusal was right: it asked for more than is left.
    assert all(amounts[o.task] > card.available for o in lost)

    written = await scalar(
        sessions,
        "SELECT array_agg(id ORDER BY id) FROM ledger_entries WHERE escrow_account_id = :b AND kind = 'release'",
        b=BOOK,
    )
    assert written == sorted(o.result for o in won)
    left_card = await scalar(
        sessions,
        "SELECT sum(p.amount) FROM ledger_postings p JOIN ledger_entries e ON e.id = p.entry_id"
        " JOIN ledger_accounts a ON a.id = p.account_id"
        " WHERE e.kind = 'release' AND a.escrow_account_id = :b AND a.code = 'card:hot' AND p.side = 'D'",
        b=BOOK,
    )
    assert left_card == spent


async def test_many_tasks_credit_one_hot_account(sessions: Sessions) -> None:
    tasks, rounds = 50, 3
    rng = random.Random(7)
    cards = [f"card:c{n}" for n in range(tasks)]
    amounts = [[rng.randint(1, 10_000) for _ in range(rounds)] for _ in cards]
    funds = [sum(per_card) + rng.randint(0, 5) for per_card in amounts]
    await open_book(sessions, cards, funds)
    turns = [iter(per_card) for per_card in amounts]

    def release(task: int) -> Callable[[AsyncSession], Awaitable[int]]:
        def work(session: AsyncSession) -> Awaitable[int]:
            entry = Entry(BOOK, "release", transfer(cards[task], "merchant_payable", next(turns[task])))
            return ledger.post(session, entry)

        return work

    outcomes = await all_at_once(sessions, [release(task) for task in range(tasks)], rounds=rounds)

    assert [o.error for o in outcomes if o.error is not None] == []
    assert len(outcomes) == tasks * rounds
    total = sum(map(sum, amounts))
    payable = await balance(sessions, "merchant_payable")
    assert (payable.posted, payable.pending, payable.available) == (total, 0, total)
    for card, fund, per_card in zip(cards, funds, amounts, strict=True):
        assert (await balance(sessions, card)).available == fund - sum(per_card), card
    custody = await balance(sessions, "custody_cash")
    assert custody.posted == sum(funds)
    count = await scalar(
        sessions, "SELECT count(*) FROM ledger_entries WHERE escrow_account_id = :b AND kind = 'release'", b=BOOK
    )
    assert count == tasks * rounds


RESOLUTIONS: dict[str, Callable[[AsyncSession, int, int], Awaitable[int]]] = {
    "post": lambda session, pending_id, _: ledger.post_pending(session, pending_id),
    "part": lambda session, pending_id, held: ledger.post_pending(session, pending_id, max(1, held // 2)),
    "void": lambda session, pending_id, _: ledger.void_pending(session, pending_id),
}
LOSER_CODE = {"post": "already_posted", "part": "already_posted", "void": "already_voided"}


@pytest.mark.parametrize(("first", "second"), [("post", "void"), ("part", "void"), ("post", "part")])
async def test_a_hold_resolved_at_once_by_two_connections_is_resolved_once(
    sessions: Sessions, first: str, second: str
) -> None:
    holds = 25  # two connections each
    rng = random.Random(first + second)
    amounts = [rng.randint(2, 1_000) for _ in range(holds)]
    await open_book(sessions, ["card:h"], [sum(amounts)])
    entries = [Entry(BOOK, "consumption", transfer("card:h", "merchant_payable", amount)) for amount in amounts]
    ids = await run(sessions, lambda s: ledger.post_many(s, entries, pending=True))

    works = []
    for pending_id, amount in zip(ids, amounts, strict=True):
        for action in (first, second):
            works.append(lambda s, p=pending_id, a=amount, act=action: RESOLUTIONS[act](s, p, a))
    outcomes = await all_at_once(sessions, works)

    posted = 0
    for n, (pending_id, amount) in enumerate(zip(ids, amounts, strict=True)):
        pair = {first: outcomes[2 * n], second: outcomes[2 * n + 1]}
        won = [action for action, o in pair.items() if o.error is None]
        assert len(won) == 1, {action: repr(o.error) for action, o in pair.items()}
        winner = won[0]
        loser = second if winner == first else first
        error = pair[loser].error
        assert isinstance(error, ledger.AlreadyResolved), repr(error)
        assert error.code == LOSER_CODE[winner], (winner, error.code)
        if winner == "post":
            posted += amount
        elif winner == "part":
            posted += max(1, amount // 2)
        resolutions = await scalar(sessions, "SELECT count(*) FROM ledger_entries WHERE pending_id = :p", p=pending_id)
        assert resolutions == 1

    card, payable = await balance(sessions, "card:h"), await balance(sessions, "merchant_payable")
    assert (card.posted, card.pending) == (sum(amounts) - posted, 0)
    assert (payable.posted, payable.pending_credits) == (posted, 0)


async def test_an_expiry_sweep_survives_holds_voided_while_it_runs(sessions: Sessions) -> None:
    holds, sweeps = 30, 5
    await open_book(sessions, ["card:e"], [10**9])
    past = datetime.now(UTC) - timedelta(hours=1)
    failures: list[Exception] = []
    for _ in range(20):
        entry = Entry(BOOK, "consumption", transfer("card:e", "merchant_payable", 1), expires_at=past)
        ids = await run(sessions, lambda s, e=entry: ledger.post_many(s, [e] * holds, pending=True))
        works = [lambda s, p=pending_id: ledger.void_pending(s, p) for pending_id in ids]
        works += [ledger.expire_pending] * sweeps
        outcomes = await all_at_once(sessions, works)
        # A void may lose to a sweep (AlreadyExpired); a sweep should never fail.
        assert all(o.error.code == "already_expired" for o in outcomes[:holds] if o.error is not None)
        failures += [o.error for o in outcomes[holds:] if o.error is not None]
    assert failures == [], f"{len(failures)} sweeps failed, e.g. {failures[0]!r}"
    card = await balance(sessions, "card:e")
    assert card.pending == 0


async def test_a_freeze_is_a_cut_off_for_movements_under_way(sessions: Sessions) -> None:
    """A movement in flight when the freeze comes finishes first; none lands after the freeze committed."""
    await open_book(sessions, ["card:f"], [10_000])
    book = BOOK
    async with sessions() as mover:
        await ledger.post(mover, Entry(book, "release", transfer("card:f", "merchant_payable", 700)))
        freezing = asyncio.create_task(_freeze(sessions, book))
        await asyncio.sleep(0.3)
        assert not freezing.done()  # the freeze waits for the movement under way
        await mover.commit()
    await asyncio.wait_for(freezing, 10)
    async with sessions() as late:
        with pytest.raises(ledger.AccountFrozen):
            await ledger.post(late, Entry(book, "release", transfer("card:f", "merchant_payable", 1)))


async def _freeze(sessions: Sessions, book: str) -> None:
    async with sessions() as session:
        await ledger.freeze_book(session, book, "all")
        await session.commit()
