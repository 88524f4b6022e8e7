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
        ):
            result = subprocess.run([sys.executable, "-m", "escrow", *command], capture_output=True, text=True)
            assert result.returncode == 0 and "usage: escrow" in result.stdout, command
