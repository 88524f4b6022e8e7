"""Real PostgreSQL for every test: one server per session, migrations once into a template, a fresh clone per test."""

import asyncio
import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from escrow import migrate
from escrow.app import create_app
from escrow.config import Settings
from escrow.db import create_engine, create_sessionmaker, embedded_server, with_database

TEMPLATE = f"escrow_template_{os.getpid()}"
_numbers = itertools.count()


async def _admin(server_url: str, *statements: str) -> None:
    connection = await asyncpg.connect(server_url)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """An admin URL: ESCROW_TEST_DATABASE_URL when set, else a throwaway embedded PostgreSQL."""
    configured = os.environ.get("ESCROW_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    data_dir = Path(tempfile.mkdtemp(prefix="escrow-test-")) / "pgdata"
    server = embedded_server(data_dir)
    url = server.get_uri()
    # Durability is pointless for a throwaway test cluster; the tests exercise locks and constraints, not fsync.
    asyncio.run(
        _admin(
            url, "ALTER SYSTEM SET fsync = off", "ALTER SYSTEM SET synchronous_commit = off", "SELECT pg_reload_conf()"
        )
    )
    yield url
    server.cleanup()
    shutil.rmtree(data_dir.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def template_url(pg_server_url: str) -> str:
    asyncio.run(_admin(pg_server_url, f"DROP DATABASE IF EXISTS {TEMPLATE}", f"CREATE DATABASE {TEMPLATE}"))
    url = with_database(pg_server_url, TEMPLATE)
    migrate.upgrade(url)
    return url


def _new_database_name() -> str:
    return f"escrow_test_{os.getpid()}_{next(_numbers)}"


@pytest.fixture
def fresh_database(pg_server_url: str) -> Iterator[str]:
    """An empty database (no migrations), for migration tests."""
    name = _new_database_name()
    asyncio.run(_admin(pg_server_url, f"CREATE DATABASE {name}"))
    yield with_database(pg_server_url, name)
    asyncio.run(_admin(pg_server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
async def db_url(pg_server_url: str, template_url: str) -> AsyncIterator[str]:
    """A migrated database of this test's own, cloned from the template, so the test may commit freely."""
    name = _new_database_name()
    await _admin(pg_server_url, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    yield with_database(pg_server_url, name)
    await _admin(pg_server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(
        database_url=db_url,
        log_format="json",
        seal_interval_seconds=0,
        jobs_interval_seconds=0,
        secret_key="test-secret-key-0123456789abcdef",
        # tests sign many consumers in from one address; tests/test_consumer_channel.py checks the limits themselves
        consumer_codes_per_phone_per_hour=10_000,
        consumer_codes_per_address_per_hour=10_000,
    )


@pytest.fixture
async def engine(db_url: str, settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_url, settings)
    yield engine
    await engine.dispose()


@pytest.fixture
async def session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with create_sessionmaker(engine)() as session:
        yield session


@pytest.fixture
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker:
    """Fresh sessions of their own (a job, the CLI, another process would use one each)."""
    return create_sessionmaker(engine)


@pytest.fixture
def app(settings: Settings) -> Litestar:
    return create_app(settings)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the test's own event loop, so concurrent requests really run concurrently."""
    started, stop = asyncio.Event(), asyncio.Event()

    async def run_lifespan() -> None:
        # Entered and exited in one task: Litestar's lifespan holds an anyio cancel scope.
        async with app.lifespan():
            started.set()
            await stop.wait()

    lifespan = asyncio.create_task(run_lifespan())
    await asyncio.wait_for(started.wait(), 30)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://escrow.test") as client:
        yield client
    stop.set()
    await lifespan
