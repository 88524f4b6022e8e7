"""The operator commands, run as a person would run them."""

import os
import subprocess
import sys

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from escrow.auth.tokens import authenticate
from tests.test_ledger_integrity import populate, superuser


def escrow(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESCROW_")}
    env.update(ESCROW_DATABASE_URL=db_url, ESCROW_LOG_FORMAT="json")
    return subprocess.run([sys.executable, "-m", "escrow", *args], env=env, capture_output=True, text=True, timeout=120)


class TestVerifyCommand:
    async def test_green_then_red_after_tampering(
        self, db_url: str, session: AsyncSession, engine: AsyncEngine
    ) -> None:
        await populate(session)
        green = escrow(db_url, "verify")
        assert green.returncode == 0, green.stdout + green.stderr
        assert "sealed 20 new entries" in green.stdout and "ledger verified" in green.stdout
        await superuser(engine, "UPDATE ledger_postings SET amount = 1 WHERE id = 1")
        red = escrow(db_url, "verify", "--no-seal")
        assert red.returncode == 1
        assert "FAIL hash_chain" in red.stdout and "LEDGER VERIFICATION FAILED" in red.stdout

    async def test_checks_before_sealing_and_seals_only_what_verifies(
        self, db_url: str, session: AsyncSession, engine: AsyncEngine
    ) -> None:
        await populate(session)
        entry = await session.scalar(text("SELECT entry_id FROM ledger_postings WHERE id = 1"))
        await session.rollback()
        await superuser(engine, "UPDATE ledger_postings SET amount = amount + 1 WHERE id = 1")  # not sealed yet
        red = escrow(db_url, "verify")
        assert red.returncode == 1, red.stdout + red.stderr
        assert "FAIL entries_balance" in red.stdout and f"'entry_id': {entry}" in red.stdout
        assert "FAIL not sealed" in red.stdout and "sealed 10 new entries" in red.stdout  # the other book only
        await superuser(engine, "UPDATE ledger_postings SET amount = amount - 1 WHERE id = 1")  # restored
        green = escrow(db_url, "verify")
        assert green.returncode == 0, green.stdout + green.stderr
        assert "sealed 10 new entries" in green.stdout and "ledger verified" in green.stdout


class TestAdminCommand:
    async def test_create_token_prints_a_working_secret_once(self, db_url: str, session: AsyncSession) -> None:
        result = escrow(db_url, "admin", "create-token", "--role", "regulator", "--name", "Shanghai AMR")
        assert result.returncode == 0, result.stderr
        secret = result.stdout.strip()
        assert secret.startswith("esk_reg_") and len(secret) >= 8 + 43
        principal = await authenticate(session, f"Bearer {secret}")
        assert principal is not None and principal.role == "regulator"
        stored = (await session.execute(text("SELECT token_hash, hint FROM api_tokens"))).one()
        assert secret not in stored and stored.hint.startswith("esk_reg_")


class TestBenchFlowCommand:
    def test_tiny_run_goes_through_every_step_over_http(self, db_url: str) -> None:
        result = escrow(
            db_url,
            *("bench", "flow", "--consumers", "4", "--sessions", "2", "--merchants", "2"),
            *("--concurrency", "4", "--workers", "1"),
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert (
            "| step | requests | req/s | p50 ms | p99 ms | errors | server CPU ms/req | PostgreSQL CPU ms/req |"
            in result.stdout
        )
        rows = bench_rows(result.stdout)
        for step, requests in {"sale": "4", "deposit": "4", "consumption": "8", "confirmation": "8"}.items():
            assert rows[step][0] == requests and rows[step][4] == "0", (step, rows[step])
            # CPU per request, in clock ticks of 10 ms: a tiny run may round to 0
            assert float(rows[step][5]) >= 0 and float(rows[step][6]) >= 0, (step, rows[step])
        assert "confirmed releases/s end to end" in result.stdout and "(8 confirmed in" in result.stdout
        assert "1 worker(s)" in result.stdout and "one service per request" in result.stdout

    def test_classes_record_a_merchants_cards_together(self, db_url: str) -> None:
        result = escrow(
            db_url,
            *("bench", "flow", "--consumers", "6", "--sessions", "2", "--merchants", "2", "--class-size", "3"),
            *("--concurrency", "4", "--workers", "1"),
        )
        assert result.returncode == 0, result.stdout + result.stderr
        rows = bench_rows(result.stdout)
        # 6 cards at 2 merchants: a class of 3 per merchant per round, 2 rounds
        assert rows["consumption"][0] == "4" and rows["confirmation"][0] == "12", rows
        assert "12 services in 4 requests" in result.stdout and "(12 confirmed in" in result.stdout

    def test_a_class_larger_than_a_roll_is_refused(self, db_url: str) -> None:
        result = escrow(db_url, "bench", "flow", "--class-size", "201")
        assert result.returncode == 2 and "--class-size must be between 1 and 200" in result.stderr


def bench_rows(stdout: str) -> dict[str, list[str]]:
    return {
        cells[0]: cells[1:]
        for line in stdout.splitlines()
        if line.startswith("| ") and (cells := [cell.strip() for cell in line.strip("|").split("|")])
    }


class TestHelp:
    def test_every_command_has_help(self) -> None:
        for command in (
            ["--help"],
            ["serve", "--help"],
            ["migrate", "--help"],
            ["db-url", "--help"],
            ["openapi", "--help"],
            ["routes", "--help"],
            ["verify", "--help"],
            ["admin", "create-token", "--help"],
            ["bench", "ledger", "--help"],
            ["bench", "flow", "--help"],
        ):
            result = subprocess.run([sys.executable, "-m", "escrow", *command], capture_output=True, text=True)
            assert result.returncode == 0 and "usage: escrow" in result.stdout, command
