"""`escrow bench flow`: consumers through sale → deposit → consumptions → confirmation over HTTP, step by step.

Each step is one phase: every request of the step goes out (at most ``concurrency`` at a time) before the next step
starts, so each step gets its own requests/s and latencies. Setup (a bank, merchants with active escrow accounts and
a plan each, consumers with tokens) goes through the API too but is not measured. Every answer that is not 2xx, and
every transport failure, counts as an error; the caller must fail the run when there is any.
"""

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from escrow.auth.tokens import issue_token
from escrow.db import create_sessionmaker
from escrow.kit.http1 import Http1Client
from escrow.kit.signing import sign_headers
from escrow.kit.uscc import _organisation_check_character as organisation_check_character
from escrow.kit.uscc import with_check_character

PRICE = 200_000  # fen: a 2,000 yuan card of 20 sessions
PLAN_SESSIONS = 20
ERROR_SAMPLES = 5  # errors kept per step to show what went wrong

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class StepResult:
    step: str
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # by process group, during this step

    def cpu_ms_per_request(self, group: str) -> float | None:
        seconds = self.cpu_seconds.get(group)
        return 1000 * seconds / self.requests if seconds is not None and self.requests else None

    @property
    def succeeded(self) -> int:
        return self.requests - self.errors

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: int) -> float:
        if len(self.latencies_ms) < 2:
            return self.latencies_ms[0] if self.latencies_ms else 0.0
        return statistics.quantiles(self.latencies_ms, n=100)[q - 1]


@dataclass
class FlowResult:
    steps: list[StepResult]
    consumers: int
    sessions: int
    merchants: int
    concurrency: int
    cpu_seconds: dict[str, float]  # used during the measured steps, by process group (Linux only; else empty)
    class_size: int  # services recorded per request (1: one at a time)
    recorded: int  # services recorded

    @property
    def errors(self) -> int:
        return sum(step.errors for step in self.steps)

    @property
    def confirmed(self) -> int:
        return self.steps[-1].succeeded

    @property
    def seconds(self) -> float:
        return sum(step.seconds for step in self.steps)

    @property
    def confirmation_rate(self) -> float:
        """Confirmed releases/s while only confirmations were sent."""
        confirmation = self.steps[-1]
        return confirmation.succeeded / confirmation.seconds if confirmation.seconds else 0.0

    @property
    def end_to_end_rate(self) -> float:
        """Confirmed releases/s over all four steps: each release's share of its card's sale and deposit included."""
        return self.confirmed / self.seconds if self.seconds else 0.0


@dataclass
class Merchant:
    id: str
    token: str
    plan_id: str


@dataclass
class Consumer:
    merchant: Merchant
    id: str
    token: str


@dataclass
class Card:
    consumer: Consumer
    id: str
    payment: dict[str, Any]


@dataclass(frozen=True)
class BankSigner:
    """A bank's credentials: every request it sends carries its token and a fresh signature."""

    token: str
    secret: str
    algorithm: str

    def headers(self, method: str, path: str, body: bytes) -> list[tuple[str, str]]:
        signed = sign_headers(self.secret, self.algorithm, method, path, body)
        return [("Authorization", f"Bearer {self.token}"), *signed.items()]


class Api:
    """An HTTP client that gives every request a fresh Idempotency-Key, and times and counts the measured ones."""

    def __init__(self, client: Http1Client, run: str) -> None:
        self.client = client
        self.run = run
        self._requests = 0

    def _request(
        self, path: str, body: dict | None, token: str | None, bank: BankSigner | None
    ) -> tuple[bytes, list[tuple[str, str]]]:
        self._requests += 1
        content = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = [("Content-Type", "application/json"), ("Idempotency-Key", f"bench-{self.run}-{self._requests}")]
        if token:
            headers.append(("Authorization", f"Bearer {token}"))
        if bank:
            headers.extend(bank.headers("POST", path, content))
        return content, headers

    async def setup(
        self, path: str, body: dict | None = None, *, token: str | None = None, bank: BankSigner | None = None
    ) -> dict:
        """A setup request: not measured, and any failure stops the benchmark at once."""
        content, headers = self._request(path, body, token, bank)
        response = await self.client.request("POST", path, headers=headers, body=content)
        if not response.ok:
            raise RuntimeError(f"setup failed: POST {path} -> {response.status} {response.text}")
        return response.json()

    async def measured(
        self,
        step: StepResult,
        path: str,
        body: dict | None = None,
        *,
        token: str | None = None,
        bank: BankSigner | None = None,
    ) -> dict | None:
        """A measured request: its latency is recorded; None (and one more error) when it did not succeed."""
        content, headers = self._request(path, body, token, bank)
        started = time.perf_counter()
        try:
            response = await self.client.request("POST", path, headers=headers, body=content)
            failure = None if response.ok else f"POST {path} -> {response.status} {response.text[:300]}"
        except OSError as exc:
            failure = f"POST {path} -> {type(exc).__name__}: {exc}"
        step.latencies_ms.append((time.perf_counter() - started) * 1000)
        step.requests += 1
        if failure is None:
            return response.json()
        step.errors += 1
        if len(step.error_samples) < ERROR_SAMPLES:
            step.error_samples.append(failure)
        return None


def classes(cards: list[Card], size: int) -> list[list[Card]]:
    """Each merchant's cards in classes of ``size`` (the last class of a merchant may be smaller)."""
    by_merchant: dict[str, list[Card]] = {}
    for card in cards:
        by_merchant.setdefault(card.consumer.merchant.id, []).append(card)
    return [group[i : i + size] for group in by_merchant.values() for i in range(0, len(group), size)]


async def _each(items: Iterable[T], concurrency: int, do: Callable[[T], Awaitable[R | None]]) -> list[R]:
    """Run ``do`` on every item, ``concurrency`` at a time; the results that are not None, in completion order."""
    pending = iter(items)  # shared by the workers: each item is taken by exactly one of them
    results: list[R] = []

    async def worker() -> None:
        for item in pending:
            result = await do(item)
            if result is not None:
                results.append(result)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def _phase(
    name: str,
    items: Iterable[T],
    concurrency: int,
    do: Callable[[StepResult, T], Awaitable[R | None]],
    probe: Callable[[], dict[str, float]],
) -> tuple[StepResult, list[R]]:
    step = StepResult(name)
    before = probe()
    started = time.perf_counter()
    results = await _each(items, concurrency, lambda item: do(step, item))
    step.seconds = time.perf_counter() - started
    after = probe()
    step.cpu_seconds = {group: after[group] - before[group] for group in after if group in before}
    return step, results


def _uscc(serial: int) -> str:
    organisation = f"{serial % 10**8:08d}"
    return with_check_character("91310000" + organisation + organisation_check_character(organisation))


async def setup(
    api: Api,
    regulator: str,
    merchants: int,
    consumers: int,
    plan_sessions: int,
    concurrency: int,
    consumer_token: Callable[[str], Awaitable[str]],
) -> tuple[BankSigner, list[Consumer]]:
    """A bank, merchants each with an active escrow account and a sessions plan, and consumers spread over them."""
    bank = await api.setup("/v1/banks", {"name": f"Bench bank {api.run}", "code": f"B{api.run}"[:20]}, token=regulator)
    bank_auth = BankSigner(bank["token"], bank["signing_secret"], bank["bank"]["signing_algorithm"])
    serial = secrets.randbelow(10**8)  # fresh USCCs and phone numbers, so runs against one server don't collide

    async def onboard(index: int) -> Merchant:
        created = await api.setup(
            "/v1/merchants",
            {
                "name": f"Bench gym {api.run}-{index}",
                "category": "gym",
                "uscc": _uscc(serial + index),
                "credit_rating": "B",
                "settlement_account": "6222 0212 3456 7890 123",
            },
            token=regulator,
        )
        token = created["token"]
        account = await api.setup("/v1/escrow-accounts", {"bank_id": bank["bank"]["id"]}, token=token)
        await api.setup(
            f"/v1/escrow-accounts/{account['id']}/activate",
            {"bank_account_number": "3301 0400 0123 4567 89"},
            bank=bank_auth,
        )
        plan = await api.setup(
            "/v1/plans",
            {
                "name": f"{plan_sessions} sessions",
                "kind": "sessions",
                "price": {"amount": PRICE, "currency": "CNY"},
                "sessions": plan_sessions,
                "validity_days": 365,
            },
            token=token,
        )
        return Merchant(created["merchant"]["id"], token, plan["id"])

    shops = await _each(range(merchants), concurrency, onboard)

    async def sign_up(index: int) -> Consumer:
        merchant = shops[index % len(shops)]
        phone = f"139{(serial + index) % 10**8:08d}"
        consumer = await api.setup("/v1/consumers", {"phone": phone}, token=merchant.token)
        # a consumer signs in with a code sent to its phone; the benchmark's made-up phones have none, so their
        # tokens are issued in the database (setup, not measured)
        return Consumer(merchant, consumer["id"], await consumer_token(consumer["id"]))

    return bank_auth, await _each(range(consumers), concurrency, sign_up)


async def run(
    url: str,
    regulator: str,
    *,
    consumers: int,
    sessions: int,
    merchants: int,
    concurrency: int,
    class_size: int = 1,
    server_pid: int | None = None,
    database: str | None = None,
    consumer_token: Callable[[str], Awaitable[str]],
) -> FlowResult:
    """Set up through the API, then measure the four steps one after the other."""
    # A lean client (escrow.kit.http1): it shares the cores with the service, so its own CPU must stay small.
    async with Http1Client(url, concurrency) as client:
        api = Api(client, secrets.token_hex(4).upper())
        plan_sessions = max(PLAN_SESSIONS, sessions)
        bank, people = await setup(api, regulator, merchants, consumers, plan_sessions, concurrency, consumer_token)

        async def sell(step: StepResult, consumer: Consumer) -> Card | None:
            body = {"plan_id": consumer.merchant.plan_id, "consumer_id": consumer.id}
            sold = await api.measured(step, "/v1/cards", body, token=consumer.merchant.token)
            return Card(consumer, sold["card"]["id"], sold["payment"]) if sold else None

        async def deposit(step: StepResult, card: Card) -> Card | None:
            body = {
                "payment_reference": card.payment["payment_reference"],
                "amount": card.payment["amount"],
                "bank_transaction_id": f"BENCH-{api.run}-{card.id}",
            }
            return card if await api.measured(step, "/v1/deposits", body, bank=bank) else None

        async def consume(step: StepResult, batch: list[Card]) -> list[tuple[Card, str]] | None:
            merchant = batch[0].consumer.merchant
            if class_size == 1:  # one service per request
                path, body = f"/v1/cards/{batch[0].id}/consumptions", {"sessions": 1}
                recorded = await api.measured(step, path, body, token=merchant.token)
                return [(batch[0], recorded["id"])] if recorded else None
            body = {"services": [{"card_id": card.id, "sessions": 1} for card in batch], "note": "class"}
            recorded = await api.measured(step, "/v1/consumptions", body, token=merchant.token)
            return list(zip(batch, (c["id"] for c in recorded["consumptions"]), strict=True)) if recorded else None

        async def confirm(step: StepResult, consumption: tuple[Card, str]) -> None:
            card, consumption_id = consumption
            await api.measured(step, f"/v1/consumptions/{consumption_id}/confirm", token=card.consumer.token)

        def probe() -> dict[str, float]:
            return cpu_seconds(server_pid, database)

        before = probe()
        sales, sold = await _phase("sale", people, concurrency, sell, probe)
        deposits, paid = await _phase("deposit", sold, concurrency, deposit, probe)
        # Round by round over all cards, so concurrent requests touch different cards, as different gyms' desks do;
        # with classes, each merchant's cards attend in classes of ``class_size``.
        rounds = [batch for _ in range(sessions) for batch in classes(paid, class_size)]
        consumptions, recorded = await _phase("consumption", rounds, concurrency, consume, probe)
        services = [service for batch in recorded for service in batch]
        confirmations, _ = await _phase("confirmation", services, concurrency, confirm, probe)
        after = probe()

    used = {group: after[group] - before[group] for group in after if group in before}
    if used:  # the machine's total, less what is accounted for above
        used["everything else"] = max(0.0, used.pop("machine") - sum(used.values()))
    steps = [sales, deposits, consumptions, confirmations]
    return FlowResult(steps, consumers, sessions, merchants, concurrency, used, class_size, len(services))


def table(result: FlowResult) -> str:
    """Requests/s and latency per step, and when the server is ours the CPU each request cost it and PostgreSQL."""
    with_cpu = all(step.cpu_ms_per_request("server") is not None for step in result.steps)
    header = "| step | requests | req/s | p50 ms | p99 ms | errors |"
    rule = "|---|---:|---:|---:|---:|---:|"
    if with_cpu:
        header += " server CPU ms/req | PostgreSQL CPU ms/req |"
        rule += "---:|---:|"
    lines = [header, rule]
    for step in result.steps:
        line = (
            f"| {step.step} | {step.requests} | {step.rate:,.0f} | {step.percentile(50):.1f} |"
            f" {step.percentile(99):.1f} | {step.errors} |"
        )
        if with_cpu:
            line += "".join(
                f" {value:.2f} |" if (value := step.cpu_ms_per_request(group)) is not None else " — |"
                for group in ("server", "PostgreSQL")
            )
        lines.append(line)
    return "\n".join(lines)


def summary(result: FlowResult) -> str:
    lines = [
        f"confirmed releases/s end to end: {result.end_to_end_rate:,.0f} overall"
        f" ({result.confirmed} confirmed in {result.seconds:.1f} s of sale, deposit, consumption and confirmation),"
        f" {result.confirmation_rate:,.0f} during the confirmation step"
    ]
    if result.class_size > 1:
        lines.append(
            f"services recorded in classes of up to {result.class_size}: {result.recorded} services in"
            f" {result.steps[2].requests} requests"
        )
    if result.cpu_seconds:
        available = (os.cpu_count() or 1) * result.seconds
        used = ", ".join(f"{group} {seconds:.1f} s" for group, seconds in result.cpu_seconds.items())
        lines.append(f"CPU seconds used during the measured steps, of {available:.1f} available: {used}")
    return "\n".join(lines)


def errors(result: FlowResult) -> str:
    lines = [f"{result.errors} requests failed"]
    for step in result.steps:
        lines.extend(f"  {step.step}: {sample}" for sample in step.error_samples)
    return "\n".join(lines)


# --- CPU accounting (Linux /proc; empty elsewhere) -------------------------------------------------------------------


def cpu_seconds(server_pid: int | None, database: str | None) -> dict[str, float]:
    """CPU seconds (user + system) used so far by this process, the server's process tree, the PostgreSQL server that
    holds ``database``, and the whole machine (so that what anything else used shows too).

    A tree counts its exited processes too (in their parents' children-times), so connections that come and go
    during a run are not lost.
    """
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        # user nice system idle iowait irq softirq steal: all but idle and iowait is busy
        jiffies = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        entries = [entry for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    except (OSError, AttributeError, ValueError):  # no /proc, or no sysconf: not Linux
        return {}
    processes: dict[int, tuple[int, float, str]] = {}  # pid -> (parent pid, CPU seconds, command line)
    for entry in entries:
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            fields = [int(n) for n in stat[stat.rindex(")") + 2 :].split()[1:15]]  # ppid ... cstime
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            # utime + stime + cutime + cstime: the children's times are added once the process has waited for them
            processes[int(entry.name)] = (fields[0], sum(fields[10:14]) / ticks, command)

    def tree(root: int) -> float:
        def descends(pid: int) -> bool:
            while pid > 1 and pid != root:
                pid = processes.get(pid, (0, 0.0, ""))[0]
            return pid == root

        return sum(cpu for pid, (_, cpu, _) in processes.items() if descends(pid))

    groups = {"bench client": processes.get(os.getpid(), (0, 0.0, ""))[1]}
    if server_pid is not None:
        groups["server"] = tree(server_pid)
    # A backend's command line reads "postgres: user database host state"; its parent is the postmaster.
    backends = [
        parent for parent, _, line in processes.values() if line.startswith("postgres: ") and f" {database} " in line
    ]
    if database is not None and backends:
        groups["PostgreSQL"] = tree(backends[0])
    groups["machine"] = (sum(jiffies) - jiffies[3] - jiffies[4]) / ticks
    return groups


# --- a server of our own ---------------------------------------------------------------------------------------------


async def regulator_token(engine: AsyncEngine) -> str:
    async with create_sessionmaker(engine)() as session:
        _, secret = await issue_token(session, "regulator", "bench")
        await session.commit()
    return secret


def consumer_tokens(engine: AsyncEngine) -> Callable[[str], Awaitable[str]]:
    """Issues a consumer's token in the server's database (the benchmark's phones receive no text messages)."""

    async def issue(consumer_id: str) -> str:
        async with create_sessionmaker(engine)() as session:
            _, secret = await issue_token(session, "consumer", "bench", principal_id=consumer_id)
            await session.commit()
        return secret

    return issue


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.asynccontextmanager
async def server(database_url: str, workers: int) -> AsyncIterator[tuple[str, int]]:
    """`escrow serve` on ``database_url`` and a free port, without background jobs; yields its URL and pid."""
    port = _free_port()
    env = {
        **os.environ,  # other ESCROW_* settings (pool size, for one) pass through
        "ESCROW_DATABASE_URL": database_url,
        "ESCROW_HOST": "127.0.0.1",
        "ESCROW_PORT": str(port),
        "ESCROW_WORKERS": str(workers),
        "ESCROW_SECRET_KEY": secrets.token_urlsafe(32),
        "ESCROW_JOBS_INTERVAL_SECONDS": "0",
        "ESCROW_SEAL_INTERVAL_SECONDS": "0",
        "ESCROW_LOG_LEVEL": "WARNING",
    }
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "escrow", "serve", env=env, stdout=log, stderr=log
        )

        def output() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")[-4000:]

        try:
            await _wait_until_ready(process, url, output)
            yield url, process.pid
        except Exception:
            print(f"escrow serve's output:\n{output()}", file=sys.stderr)
            raise
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(process.wait(), 30)
                except TimeoutError:
                    process.kill()
                    await process.wait()


async def _wait_until_ready(process: asyncio.subprocess.Process, url: str, output: Callable[[], str]) -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(base_url=url, timeout=2) as client:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"escrow serve exited with {process.returncode}:\n{output()}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"escrow serve was not ready within 60 s:\n{output()}")
