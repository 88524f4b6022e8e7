"""While the database can't be reached every request is a 503 with Retry-After, logged in one line, never a 500."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import asyncpg
import pytest
from httpx import AsyncClient
from litestar import Litestar, get
from litestar.params import FromQuery
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.app import create_app
from escrow.auth.tokens import issue_token
from escrow.config import Settings
from escrow.db import create_engine, create_sessionmaker
from escrow.jobs import run_jobs_once

IDEMPOTENCY_KEY = "idem-8c1f7e0d2b9a"


class Proxy:
    """A TCP proxy in front of the test's PostgreSQL that can be cut (connections reset, new ones refused)."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        socket_dir = dict(parse_qsl(parts.query)).get("host")
        self.unix_path = f"{socket_dir}/.s.PGSQL.{parts.port or 5432}" if socket_dir else None
        self.target = (parts.hostname, parts.port or 5432)
        self.target_url = target_url
        self.server: asyncio.Server | None = None
        self.port = 0
        self.pipes: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        parts = urlsplit(self.target_url)
        user = parts.username or "postgres"
        password = f":{parts.password}" if parts.password else ""
        return urlunsplit(("postgresql", f"{user}{password}@127.0.0.1:{self.port}", parts.path, "", ""))

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        for writer in list(self.pipes):
            writer.transport.abort()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.unix_path:
            server_reader, server_writer = await asyncio.open_unix_connection(self.unix_path)
        else:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        self.pipes |= {client_writer, server_writer}

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        await asyncio.gather(pump(client_reader, server_writer), pump(server_reader, client_writer))


@pytest.fixture
async def proxy(db_url: str) -> AsyncIterator[Proxy]:
    proxy = Proxy(db_url)
    await proxy.start()
    yield proxy
    await proxy.cut()


@pytest.fixture
def app(settings: Settings, proxy: Proxy) -> Litestar:
    return create_app(settings.model_copy(update={"database_url": proxy.url}))


def log_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


class TestDatabaseUnavailable:
    async def test_503_with_retry_after_and_one_log_line(
        self, client: AsyncClient, proxy: Proxy, session: AsyncSession, capsys
    ) -> None:
        _, token = await issue_token(session, "regulator", "outage test")
        await session.commit()
        headers = {"Authorization": f"Bearer {token}"}
        assert (await client.get("/v1/banks", headers=headers)).status_code == 200  # pooled connections exist
        await proxy.cut()
        capsys.readouterr()
        # first on the pooled connections the database dropped, then on new connections it refuses
        for _ in range(3):
            for request in (
                client.get("/v1/banks", headers=headers),
                client.post(
                    "/v1/banks",
                    headers={**headers, "Idempotency-Key": IDEMPOTENCY_KEY},
                    json={"name": "Bank of Ningbo", "code": "NBCB", "signing_algorithm": "hmac-sha256"},
                ),
            ):
                response = await request
                assert response.status_code == 503, response.text
                assert response.headers["content-type"].startswith("application/problem+json")
                assert response.json()["code"] == "database_unavailable"
                assert int(response.headers["retry-after"]) > 0
        err = capsys.readouterr().err
        lines = log_lines(err)
        failures = [line for line in lines if line["event"] != "request" and line.get("logger") != "httpx"]
        assert [line["event"] for line in failures] == ["database_unavailable"] * 6, err
        assert all("exception" not in line and "Traceback" not in json.dumps(line) for line in failures)
        for leaked in (IDEMPOTENCY_KEY, "parameters", "SELECT", "INSERT"):
            assert leaked not in err

    async def test_the_jobs_log_one_line_per_run(self, settings: Settings, proxy: Proxy, capsys) -> None:
        engine = create_engine(proxy.url, settings)
        try:
            await proxy.cut()
            capsys.readouterr()
            report = await run_jobs_once(create_sessionmaker(engine), settings)
        finally:
            await engine.dispose()
        lines = log_lines(capsys.readouterr().err)
        assert [line["event"] for line in lines] == ["jobs_skipped_database_unavailable"], lines
        assert "exception" not in lines[0] and report == {}

    async def test_readyz_says_not_ready(self, client: AsyncClient, proxy: Proxy) -> None:
        await proxy.cut()
        response = await client.get("/readyz")
        assert response.status_code == 503 and response.json()["code"] == "not_ready"


class TestHiddenParameters:
    async def test_a_failed_statement_does_not_carry_its_parameters(self, engine, capsys) -> None:
        with pytest.raises(DBAPIError) as raised:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1 / :zero"), {"zero": 0})
        assert ":zero" in str(raised.value) or "$1" in str(raised.value)
        assert "parameters:" not in str(raised.value) and "hidden" in str(raised.value)


def _wrapped(error: Exception) -> DBAPIError:
    try:
        raise error
    except Exception as exc:  # as the driver's error reaches a service: wrapped by SQLAlchemy
        return DBAPIError("SELECT …", None, exc)


@get("/t/refused", sync_to_thread=False)
def refused(kind: FromQuery[str]) -> None:
    errors = {
        "cannot_connect_now": asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        "too_many": asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
        "admin_shutdown": asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        "lost": asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    }
    raise _wrapped(errors[kind]) from errors[kind]


@get("/t/own-oserror", sync_to_thread=False)
def own_oserror() -> None:
    raise FileNotFoundError("/srv/escrow/missing.json")  # not the database's: stays a 500


class TestClassification:
    @pytest.fixture
    def app(self, settings: Settings) -> Litestar:
        return create_app(settings, extra_routes=[refused, own_oserror])

    @pytest.mark.parametrize("kind", ["cannot_connect_now", "too_many", "admin_shutdown", "lost"])
    async def test_connection_errors_are_503(self, client: AsyncClient, kind: str) -> None:
        response = await client.get("/t/refused", params={"kind": kind})
        assert response.status_code == 503 and response.json()["code"] == "database_unavailable"
        assert response.headers["retry-after"]

    async def test_other_os_errors_stay_500(self, client: AsyncClient) -> None:
        response = await client.get("/t/own-oserror")
        assert response.status_code == 500 and response.json()["code"] == "internal_error"
