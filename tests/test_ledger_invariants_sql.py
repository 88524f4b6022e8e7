"""Each ledger rule holds in PostgreSQL itself: raw SQL that tries to break one is refused."""

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from escrow import ledger
from escrow.ledger import Entry, transfer

BOOK = "esc_raw"


@pytest.fixture
async def entry_id(session: AsyncSession) -> int:
    await ledger.open_book(session, BOOK)
    await ledger.open_account(session, BOOK, "card:c1")
    entry = await ledger.post(session, Entry(BOOK, "card_paid", transfer("custody_cash", "card:c1", 1000)))
    await session.commit()
    return entry


def sqlstate(caught: pytest.ExceptionInfo[DBAPIError]) -> str:
    return caught.value.orig.sqlstate  # type: ignore[union-attr]


async def run(engine: AsyncEngine, *statements: str) -> None:
    async with engine.begin() as connection:
        for statement in statements:
            await connection.execute(text(statement))


ACCOUNT = f"(SELECT id FROM ledger_accounts WHERE escrow_account_id = '{BOOK}' AND code = '%s')"


class TestRawSQL:
    async def test_unbalanced_entry_fails_at_commit_with_23514(self, engine: AsyncEngine, entry_id: int) -> None:
        with pytest.raises(DBAPIError) as caught:
            await run(
                engine,
                f"INSERT INTO ledger_entries (id, escrow_account_id, kind, type, business_date)"
                f" VALUES (999, '{BOOK}', 'forged', 'posted', current_date)",
                f"INSERT INTO ledger_postings (entry_id, escrow_account_id, account_id, side, kind, amount)"
                f" VALUES (999, '{BOOK}', {ACCOUNT % 'card:c1'}, 'C', 'posted', 500)",
            )
        assert sqlstate(caught) == "23514"
        assert "does not balance" in str(caught.value)

    async def test_entry_without_postings_fails(self, engine: AsyncEngine, entry_id: int) -> None:
        with pytest.raises(DBAPIError) as caught:
            await run(
                engine,
                f"INSERT INTO ledger_entries (id, escrow_account_id, kind, type, business_date)"
                f" VALUES (998, '{BOOK}', 'forged', 'posted', current_date)",
            )
        assert sqlstate(caught) == "23514"

    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE ledger_postings SET amount = amount + 1",
            "DELETE FROM ledger_postings",
            "UPDATE ledger_entries SET kind = 'other'",
            "DELETE FROM ledger_entries",
            "TRUNCATE ledger_postings CASCADE",
            "TRUNCATE ledger_entries CASCADE",
            "DELETE FROM ledger_accounts",
            "UPDATE ledger_accounts SET code = 'card:other' WHERE code = 'card:c1'",
        ],
    )
    async def test_journal_is_append_only(self, engine: AsyncEngine, entry_id: int, statement: str) -> None:
        with pytest.raises(DBAPIError) as caught:
            await run(engine, statement)
        assert sqlstate(caught) == "EL010"

    async def test_constrained_account_cannot_go_below_zero(self, engine: AsyncEngine, entry_id: int) -> None:
        with pytest.raises(DBAPIError) as caught:
            await run(engine, "UPDATE ledger_accounts SET posted_debits = posted_debits + 1001 WHERE code = 'card:c1'")
        assert sqlstate(caught) == "23514"

    async def test_slot_rows_cannot_lower_a_balance(self, engine: AsyncEngine, entry_id: int) -> None:
        with pytest.raises(DBAPIError) as caught:
            await run(engine, "UPDATE ledger_account_slots SET posted_debits = posted_debits + 1 WHERE non_negative")
        assert sqlstate(caught) == "23514"

    @pytest.mark.parametrize("amount", ["0", "-1", "1000000000000000"])
    async def test_amounts_positive_and_below_10_15(self, engine: AsyncEngine, entry_id: int, amount: str) -> None:
        with pytest.raises(DBAPIError) as caught:
            await run(
                engine,
                f"INSERT INTO ledger_entries (id, escrow_account_id, kind, type, business_date)"
                f" VALUES (997, '{BOOK}', 'forged', 'posted', current_date)",
                f"INSERT INTO ledger_postings (entry_id, escrow_account_id, account_id, side, kind, amount)"
                f" VALUES (997, '{BOOK}', {ACCOUNT % 'card:c1'}, 'C', 'posted', {amount})",
            )
        assert sqlstate(caught) == "23514"

    async def test_postings_join_only_their_own_transactions_entry(self, engine: AsyncEngine, entry_id: int) -> None:
        with pytest.raises(DBAPIError) as caught:
            await run(
                engine,
                f"INSERT INTO ledger_postings (entry_id, escrow_account_id, account_id, side, kind, amount)"
                f" VALUES ({entry_id}, '{BOOK}', {ACCOUNT % 'card:c1'}, 'C', 'posted', 5)",
            )
        assert sqlstate(caught) == "23503"  # (entry_id, xid) must name an entry of this transaction

    async def test_posting_kind_must_fit_its_entry(self, engine: AsyncEngine, entry_id: int) -> None:
        with pytest.raises(DBAPIError) as caught:
            await run(
                engine,
                f"INSERT INTO ledger_entries (id, escrow_account_id, kind, type, business_date)"
                f" VALUES (995, '{BOOK}', 'forged', 'posted', current_date)",
                f"INSERT INTO ledger_postings (entry_id, escrow_account_id, account_id, side, kind, amount)"
                f" VALUES (995, '{BOOK}', {ACCOUNT % 'card:c1'}, 'D', 'release', 5),"
                f" (995, '{BOOK}', {ACCOUNT % 'custody_cash'}, 'C', 'release', 5)",
            )
        assert sqlstate(caught) == "23514"

    async def test_posting_book_must_match_its_account(self, engine: AsyncEngine, entry_id: int) -> None:
        with pytest.raises(DBAPIError) as caught:
            await run(
                engine,
                f"INSERT INTO ledger_entries (id, escrow_account_id, kind, type, business_date)"
                f" VALUES (994, '{BOOK}', 'forged', 'posted', current_date)",
                f"INSERT INTO ledger_postings (entry_id, escrow_account_id, account_id, side, kind, amount)"
                f" VALUES (994, 'esc_other', {ACCOUNT % 'card:c1'}, 'D', 'posted', 5)",
            )
        assert sqlstate(caught) == "23503"

    async def test_pending_resolved_at_most_once(
        self, engine: AsyncEngine, session: AsyncSession, entry_id: int
    ) -> None:
        hold = await ledger.hold(session, Entry(BOOK, "consumption", transfer("card:c1", "merchant_payable", 10)))
        await ledger.void_pending(session, hold)
        await session.commit()
        with pytest.raises(DBAPIError) as caught:
            await run(
                engine,
                f"INSERT INTO ledger_entries (id, escrow_account_id, kind, type, pending_id, business_date)"
                f" VALUES (996, '{BOOK}', 'consumption', 'void_pending', {hold}, current_date)",
            )
        assert sqlstate(caught) == "23505"

    async def test_only_cny(self, engine: AsyncEngine, entry_id: int) -> None:
        with pytest.raises(DBAPIError) as caught:
            await run(
                engine,
                f"INSERT INTO ledger_accounts (escrow_account_id, code, normal_side, non_negative, currency)"
                f" VALUES ('{BOOK}', 'card:usd', 'C', true, 'USD')",
            )
        assert sqlstate(caught) == "23514"
