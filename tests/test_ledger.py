"""The ledger API: balances after every movement, two-phase holds, freezing, history, point-in-time."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from escrow import ledger
from escrow.ledger import Entry, Leg, transfer

BOOK = "esc_gym"


async def bal(session: AsyncSession, code: str, book: str = BOOK) -> tuple[int, int, int]:
    b = await ledger.balance(session, book, code)
    return b.posted, b.pending, b.available


@pytest.fixture
async def book(session: AsyncSession) -> str:
    await ledger.open_book(session, BOOK)
    for card in ("c1", "c2"):
        await ledger.open_account(session, BOOK, f"card:{card}")
    await session.commit()
    return BOOK


async def sell(session: AsyncSession, card: str, amount: int) -> int:
    return await ledger.post(
        session, Entry(BOOK, "card_paid", transfer("custody_cash", f"card:{card}", amount), refs={"card": card})
    )


class TestPost:
    async def test_sale_then_release(self, session: AsyncSession, book: str) -> None:
        await sell(session, "c1", 200_000)
        assert await bal(session, "custody_cash") == (200_000, 0, 200_000)
        assert await bal(session, "card:c1") == (200_000, 0, 200_000)
        await ledger.post(session, Entry(BOOK, "release", transfer("card:c1", "merchant_payable", 10_000)))
        assert await bal(session, "card:c1") == (190_000, 0, 190_000)
        assert await bal(session, "merchant_payable") == (10_000, 0, 10_000)
        await session.commit()

    async def test_overdraft_refused(self, session: AsyncSession, book: str) -> None:
        await sell(session, "c1", 100)
        await session.commit()
        with pytest.raises(ledger.InsufficientFunds) as caught:
            await ledger.post(session, Entry(BOOK, "release", transfer("card:c1", "merchant_payable", 101)))
        assert caught.value.code == "insufficient_funds"
        await session.rollback()
        assert await bal(session, "card:c1") == (100, 0, 100)

    async def test_unbalanced_refused_before_sql(self, session: AsyncSession, book: str) -> None:
        legs = [Leg("custody_cash", "D", 100), Leg("card:c1", "C", 99)]
        with pytest.raises(ledger.Unbalanced):
            await ledger.post(session, Entry(BOOK, "card_paid", legs))

    @pytest.mark.parametrize("amount", [1.5, True, "100", 0, -5, 10**15])
    async def test_bad_amounts_refused(self, session: AsyncSession, book: str, amount: object) -> None:
        with pytest.raises((TypeError, ledger.LedgerError)):
            await ledger.post(session, Entry(BOOK, "card_paid", transfer("custody_cash", "card:c1", amount)))  # type: ignore[arg-type]

    async def test_unknown_account(self, session: AsyncSession, book: str) -> None:
        with pytest.raises(ledger.LedgerError) as caught:
            await sell(session, "nope", 100)
        assert caught.value.code == "ledger_account_unknown"

    async def test_idempotency_ref_is_unique_per_book(self, session: AsyncSession, book: str) -> None:
        entry = Entry(BOOK, "card_paid", transfer("custody_cash", "card:c1", 5), idempotency_ref="bank:tx1")
        await ledger.post(session, entry)
        await session.commit()
        with pytest.raises(ledger.LedgerError) as caught:
            await ledger.post(session, entry)
        assert caught.value.code == "duplicate_movement"

    async def test_batch(self, session: AsyncSession, book: str) -> None:
        entries = [Entry(BOOK, "card_paid", transfer("custody_cash", f"card:c{i % 2 + 1}", 10)) for i in range(100)]
        ids = await ledger.post_many(session, entries)
        assert len(ids) == 100 and ids == sorted(ids)
        assert await bal(session, "custody_cash") == (1000, 0, 1000)
        assert await bal(session, "card:c1") == (500, 0, 500)


class TestTwoPhase:
    async def test_hold_reduces_available_then_posts(self, session: AsyncSession, book: str) -> None:
        await sell(session, "c1", 1000)
        hold = await ledger.hold(session, Entry(BOOK, "consumption", transfer("card:c1", "merchant_payable", 300)))
        assert await bal(session, "card:c1") == (1000, 300, 700)
        assert await bal(session, "merchant_payable") == (0, 0, 0)
        await ledger.post_pending(session, hold)
        assert await bal(session, "card:c1") == (700, 0, 700)
        assert await bal(session, "merchant_payable") == (300, 0, 300)

    async def test_partial_post_releases_the_rest(self, session: AsyncSession, book: str) -> None:
        await sell(session, "c1", 1000)
        hold = await ledger.hold(session, Entry(BOOK, "consumption", transfer("card:c1", "merchant_payable", 300)))
        await ledger.post_pending(session, hold, 120)
        assert await bal(session, "card:c1") == (880, 0, 880)
        assert await bal(session, "merchant_payable") == (120, 0, 120)

    async def test_void_releases(self, session: AsyncSession, book: str) -> None:
        await sell(session, "c1", 1000)
        hold = await ledger.hold(session, Entry(BOOK, "consumption", transfer("card:c1", "merchant_payable", 300)))
        await ledger.void_pending(session, hold)
        assert await bal(session, "card:c1") == (1000, 0, 1000)

    async def test_hold_cannot_overdraw(self, session: AsyncSession, book: str) -> None:
        await sell(session, "c1", 1000)
        await ledger.hold(session, Entry(BOOK, "consumption", transfer("card:c1", "merchant_payable", 800)))
        await session.commit()
        with pytest.raises(ledger.InsufficientFunds):
            await ledger.hold(session, Entry(BOOK, "consumption", transfer("card:c1", "merchant_payable", 201)))

    @pytest.mark.parametrize(
        ("first", "second", "error"),
        [
            ("post", "post", "already_posted"),
            ("post", "void", "already_posted"),
            ("void", "void", "already_voided"),
            ("void", "post", "already_voided"),
        ],
    )
    async def test_resolved_only_once(
        self, session: AsyncSession, book: str, first: str, second: str, error: str
    ) -> None:
        await sell(session, "c1", 1000)
        hold = await ledger.hold(session, Entry(BOOK, "consumption", transfer("card:c1", "merchant_payable", 300)))
        resolve = {"post": ledger.post_pending, "void": ledger.void_pending}
        await resolve[first](session, hold)
        await session.commit()
        with pytest.raises(ledger.AlreadyResolved) as caught:
            await resolve[second](session, hold)
        assert caught.value.code == error

    async def test_post_more_than_held(self, session: AsyncSession, book: str) -> None:
        await sell(session, "c1", 1000)
        hold = await ledger.hold(session, Entry(BOOK, "consumption", transfer("card:c1", "merchant_payable", 300)))
        with pytest.raises(ledger.PostExceedsPending):
            await ledger.post_pending(session, hold, 301)

    async def test_expiry(self, session: AsyncSession, book: str) -> None:
        await sell(session, "c1", 1000)
        soon = datetime.now(UTC) + timedelta(milliseconds=300)
        hold = await ledger.hold(
            session, Entry(BOOK, "consumption", transfer("card:c1", "merchant_payable", 300), expires_at=soon)
        )
        await session.commit()
        assert await ledger.expire_pending(session) == []
        await session.commit()
        await asyncio.sleep(0.4)
        with pytest.raises(ledger.LedgerError) as caught:
            await ledger.post_pending(session, hold)
        assert caught.value.code == "pending_expired"
        await session.rollback()
        assert await ledger.expire_pending(session) == [hold]
        await session.commit()
        assert await bal(session, "card:c1") == (1000, 0, 1000)
        with pytest.raises(ledger.AlreadyResolved) as caught:
            await ledger.void_pending(session, hold)
        assert caught.value.code == "already_expired"


class TestFreeze:
    async def test_account_frozen_for_debits(self, session: AsyncSession, book: str) -> None:
        await sell(session, "c1", 1000)
        await ledger.freeze_account(session, BOOK, "card:c1", "debits")
        await session.commit()
        with pytest.raises(ledger.AccountFrozen):
            await ledger.post(session, Entry(BOOK, "release", transfer("card:c1", "merchant_payable", 1)))
        await session.rollback()
        await sell(session, "c1", 5)  # credits still allowed
        await session.commit()
        await ledger.freeze_account(session, BOOK, "card:c1", "none")
        await ledger.post(session, Entry(BOOK, "release", transfer("card:c1", "merchant_payable", 1)))

    async def test_book_frozen_entirely(self, session: AsyncSession, book: str) -> None:
        await ledger.freeze_book(session, BOOK, "all")
        await session.commit()
        with pytest.raises(ledger.AccountFrozen):
            await sell(session, "c1", 5)
        await session.rollback()
        await ledger.freeze_book(session, BOOK, "none")
        await sell(session, "c1", 5)


class TestReading:
    async def test_point_in_time(self, session: AsyncSession, book: str) -> None:
        await sell(session, "c1", 1000)
        await session.commit()
        between = await session.scalar(text("SELECT clock_timestamp()"))
        await session.commit()
        await ledger.post(session, Entry(BOOK, "release", transfer("card:c1", "merchant_payable", 400)))
        await session.commit()
        then = await ledger.balance(session, BOOK, "card:c1", as_of=between)
        now = await ledger.balance(session, BOOK, "card:c1")
        assert (then.posted, now.posted) == (1000, 600)
        before_all = await ledger.balance(session, BOOK, "card:c1", as_of=between - timedelta(days=1))
        assert before_all.posted == 0
        exact_now = await ledger.balance(session, BOOK, "card:c1", as_of=datetime.now(UTC))
        assert exact_now == now

    async def test_history_pages(self, session: AsyncSession, book: str) -> None:
        for amount in range(1, 6):
            await sell(session, "c1", amount)
        page, cursor = await ledger.history(session, BOOK, "card:c1", limit=2)
        assert [line.amount for line in page] == [5, 4]
        page, cursor = await ledger.history(session, BOOK, "card:c1", cursor=cursor, limit=2)
        assert [line.amount for line in page] == [3, 2]
        page, cursor = await ledger.history(session, BOOK, "card:c1", cursor=cursor, limit=2)
        assert [line.amount for line in page] == [1] and cursor is None


class TestExpirySweep:
    async def test_frozen_book_waits_and_others_expire(self, session: AsyncSession, book: str) -> None:
        await ledger.open_book(session, "esc_other")
        await ledger.open_account(session, "esc_other", "card:x")
        past = datetime.now(UTC) - timedelta(minutes=1)
        await ledger.post(session, Entry("esc_other", "card_paid", transfer("custody_cash", "card:x", 100)))
        await sell(session, "c1", 100)
        frozen = await ledger.hold(
            session, Entry(BOOK, "consumption", transfer("card:c1", "merchant_payable", 10), expires_at=past)
        )
        other = await ledger.hold(
            session, Entry("esc_other", "consumption", transfer("card:x", "merchant_payable", 10), expires_at=past)
        )
        await ledger.freeze_book(session, BOOK, "all")
        await session.commit()
        assert await ledger.expire_pending(session) == [other]
        await ledger.freeze_book(session, BOOK, "none")
        await session.commit()
        assert await ledger.expire_pending(session) == [frozen]
