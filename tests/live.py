"""`escrow serve` as a real process on a test database, for tests that drive the service from outside."""

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve(database_url: str, **settings: str) -> Iterator[str]:
    """The service on ``database_url`` and a free port (no background jobs); yields its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "ESCROW_DATABASE_URL": database_url,
        "ESCROW_HOST": "127.0.0.1",
        "ESCROW_PORT": str(port),
        "ESCROW_WORKERS": "1",
        "ESCROW_SECRET_KEY": secrets.token_urlsafe(32),
        "ESCROW_JOBS_INTERVAL_SECONDS": "0",
        "ESCROW_SEAL_INTERVAL_SECONDS": "0",
        "ESCROW_LOG_LEVEL": "WARNING",
        "ESCROW_LOG_FORMAT": "json",
        **{f"ESCROW_{name.upper()}": value for name, value in settings.items()},
    }
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([sys.executable, "-m", "escrow", "serve"], env=env, stdout=log, stderr=log)

        def output() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")[-4000:]

        try:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"escrow serve exited with {process.returncode}:\n{output()}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"escrow serve was not ready within 60 s:\n{output()}")
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
