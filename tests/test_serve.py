"""`escrow serve` with no configuration: its own PostgreSQL, ready within 30 s, and Ctrl-C or SIGTERM stops both."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_env(tmp_path: Path, port: int, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESCROW_") and k != "XDG_RUNTIME_DIR"}
    env.update(
        ESCROW_DATA_DIR=str(tmp_path / "pgdata"),
        ESCROW_PORT=str(port),
        ESCROW_LOG_FORMAT="json",
        ESCROW_SECRET_KEY_FILE=str(tmp_path / "secret.key"),
        ESCROW_SEAL_INTERVAL_SECONDS="0",
        ESCROW_JOBS_INTERVAL_SECONDS="0",
        **settings,
    )
    return env


def start_serve(env: dict[str, str], *args: str) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "escrow", "serve", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so a failed test can kill the workers too
    )
    deadline = time.monotonic() + 60
    status = None
    while time.monotonic() < deadline and status != 200 and server.poll() is None:
        try:
            status = httpx.get(f"http://127.0.0.1:{env['ESCROW_PORT']}/readyz", timeout=1).status_code
        except httpx.TransportError:
            time.sleep(0.2)
    if status != 200:
        pytest.fail(f"not ready within 60 s:\n{kill_serve(server)}")
    return server


def kill_serve(server: subprocess.Popen) -> str:
    """Kill ``escrow serve`` and its workers (which hold its output pipe open); its output."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    return server.communicate()[0].decode()


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


def assert_stopped(pid: int, data_dir: Path) -> None:
    """The postmaster is gone (a zombie its parent has not reaped yet is gone too) and its pid file removed."""
    try:
        alive = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        alive = False
    assert not alive, "the embedded PostgreSQL is still running"
    assert not (data_dir / "postmaster.pid").exists()


def stop_postgres(data_dir: Path) -> None:
    """Tidy up after a test that left a server running on purpose."""
    if (data_dir / "postmaster.pid").exists():
        pid = postmaster_pid(data_dir)
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).terminate()


class TestServe:
    def test_zero_setup_start_ready_and_stop(self, tmp_path: Path) -> None:
        data_dir = tmp_path / "pgdata"
        server = start_serve(serve_env(tmp_path, free_port()))
        try:
            assert (data_dir / "postmaster.pid").exists()
        finally:
            server.send_signal(signal.SIGINT)
            output = server.communicate(timeout=30)[0].decode()
        assert server.returncode == 0, output
        assert not (data_dir / "postmaster.pid").exists(), "the embedded PostgreSQL is still running"
        assert (data_dir / "PG_VERSION").exists()  # the data directory stays, for the next start
        assert (tmp_path / "secret.key").stat().st_mode & 0o077 == 0  # the generated secret is private

    def test_sigterm_stops_the_embedded_postgres(self, tmp_path: Path) -> None:
        data_dir = tmp_path / "pgdata"
        server = start_serve(serve_env(tmp_path, free_port()))
        postmaster = postmaster_pid(data_dir)
        server.send_signal(signal.SIGTERM)  # what a service manager sends
        output = server.communicate(timeout=60)[0].decode()
        assert server.returncode == 0, output
        assert_stopped(postmaster, data_dir)
        assert json.loads((data_dir / ".handle_pids.json").read_text()) == []
        # every line JSON, uvicorn's and Alembic's too; no warning about XDG_RUNTIME_DIR (unset here)
        events = [json.loads(line) for line in output.splitlines() if line.strip()]
        assert {"uvicorn.error", "alembic.runtime.migration"} <= {event.get("logger") for event in events}

    def test_a_server_killed_before_does_not_keep_the_next_from_stopping_postgres(self, tmp_path: Path) -> None:
        data_dir = tmp_path / "pgdata"
        env = serve_env(tmp_path, free_port())
        killed = start_serve(env)
        killed.kill()  # no exit-time cleanup at all: PostgreSQL keeps running, the pid stays in the handle list
        killed.communicate(timeout=30)
        try:
            assert killed.pid in json.loads((data_dir / ".handle_pids.json").read_text())
            first_postmaster = postmaster_pid(data_dir)
            server = start_serve(env)
            assert postmaster_pid(data_dir) == first_postmaster  # reused, not started twice
            server.send_signal(signal.SIGTERM)
            output = server.communicate(timeout=60)[0].decode()
            assert server.returncode == 0, output
            assert_stopped(first_postmaster, data_dir)
        finally:
            stop_postgres(data_dir)


# A process that, like a slow init, reaps its orphans late: the postmaster (orphaned once pg_ctl exits) is its child,
# so when the postmaster is killed it stays a zombie until this process reaps it, 2.5 s later.
ZOMBIE_HARNESS = textwrap.dedent(
    """
    import ctypes, os, signal, subprocess, sys, threading, time
    PR_SET_CHILD_SUBREAPER = 36
    assert ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    db_url = [sys.executable, "-m", "escrow", "db-url"]
    subprocess.run(db_url, check=True, capture_output=True)
    data_dir = os.environ["ESCROW_DATA_DIR"]
    postmaster = int(open(os.path.join(data_dir, "postmaster.pid")).readline())
    os.kill(postmaster, signal.SIGKILL)
    time.sleep(0.3)
    state = open(f"/proc/{postmaster}/stat").read().rsplit(")", 1)[1].split()[0]
    print("state", state, flush=True)

    def reap_late():
        time.sleep(2.5)
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                time.sleep(0.1)

    threading.Thread(target=reap_late, daemon=True).start()
    again = subprocess.run(db_url, capture_output=True, text=True)
    print("exit", again.returncode, flush=True)
    print(again.stdout + again.stderr, flush=True)
    """
)


class TestRestart:
    def test_restart_right_after_the_postmaster_was_killed(self, tmp_path: Path) -> None:
        data_dir = tmp_path / "pgdata"
        env = serve_env(tmp_path, free_port())
        try:
            run = subprocess.run(
                [sys.executable, "-c", ZOMBIE_HARNESS], env=env, capture_output=True, text=True, timeout=120
            )
            assert "state Z" in run.stdout, run.stdout + run.stderr  # the killed postmaster lingered as a zombie
            assert "exit 0" in run.stdout, run.stdout + run.stderr
            assert postmaster_pid(data_dir) > 0
        finally:
            stop_postgres(data_dir)


class TestGracefulShutdown:
    @pytest.mark.parametrize("workers", [1, 2])
    def test_a_slow_client_does_not_hold_the_shutdown(self, tmp_path: Path, db_url: str, workers: int) -> None:
        port = free_port()
        env = serve_env(tmp_path, port, ESCROW_DATABASE_URL=db_url, ESCROW_SHUTDOWN_TIMEOUT_SECONDS="2")
        server = start_serve(env, "--workers", str(workers))
        slow = socket.create_connection(("127.0.0.1", port))
        try:
            slow.sendall(
                b"POST /v1/consumer-tokens HTTP/1.1\r\nHost: escrow\r\nContent-Type: application/json\r\n"
                b"Idempotency-Key: slow-1\r\nContent-Length: 1000\r\n\r\n" + b'{"phone": '
            )  # an anonymous route whose body is read: headers and 10 of 1,000 body bytes, then nothing
            time.sleep(0.5)
            server.send_signal(signal.SIGTERM)
            started = time.monotonic()
            try:
                output = server.communicate(timeout=15)[0].decode()
            except subprocess.TimeoutExpired:
                pytest.fail(f"still waiting for the slow client:\n{kill_serve(server)}")
            assert time.monotonic() - started < 10, output
            assert server.returncode == 0, output
        finally:
            slow.close()
