"""The migrations go up, come all the way down, and go up again."""

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from escrow import migrate
from escrow.db import asyncpg_url
from escrow.migrate import orm_managed


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(asyncpg_url(url))
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
        names = {row[0] for row in rows}
    await engine.dispose()
    return names


class TestMigrations:
    def test_upgrade_downgrade_upgrade(self, fresh_database: str) -> None:
        migrate.upgrade(fresh_database)
        at_head = asyncio.run(_tables(fresh_database))
        assert {"idempotency_keys", "ledger_entries", "ledger_postings", "ledger_seals"} <= at_head
        migrate.downgrade(fresh_database, "base")
        assert asyncio.run(_tables(fresh_database)) <= {"alembic_version"}
        migrate.upgrade(fresh_database)
        assert asyncio.run(_tables(fresh_database)) == at_head

    def test_models_match_migrations(self, fresh_database: str) -> None:
        """Alembic's autogenerate finds nothing to add: the models and the migrations agree."""
        from alembic.autogenerate import compare_metadata
        from alembic.runtime.migration import MigrationContext

        from escrow.models import Base

        migrate.upgrade(fresh_database)

        async def diff() -> list:
            engine = create_async_engine(asyncpg_url(fresh_database))
            async with engine.connect() as connection:
                result = await connection.run_sync(
                    lambda sync: compare_metadata(
                        MigrationContext.configure(sync, opts={"include_object": orm_managed}), Base.metadata
                    )
                )
            await engine.dispose()
            return result

        assert asyncio.run(diff()) == []
