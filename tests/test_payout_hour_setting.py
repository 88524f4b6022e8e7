"""ESCROW_PAYOUT_HOUR set empty means payouts on demand only, as documented (issue #12, item 5): the jobs make no
payout run at any hour, and `escrow run-jobs` starts instead of failing on the empty value."""

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from escrow.config import Settings
from escrow.jobs import run_jobs_once
from escrow.kit.clock import utcnow
from escrow.models import Instruction
from tests.parties import (
    account_totals,
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


def eight_pm_in_shanghai() -> datetime:
    """20:00 business time today: past the default payout hour (18)."""
    today = (utcnow() + timedelta(hours=8)).date()
    return datetime(today.year, today.month, today.day, 12, 0, tzinfo=UTC)


async def released_to_merchant(client: httpx.AsyncClient, session: AsyncSession) -> tuple[str, str]:
    """A gym whose one confirmed session (100 yuan) waits in merchant_payable. Returns (regulator, escrow account)."""
    regulator = await regulator_token(session)
    bank = await onboard_bank(client, regulator, "PHRB")
    gym = await onboard_merchant(client, regulator, "Late Gym")
    account = await open_escrow_account(client, gym, bank)
    consumer_id, consumer = await consumer_token(client, gym, "13900001501")
    plan = await create_plan(client, gym, kind="sessions", sessions=10, price=1000 * 100)
    card_id = await sell_and_pay(client, gym, bank, plan["id"], consumer_id)
    recorded = await client.post(
        f"/v1/cards/{card_id}/consumptions", json={"sessions": 1}, headers={**bearer(gym.token), **key()}
    )
    confirmed = await client.post(
        f"/v1/consumptions/{recorded.json()['id']}/confirm", headers={**bearer(consumer), **key()}
    )
    assert confirmed.status_code == 200, confirmed.text
    assert (await account_totals(client, regulator, account))["merchant_payable"] == 10000
    return regulator, account


def run_jobs_command(db_url: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """`escrow run-jobs --once` in a process of its own, as cron runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESCROW_")}
    env.update(ESCROW_DATABASE_URL=db_url, ESCROW_LOG_FORMAT="json", **variables)
    command = [sys.executable, "-m", "escrow", "run-jobs", "--once"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


class TestEmptyPayoutHour:
    def test_the_empty_variable_reads_as_on_demand_only(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("ESCROW_PAYOUT_HOUR", "")
        assert Settings().payout_hour is None
        monkeypatch.setenv("ESCROW_PAYOUT_HOUR", "  ")
        assert Settings().payout_hour is None
        monkeypatch.setenv("ESCROW_PAYOUT_HOUR", "9")
        assert Settings().payout_hour == 9
        monkeypatch.delenv("ESCROW_PAYOUT_HOUR")
        assert Settings().payout_hour == 18

    async def test_jobs_after_six_pm_pay_nothing_out_when_empty(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        sessionmaker: async_sessionmaker,
        settings: Settings,
        db_url: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        regulator, account = await released_to_merchant(client, session)
        monkeypatch.setenv("ESCROW_PAYOUT_HOUR", "")
        on_demand = Settings(**settings.model_dump(exclude={"payout_hour"}))
        assert on_demand.payout_hour is None

        report = await run_jobs_once(sessionmaker, on_demand, now=eight_pm_in_shanghai())

        assert report["payout_instructions"] is None
        assert await session.scalar(select(func.count()).select_from(Instruction)) == 0
        assert (await account_totals(client, regulator, account))["merchant_payable"] == 10000
        # the same evening with the default hour: the day's run pays the 100 yuan out
        report = await run_jobs_once(sessionmaker, settings, now=eight_pm_in_shanghai())
        assert report["payout_instructions"] == 1
        assert (await account_totals(client, regulator, account))["payouts_in_flight"] == 10000

    async def test_run_jobs_command_starts_and_pays_nothing_out(
        self, client: httpx.AsyncClient, session: AsyncSession, db_url: str
    ) -> None:
        regulator, account = await released_to_merchant(client, session)
        done = run_jobs_command(db_url, ESCROW_PAYOUT_HOUR="")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "payout_instructions=None" in done.stdout
        assert (await account_totals(client, regulator, account))["merchant_payable"] == 10000
        assert await session.scalar(select(func.count()).select_from(Instruction)) == 0
