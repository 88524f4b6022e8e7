"""The hot paths' statements go to the driver, but always inside the session's own transaction."""

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from escrow import db

NONCE = "INSERT INTO bank_nonces (bank_id, nonce) VALUES ($1, $2) RETURNING nonce"


@pytest.fixture
async def bank(sessionmaker: async_sessionmaker) -> str:
    async with sessionmaker() as session:
        await session.execute(
            text(
                "INSERT INTO banks (id, name, code, signing_algorithm, signing_secret_enc)"
                " VALUES ('bnk_db', 'Bank', 'DBT', 'hmac-sha256', '\\x00')"
            )
        )
        await session.commit()
    return "bnk_db"


async def nonces(sessionmaker: async_sessionmaker) -> list[str]:
    async with sessionmaker() as session:
        return list(await session.scalars(text("SELECT nonce FROM bank_nonces ORDER BY nonce")))


class TestInsideTheTransaction:
    async def test_a_rollback_undoes_statements_sent_to_the_driver(
        self, sessionmaker: async_sessionmaker, bank: str
    ) -> None:
        async with sessionmaker() as session:
            await db.fetch(session, NONCE, bank, "first-statement-begins-it")  # through SQLAlchemy: BEGIN
            await db.fetch(session, NONCE, bank, "then-straight-to-the-driver")
            assert await db.fetchval(session, "SELECT count(*) FROM bank_nonces") == 2
            await session.rollback()
        assert await nonces(sessionmaker) == []

    async def test_a_commit_keeps_them_with_the_orm_changes(self, sessionmaker: async_sessionmaker, bank: str) -> None:
        async with sessionmaker() as session:
            await session.execute(text("INSERT INTO bank_nonces (bank_id, nonce) VALUES (:b, 'orm')"), {"b": bank})
            await db.fetch(session, NONCE, bank, "raw")
            await session.commit()
        assert await nonces(sessionmaker) == ["orm", "raw"]

    async def test_a_new_transaction_after_a_commit_is_a_new_transaction(
        self, sessionmaker: async_sessionmaker, bank: str
    ) -> None:
        async with sessionmaker() as session:
            await db.fetch(session, NONCE, bank, "kept")
            await session.commit()
            await db.fetch(session, NONCE, bank, "undone")
            await session.rollback()
        assert await nonces(sessionmaker) == ["kept"]


class TestAutocommit:
    async def test_before_the_transaction_it_stays_whatever_follows(
        self, sessionmaker: async_sessionmaker, bank: str
    ) -> None:
        async with sessionmaker() as session:
            assert (await db.autocommit(session, NONCE, bank, "burnt"))["nonce"] == "burnt"
            await db.fetch(session, NONCE, bank, "undone")
            await session.rollback()
        assert await nonces(sessionmaker) == ["burnt"]

    async def test_inside_a_transaction_it_is_refused(self, session: AsyncSession, bank: str) -> None:
        await db.fetch(session, "SELECT 1")
        with pytest.raises(RuntimeError, match="before the session's transaction begins"):
            await db.autocommit(session, NONCE, bank, "never")


class TestRows:
    async def test_rows_read_by_attribute_and_by_name(self, session: AsyncSession) -> None:
        row = await db.one(session, "SELECT 1 AS a, 'x' AS b")
        assert row is not None and row.a == 1 and row["b"] == "x"
        row.a = 2
        assert row == {"a": 2, "b": "x"}
        with pytest.raises(AttributeError):
            _ = row.missing
        assert await db.one(session, "SELECT 1 WHERE false") is None
