"""Alembic, driven from Python: the `escrow migrate` command, `escrow serve` and the tests all come through here."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

import escrow
from escrow.db import asyncpg_url

_PACKAGE = Path(escrow.__file__).resolve().parent


def migrations_dir() -> Path:
    """``escrow/_migrations`` in an installed wheel, ``migrations/`` beside the package in a checkout."""
    for candidate in (_PACKAGE / "_migrations", _PACKAGE.parent / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise RuntimeError("Alembic migrations not found beside the escrow package")


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # '%' must be doubled for ConfigParser interpolation
    config.set_main_option("sqlalchemy.url", asyncpg_url(database_url).replace("%", "%%"))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("postgresql://unused/")).get_current_head()


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


async def current_revision(connection: AsyncConnection) -> str | None:
    """The database's schema revision (None before the first migration). Read from Alembic's version table directly:
    Alembic's MigrationContext logs two lines each time it is set up, and /readyz asks on every probe."""
    if not await connection.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL")):
        return None
    revisions = (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
    if len(revisions) > 1:
        raise RuntimeError(f"the database is at several revisions at once: {', '.join(sorted(revisions))}")
    return revisions[0] if revisions else None


def orm_managed(obj, name, type_, reflected, compare_to) -> bool:
    """Autogenerate compares ORM tables only: the ledger's tables are SQL-defined (functions and triggers own them)."""
    table = obj if type_ == "table" else getattr(obj, "table", None)
    return not (table is not None and table.name.startswith("ledger_"))


def split_sql(script: str) -> list[str]:
    """Split a SQL script into statements at top-level semicolons (``$$``-quoted bodies stay whole)."""
    statements, current, quoted = [], [], False
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--") and not quoted:
            continue
        current.append(line)
        quoted ^= line.count("$$") % 2 == 1
        if not quoted and line.rstrip().endswith(";"):
            statements.append("".join(current).strip())
            current = []
    if "".join(current).strip():
        statements.append("".join(current).strip())
    return statements


def run_script(connection, script: str) -> None:  # connection: sqlalchemy.engine.Connection
    """Run a migration's SQL script statement by statement, verbatim (no bind-parameter parsing)."""
    for statement in split_sql(script):
        connection.exec_driver_sql(statement)
