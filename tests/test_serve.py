"""`escrow serve` with no configuration: its own PostgreSQL, ready within 30 s, and Ctrl-C stops both."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TestServe:
    def test_zero_setup_start_ready_and_stop(self, tmp_path: Path) -> None:
        data_dir = tmp_path / "pgdata"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ESCROW_")}
        env.update(
            ESCROW_DATA_DIR=str(data_dir),
            ESCROW_PORT=str(port),
            ESCROW_LOG_FORMAT="json",
            ESCROW_SECRET_KEY_FILE=str(tmp_path / "secret.key"),
        )
        server = subprocess.Popen(
            [sys.executable, "-m", "escrow", "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            status = None
            while time.monotonic() < deadline and status != 200:
                try:
                    status = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code
                except httpx.TransportError:
                    time.sleep(0.2)
            assert status == 200, "not ready within 30 s"
            assert (data_dir / "postmaster.pid").exists()
        finally:
            server.send_signal(signal.SIGINT)
            output = server.communicate(timeout=30)[0].decode()
        assert server.returncode == 0, output
        assert not (data_dir / "postmaster.pid").exists(), "the embedded PostgreSQL is still running"
        assert (data_dir / "PG_VERSION").exists()  # the data directory stays, for the next start
        assert (tmp_path / "secret.key").stat().st_mode & 0o077 == 0  # the generated secret is private
