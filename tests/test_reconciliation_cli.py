"""`escrow reconcile FILE` and `escrow bench reconcile`, run as an operator would run them."""

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.config import Settings
from tests.reconciling import BANK_ACCOUNT_NUMBER, camt053, credit, desk, fee
from tests.test_reconciliation_xml import REFUSED


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"payout_hour": None})


def escrow(db_url: str, *args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    """The command in a process of its own, with the tests' service secret (account numbers are encrypted)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESCROW_")}
    env.update(
        ESCROW_DATABASE_URL=db_url,
        ESCROW_LOG_FORMAT="json",
        ESCROW_LOG_LEVEL="WARNING",
        ESCROW_SECRET_KEY="test-secret-key-0123456789abcdef",
        **env_extra,
    )
    done = subprocess.run([sys.executable, "-m", "escrow", *args], env=env, capture_output=True, timeout=300)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


async def stored(session: AsyncSession) -> int:
    count = await session.scalar(text("SELECT count(*) FROM bank_statements"))
    await session.rollback()
    return int(count)


class TestReconcileCommand:
    async def test_imports_and_matches_a_camt053_file_with_progress(
        self, client: httpx.AsyncClient, session: AsyncSession, db_url: str, tmp_path: Path
    ) -> None:
        shop = await desk(client, session)
        deposit = await shop.deposit()
        path = tmp_path / "statement.xml"
        path.write_bytes(camt053([(BANK_ACCOUNT_NUMBER, [credit(deposit), fee(250)], 0, None)]))
        done = escrow(db_url, "reconcile", str(path), "--bank", shop.bank.id)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "\r[" in done.stderr and "bytes" in done.stderr  # the progress bar, redrawn in place
        assert "1 statement(s), 2 lines" in done.stdout
        (row,) = [line for line in done.stdout.splitlines() if line.startswith("| stm_")]
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1:] == [shop.account_id, cells[2], "1", "created", "2", "1", "0", "1", "1", "no"]
        again = escrow(db_url, "reconcile", str(path))
        assert again.returncode == 0 and "| unchanged |" in again.stdout, again.stdout + again.stderr
        assert await stored(session) == 1

    async def test_a_refused_file_stores_nothing(
        self, client: httpx.AsyncClient, session: AsyncSession, db_url: str, tmp_path: Path
    ) -> None:
        await desk(client, session)
        path = tmp_path / "bomb.xml"
        path.write_text(REFUSED["billion_laughs"][0])
        done = escrow(db_url, "reconcile", str(path))
        assert done.returncode == 1
        assert "refused, nothing was stored" in done.stderr and "DOCTYPE" in done.stderr
        assert await stored(session) == 0

    async def test_an_oversized_file_is_refused_before_it_is_read(
        self, client: httpx.AsyncClient, session: AsyncSession, db_url: str, tmp_path: Path
    ) -> None:
        shop = await desk(client, session)
        path = tmp_path / "big.xml"
        path.write_bytes(camt053([(shop.account_id, [fee(n + 1, f"FEE-{n}") for n in range(20)], 0, None)]))
        done = escrow(db_url, "reconcile", str(path), ESCROW_STATEMENT_FILE_MAX_BYTES="2048")
        assert done.returncode == 1 and "ESCROW_STATEMENT_FILE_MAX_BYTES" in done.stderr, done.stderr
        assert await stored(session) == 0

    def test_a_missing_file_and_an_unknown_bank(self, db_url: str, tmp_path: Path) -> None:
        assert escrow(db_url, "reconcile", str(tmp_path / "none.xml")).returncode == 2
        path = tmp_path / "s.xml"
        path.write_text("<x/>")
        done = escrow(db_url, "reconcile", str(path), "--bank", "NOPE")
        assert done.returncode == 2 and "no bank NOPE" in done.stderr


class TestBenchReconcileCommand:
    @pytest.mark.parametrize("fmt", ["camt053", "json"])
    def test_tiny_run_prints_its_table(self, db_url: str, fmt: str) -> None:
        done = escrow(db_url, "bench", "reconcile", "--lines", "300", "--format", fmt)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "| step | lines | seconds | lines/s |" in done.stdout and "**import + matching**" in done.stdout
        assert "open breaks: {'amount_mismatch': 1, 'not_in_ledger': 1}" in done.stdout
        assert "'matched': 298, 'amount_mismatch': 1, 'not_in_ledger': 1" in done.stdout


class TestHelp:
    def test_the_new_commands_have_help(self) -> None:
        for command in (["reconcile", "--help"], ["bench", "reconcile", "--help"]):
            result = subprocess.run([sys.executable, "-m", "escrow", *command], capture_output=True, text=True)
            assert result.returncode == 0 and "usage: escrow" in result.stdout, command
