"""`escrow closure settle` and `escrow bench closure`, run as an operator would run them."""

import io
import os
import subprocess
import sys

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from escrow.cli import closure_settle
from escrow.closures import bench
from escrow.config import Settings
from escrow.ledger.integrity import verify_database
from escrow.models import Card, ClosureItem, Instruction, Refund
from tests.closing import order_closure
from tests.parties import (
    bearer,
    consumer_token,
    create_plan,
    key,
    onboard_bank,
    onboard_merchant,
    open_escrow_account,
    regulator_token,
    sell_and_pay,
)

YUAN = 100


def escrow(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The command in a process of its own; output decoded as is (text mode would turn the bar's \\r into \\n)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESCROW_")}
    env.update(ESCROW_DATABASE_URL=db_url, ESCROW_LOG_FORMAT="json", ESCROW_LOG_LEVEL="WARNING")
    done = subprocess.run([sys.executable, "-m", "escrow", *args], env=env, capture_output=True, timeout=120)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


async def closing_salon(client: httpx.AsyncClient, session: AsyncSession, cards: int) -> tuple[str, str]:
    """A salon with ``cards`` paid cards of 1,000 yuan, closed by the regulator (frozen at once).
    Returns (regulator token, closure id)."""
    regulator = await regulator_token(session)
    bank = await onboard_bank(client, regulator, "CLIB")
    salon = await onboard_merchant(client, regulator, "Closing Salon", "salon")
    await open_escrow_account(client, salon, bank)
    plan = await create_plan(client, salon, kind="sessions", sessions=10, price=1000 * YUAN)
    for n in range(cards):
        consumer_id, _ = await consumer_token(client, salon, f"1390000700{n}")
        await sell_and_pay(client, salon, bank, plan["id"], consumer_id)
    closure = await order_closure(client, regulator, salon.id)
    assert closure["status"] == "frozen"
    return regulator, closure["id"]


class TestClosureSettleCommand:
    async def test_settles_a_started_closure_with_progress_and_totals(
        self, client: httpx.AsyncClient, session: AsyncSession, db_url: str, engine: AsyncEngine, settings: Settings
    ) -> None:
        regulator, closure_id = await closing_salon(client, session, 3)
        started = await client.post(f"/v1/closures/{closure_id}/settlement", headers={**bearer(regulator), **key()})
        assert started.status_code == 200 and started.json()["status"] == "settling", started.text

        result = escrow(db_url, "closure", "settle", closure_id, "--batch", "1")

        assert result.returncode == 0, result.stdout + result.stderr
        # one transaction per item here: the bar is redrawn in place after each one, with the rate
        assert "\r[" in result.stderr
        for done in ("0/3 items", "1/3 items", "2/3 items", "3/3 items"):
            assert done in result.stderr, result.stderr
        assert "[##############################] 3/3 items" in result.stderr and "items/s" in result.stderr
        assert f"closure {closure_id} is settled: 3 of 3 items" in result.stdout
        rows = {
            cells[0]: cells[1:]
            for line in result.stdout.splitlines()
            if line.startswith("| ") and (cells := [cell.strip() for cell in line.strip("|").split("|")])
        }
        assert rows["from custody"] == ["3,000.00", "100.0 %"]
        assert rows["**unused value settled**"] == ["3,000.00", "100.0 %"]
        assert rows["fund paid"][0] == rows["unpaid claims on the merchant"][0] == "0.00"

        got = await client.get(f"/v1/closures/{closure_id}", headers=bearer(regulator))
        assert got.json()["status"] == "settled" and got.json()["progress"] == {"done": 3, "total": 3}
        assert await session.scalar(select(func.count()).select_from(Refund).where(Refund.cause == "closure")) == 3
        assert await session.scalar(select(func.count()).where(Instruction.kind == "refund")) == 3
        assert (await verify_database(engine)).ok

        # run again: nothing left to do, and it says so
        out, err = io.StringIO(), io.StringIO()
        assert await closure_settle(engine, settings, closure_id, None, out=out, err=err) == 0
        assert f"closure {closure_id} is already settled: nothing left to settle" in out.getvalue()
        assert "| from custody | 3,000.00 | 100.0 % |" in out.getvalue() and err.getvalue() == ""

    async def test_a_frozen_closure_is_refused_until_started(
        self, client: httpx.AsyncClient, session: AsyncSession, db_url: str
    ) -> None:
        regulator, closure_id = await closing_salon(client, session, 1)

        result = escrow(db_url, "closure", "settle", closure_id)

        assert result.returncode == 1
        assert (
            f"closure {closure_id} is frozen: start it with POST /v1/closures/{closure_id}/settlement first"
            in result.stderr
        )
        assert result.stdout == ""
        got = await client.get(f"/v1/closures/{closure_id}", headers=bearer(regulator))
        assert got.json()["status"] == "frozen"  # nothing was planned or executed
        assert await session.scalar(select(func.count()).select_from(ClosureItem)) == 0
        assert await session.scalar(select(Card.status)) == "active"

    async def test_an_unknown_closure(self, engine: AsyncEngine, settings: Settings) -> None:
        out, err = io.StringIO(), io.StringIO()
        assert await closure_settle(engine, settings, "clo_nope", None, out=out, err=err) == 1
        assert err.getvalue() == "no closure clo_nope\n" and out.getvalue() == ""

    def test_help(self) -> None:
        for command in (["closure", "settle", "--help"], ["bench", "closure", "--help"]):
            result = subprocess.run([sys.executable, "-m", "escrow", *command], capture_output=True, text=True)
            assert result.returncode == 0 and "usage: escrow" in result.stdout, command

    def test_batch_is_bounded(self, db_url: str) -> None:
        result = escrow(db_url, "closure", "settle", "clo_x", "--batch", "0")
        assert result.returncode == 2 and "must be between 1 and 20000" in result.stderr


class TestClosureBench:
    @pytest.mark.parametrize("ratio_bp", [10_000, 4_000])
    async def test_tiny_run_settles_every_card_and_the_ledger_verifies(
        self, engine: AsyncEngine, settings: Settings, sessionmaker: async_sessionmaker, ratio_bp: int
    ) -> None:
        seen: list[tuple[int, int]] = []
        result = await bench.run(
            engine, settings, cards=300, ratio_bp=ratio_bp, batch=100, progress=lambda d, t: seen.append((d, t))
        )

        assert result.status == "settled" and result.ok
        assert result.totals.items == result.totals.done == 300  # one item per card, no earlier claims
        assert [s.name for s in result.steps] == ["freeze", "plan", "execution"]
        assert [s.items for s in result.steps] == [300, 300, 300]
        assert seen[0] == (0, 300) and seen[-1] == (300, 300) and (100, 300) in seen and (200, 300) in seen
        assert result.verify_ok is True and result.failed_checks == []
        assert result.verify_entries > result.setup.entries  # the settlement's entries were verified too
        assert result.peak_rss_kib > 0
        totals = result.totals
        assert totals.unused == (
            totals.from_custody + totals.set_off + totals.fund_paid + totals.fund_owed + totals.unpaid
        )
        if ratio_bp == 10_000:  # full custody pays everything
            assert totals.from_custody == totals.unused and totals.set_off == totals.fund_paid == 0
        else:  # outside custody: the merchant's unpaid payable first, then the fund, short: pro rata, the rest owed
            assert totals.set_off == result.setup.merchant_payable > 0
            assert 0 < totals.fund_paid <= result.setup.fund_contribution
            assert totals.fund_owed > 0 and totals.unpaid == 0
        async with sessionmaker() as session:
            left = await session.scalar(select(func.count()).where(Card.status == "active"))
            settled = await session.scalar(select(func.count()).where(Card.status == "closed_settled"))
        assert (left, settled) == (0, 300)
        assert (await verify_database(engine)).ok
        text = bench.table(result)
        assert text.startswith("| step | items | seconds | items/s |") and "| execution | 300 |" in text
        assert "verify_database (not part of the target): ok" in bench.summary(result)

    async def test_setup_is_memory_bounded_in_chunks(
        self, engine: AsyncEngine, settings: Settings, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(bench, "CHUNK", 40)
        chunks: list[tuple[int, int]] = []
        result = await bench.run(
            engine,
            settings,
            cards=100,
            ratio_bp=4_000,
            batch=30,
            verify=True,
            setup_progress=lambda d, t: chunks.append((d, t)),
        )
        assert chunks == [(0, 100), (40, 100), (80, 100), (100, 100)]
        assert result.ok and result.totals.done == 100 and result.verify_ok
