"""Tamper evidence: seals chain every escrow account's journal; verify finds any edited or deleted row."""

import asyncio

from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from escrow import ledger
from escrow.auth.tokens import issue_token
from escrow.ledger import Entry, transfer
from escrow.ledger.integrity import seal, verify_database

BOOKS = ("esc_salon", "esc_gym")


async def populate(session: AsyncSession) -> None:
    """A small but realistic day: sales, releases, a held consumption, a payout and a refund per book."""
    for book in BOOKS:
        await ledger.open_book(session, book)
        for card in ("c1", "c2", "c3"):
            await ledger.open_account(session, book, f"card:{card}")
            await ledger.post(session, Entry(book, "card_paid", transfer("custody_cash", f"card:{card}", 200_000)))
        await ledger.post(session, Entry(book, "release", transfer("card:c1", "merchant_payable", 10_000)))
        held = await ledger.hold(session, Entry(book, "consumption", transfer("card:c2", "merchant_payable", 5_000)))
        await ledger.post_pending(session, held)
        payout = await ledger.hold(session, Entry(book, "payout", transfer("merchant_payable", "custody_cash", 15_000)))
        await ledger.post_pending(session, payout)
        await ledger.post(session, Entry(book, "refund", transfer("card:c3", "refund_payable", 200_000)))
        await ledger.post(session, Entry(book, "refund_paid", transfer("refund_payable", "custody_cash", 200_000)))
    await session.commit()


async def sealed(session: AsyncSession) -> int:
    result = await seal(session)
    await session.commit()
    return result.entries


async def superuser(engine: AsyncEngine, statement: str) -> None:
    """Behind the triggers' back, as a superuser would: session_replication_role skips them."""
    async with engine.begin() as connection:
        await connection.execute(text("SET LOCAL session_replication_role = replica"))
        await connection.execute(text(statement))


def failed(report, name: str) -> dict:
    check = next(c for c in report.checks if c.name == name)
    assert not check.ok, f"{name} should have failed"
    return check.first_failure


class TestSealAndVerify:
    async def test_green_on_a_populated_ledger(self, session: AsyncSession, engine: AsyncEngine) -> None:
        await populate(session)
        assert await sealed(session) == 2 * 10
        report = await verify_database(engine)
        assert report.ok, report
        assert report.sealed_entries == 20 and report.unsealed_entries == 0
        assert set(report.chain_heads) == set(BOOKS)
        # (ledger rows only: no cards, and no fund claims, to look at here)
        nothing_to_check = {"cards_conserve_value", "fund_claims_mirror_subrogation"}
        assert all(check.checked > 0 for check in report.checks if check.name not in nothing_to_check)

    async def test_sealing_is_incremental_and_idempotent(self, session: AsyncSession, engine: AsyncEngine) -> None:
        await populate(session)
        assert await sealed(session) == 20
        assert await sealed(session) == 0
        await ledger.post(session, Entry("esc_gym", "card_paid", transfer("custody_cash", "card:c1", 1)))
        await session.commit()
        assert (await verify_database(engine)).unsealed_entries == 1
        assert await sealed(session) == 1
        seqs = (await session.execute(text("SELECT seq FROM ledger_seals WHERE escrow_account_id = 'esc_gym'"))).all()
        assert sorted(s for (s,) in seqs) == [1, 2]
        assert (await verify_database(engine)).ok

    async def test_open_transaction_is_not_sealed_until_it_ends(
        self, session: AsyncSession, engine: AsyncEngine
    ) -> None:
        await populate(session)
        async with engine.connect() as writer:
            transaction = await writer.begin()
            async with AsyncSession(bind=writer) as writing:
                await ledger.post(writing, Entry("esc_gym", "card_paid", transfer("custody_cash", "card:c1", 7)))
                await writing.flush()
                assert await sealed(session) == 20  # the open transaction's entry is left for later
                await transaction.commit()
        assert await sealed(session) == 1
        assert (await verify_database(engine)).ok

    async def test_edited_posting_is_detected(self, session: AsyncSession, engine: AsyncEngine) -> None:
        await populate(session)
        await sealed(session)
        await superuser(engine, "UPDATE ledger_postings SET amount = amount + 100 WHERE id = 3")
        report = await verify_database(engine)
        assert not report.ok
        failure = failed(report, "hash_chain")
        assert failure["seq"] == 1 and "changed" in failure["reason"]
        assert failed(report, "entries_balance")["entry_id"] > 0
        assert failed(report, "account_totals_match_journal")
        entry = await session.scalar(text("SELECT entry_id FROM ledger_postings WHERE id = 3"))
        assert entry in failure["entry_ids"]  # the chain names the entry, not only the seal

    async def test_an_edit_before_the_first_seal_is_not_sealed_and_the_truth_seals(
        self, session: AsyncSession, engine: AsyncEngine
    ) -> None:
        await populate(session)
        entry, book = (
            await session.execute(text("SELECT p.entry_id, p.escrow_account_id FROM ledger_postings p WHERE p.id = 3"))
        ).one()
        await session.rollback()
        await superuser(engine, "UPDATE ledger_postings SET amount = amount + 100 WHERE id = 3")
        result = await seal(session)  # what the periodic job and escrow verify do
        await session.commit()
        assert book in result.held and {"entry_id": entry} in [
            {"entry_id": r["entry_id"]} for r in result.held[book] if "entry_id" in r
        ]
        assert any(r.get("account") for r in result.held[book])  # its accounts' totals differ too
        other = next(b for b in BOOKS if b != book)
        assert result.entries == 10 and other not in result.held  # the other book verifies and is sealed
        report = await verify_database(engine)
        assert failed(report, "entries_balance")["entry_id"] == entry
        assert report.unsealed_entries == 10
        await superuser(engine, "UPDATE ledger_postings SET amount = amount - 100 WHERE id = 3")  # the truth again
        assert await sealed(session) == 10
        report = await verify_database(engine)
        assert report.ok, report
        assert report.unsealed_entries == 0

    async def test_deleted_entry_is_detected(self, session: AsyncSession, engine: AsyncEngine) -> None:
        await populate(session)
        await sealed(session)
        await superuser(engine, "DELETE FROM ledger_postings WHERE entry_id = (SELECT max(id) FROM ledger_entries)")
        await superuser(engine, "DELETE FROM ledger_entries WHERE id = (SELECT max(id) FROM ledger_entries)")
        report = await verify_database(engine)
        failure = failed(report, "hash_chain")
        assert failure["found_count"] == failure["sealed_count"] - 1
        assert failed(report, "account_totals_match_journal")

    async def test_deleted_seal_is_detected(self, session: AsyncSession, engine: AsyncEngine) -> None:
        await populate(session)
        await sealed(session)
        await ledger.post(session, Entry("esc_gym", "card_paid", transfer("custody_cash", "card:c1", 1)))
        await session.commit()
        await sealed(session)
        await superuser(engine, "DELETE FROM ledger_seals WHERE escrow_account_id = 'esc_gym' AND seq = 1")
        assert "gap" in failed(await verify_database(engine), "hash_chain")["reason"]

    async def test_edited_entry_is_detected(self, session: AsyncSession, engine: AsyncEngine) -> None:
        await populate(session)
        await sealed(session)
        await superuser(engine, "UPDATE ledger_entries SET kind = 'forged' WHERE id = 1")
        assert "changed" in failed(await verify_database(engine), "hash_chain")["reason"]

    async def test_entry_forged_behind_the_horizon_is_detected(
        self, session: AsyncSession, engine: AsyncEngine
    ) -> None:
        await populate(session)
        await sealed(session)
        await ledger.post(session, Entry("esc_salon", "card_paid", transfer("custody_cash", "card:c1", 1)))
        await session.commit()
        await sealed(session)  # the salon's chain now reaches past the gym's last seal
        # a balanced entry slipped into the gym's book with an old transaction id, triggers off
        await superuser(
            engine,
            "WITH e AS (INSERT INTO ledger_entries (id, escrow_account_id, kind, type, business_date, xid)"
            " VALUES (9999, 'esc_gym', 'forged', 'posted', current_date,"
            "  (SELECT max(xid_to) FROM ledger_seals WHERE escrow_account_id = 'esc_gym')) RETURNING id, xid)"
            " INSERT INTO ledger_postings (entry_id, escrow_account_id, account_id, side, kind, amount, xid)"
            " SELECT e.id, 'esc_gym', a.id, CASE a.code WHEN 'custody_cash' THEN 'D' ELSE 'C' END, 'posted', 5, e.xid"
            " FROM e, ledger_accounts a"
            " WHERE a.escrow_account_id = 'esc_gym' AND a.code IN ('custody_cash', 'card:c1')",
        )
        failure = failed(await verify_database(engine), "hash_chain")
        assert failure == {
            "escrow_account_id": "esc_gym",
            "entry_id": 9999,
            "reason": "entry inserted behind a sealed horizon",
        }

    async def test_custody_must_cover_liabilities(self, session: AsyncSession, engine: AsyncEngine) -> None:
        await populate(session)
        # custody money leaving to an account outside the custody group breaks invariant 3
        await ledger.open_account(session, "esc_gym", "bank_fees", normal_side="D", non_negative=False)
        await ledger.post(session, Entry("esc_gym", "fee", transfer("bank_fees", "custody_cash", 10)))
        await session.commit()
        assert failed(await verify_database(engine), "custody_covers_liabilities")["escrow_account_id"] == "esc_gym"


class TestVerifyEndpoint:
    async def test_regulator_gets_the_report(self, client: AsyncClient, session: AsyncSession) -> None:
        await populate(session)
        _, secret = await issue_token(session, "regulator", "test regulator")
        await session.commit()
        response = await client.get("/v1/ledger/verify", headers={"Authorization": f"Bearer {secret}"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["ok"] is True and body["unsealed_entries"] == 20
        assert {c["name"] for c in body["checks"]} >= {"hash_chain", "entries_balance"}

    async def test_anonymous_is_401(self, client: AsyncClient) -> None:
        response = await client.get("/v1/ledger/verify")
        assert response.status_code == 401 and response.json()["code"] == "unauthenticated"

    async def test_bad_token_is_401(self, client: AsyncClient) -> None:
        response = await client.get("/v1/ledger/verify", headers={"Authorization": "Bearer esk_reg_nope"})
        assert response.status_code == 401 and response.json()["code"] == "invalid_token"

    async def test_other_roles_are_403(self, client: AsyncClient, session: AsyncSession) -> None:
        _, secret = await issue_token(session, "merchant", "a gym")
        await session.commit()
        response = await client.get("/v1/ledger/verify", headers={"Authorization": f"Bearer {secret}"})
        assert response.status_code == 403 and response.json()["code"] == "forbidden"

    async def test_revoked_token_fails_at_once(self, client: AsyncClient, session: AsyncSession) -> None:
        token, secret = await issue_token(session, "regulator", "leaving")
        await session.commit()
        headers = {"Authorization": f"Bearer {secret}"}
        assert (await client.get("/v1/ledger/verify", headers=headers)).status_code == 200
        await session.execute(text("UPDATE api_tokens SET revoked_at = now() WHERE id = :id"), {"id": token.id})
        await session.commit()
        assert (await client.get("/v1/ledger/verify", headers=headers)).status_code == 401


async def test_concurrent_sealers_do_not_collide(session: AsyncSession, engine: AsyncEngine) -> None:
    await populate(session)
    from escrow.db import create_sessionmaker

    maker = create_sessionmaker(engine)

    async def one() -> int:
        async with maker() as s:
            result = await seal(s)
            await s.commit()
            return result.entries

    assert sorted(await asyncio.gather(one(), one(), one())) == [0, 0, 20]
    assert (await verify_database(engine)).ok


async def test_the_service_seals_in_the_background(db_url: str, session: AsyncSession, engine: AsyncEngine) -> None:
    from escrow.app import create_app
    from escrow.config import Settings

    await populate(session)
    app = create_app(Settings(database_url=db_url, seal_interval_seconds=0.1, secret_key="k" * 32))
    async with app.lifespan():
        for _ in range(50):
            if (await verify_database(engine)).unsealed_entries == 0:
                break
            await asyncio.sleep(0.1)
    report = await verify_database(engine)
    assert report.ok and report.unsealed_entries == 0 and report.sealed_entries == 20
