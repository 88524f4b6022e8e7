"""`escrow bench ledger`: transfers per second through the Python ledger API, spread out, hot, and batched."""

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from random import Random

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from escrow import ledger
from escrow.ledger import Entry, transfer

BOOK = "bench"
FUNDING = 10**13  # fen per account: never the limit


@dataclass
class BenchResult:
    scenario: str
    workers: int
    accounts: int
    operations: int
    postings: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.operations / self.seconds

    @property
    def postings_rate(self) -> float:
        return self.postings / self.seconds

    def percentile(self, q: int) -> float:
        if len(self.latencies_ms) < 2:
            return self.latencies_ms[0] if self.latencies_ms else 0.0
        return statistics.quantiles(self.latencies_ms, n=100)[q - 1]


async def prepare(sessionmaker: async_sessionmaker, accounts: int) -> None:
    async with sessionmaker() as session:
        await ledger.open_book(session, BOOK)
        for i in range(accounts):
            await ledger.open_account(session, BOOK, f"card:a{i}")
        await ledger.post_many(
            session,
            [Entry(BOOK, "card_paid", transfer("custody_cash", f"card:a{i}", FUNDING)) for i in range(accounts)],
        )
        await session.commit()


async def _drive(
    sessionmaker: async_sessionmaker,
    workers: int,
    seconds: float,
    make: Callable[[Random], list[Entry]],
    write: Callable[..., Awaitable[object]],
) -> tuple[int, int, list[float], float]:
    latencies: list[float] = []
    operations = postings = 0
    deadline = time.perf_counter() + seconds

    async def worker(seed: int) -> None:
        nonlocal operations, postings
        rng = Random(seed)  # noqa: S311 - benchmark load, not secrets
        while time.perf_counter() < deadline:
            entries = make(rng)
            started = time.perf_counter()
            async with sessionmaker() as session:
                await write(session, entries)
                await session.commit()
            latencies.append((time.perf_counter() - started) * 1000)
            operations += len(entries)
            postings += sum(len(e.legs) for e in entries)

    started = time.perf_counter()
    await asyncio.gather(*(worker(seed) for seed in range(workers)))
    return operations, postings, latencies, time.perf_counter() - started


async def run(engine: AsyncEngine, workers: int, accounts: int, seconds: float, batch: int) -> list[BenchResult]:
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    await prepare(sessionmaker, accounts)

    def spread(rng: Random) -> list[Entry]:
        src, dst = rng.sample(range(accounts), 2)
        return [Entry(BOOK, "transfer", transfer(f"card:a{src}", f"card:a{dst}", rng.randint(1, 10_000)))]

    def hot(rng: Random) -> list[Entry]:
        src = rng.randrange(accounts)
        return [Entry(BOOK, "release", transfer(f"card:a{src}", "merchant_payable", rng.randint(1, 10_000)))]

    def batched(rng: Random) -> list[Entry]:
        return [spread(rng)[0] for _ in range(batch)]

    async def single(session, entries: list[Entry]) -> None:
        await ledger.post(session, entries[0])

    scenarios = [
        ("spread-out", spread, single, workers),
        ("hot account", hot, single, workers),
        (f"batch of {batch}", batched, ledger.post_many, min(workers, 2)),
    ]
    results = []
    for name, make, write, concurrency in scenarios:
        operations, postings, latencies, elapsed = await _drive(sessionmaker, concurrency, seconds, make, write)
        results.append(BenchResult(name, concurrency, accounts, operations, postings, elapsed, latencies))
    return results


def table(results: list[BenchResult]) -> str:
    lines = [
        "| scenario | workers | accounts | transfers | seconds | transfers/s | postings/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.scenario} | {r.workers} | {r.accounts} | {r.operations} | {r.seconds:.1f} | {r.rate:,.0f} |"
            f" {r.postings_rate:,.0f} | {r.percentile(50):.2f} | {r.percentile(99):.2f} |"
        )
    return "\n".join(lines)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores, {cpu}"
