"""Reconciliation rules one by one: re-sending, corrections, late reports, ageing, resolutions, balances, access."""

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.config import Settings
from escrow.jobs import run_jobs_once
from tests.parties import bearer, key
from tests.reconciling import (
    PRICE,
    breaks,
    credit,
    debit,
    desk,
    fee,
    lines,
    resolve,
    send,
    statement,
    statement_json,
    today,
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"payout_hour": None})


async def count(session: AsyncSession, sql: str, **params) -> int:
    value = await session.scalar(text(sql), params)
    await session.rollback()
    return int(value)


class TestResendingAndCorrections:
    async def test_the_same_statement_again_changes_nothing(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        shop = await desk(client, session)
        body = statement_json(shop.account_id, [credit(await shop.deposit()), fee(100)])
        first = (await send(client, shop.bank, body))["statements"][0]
        again = (await send(client, shop.bank, body))["statements"][0]  # a new Idempotency-Key: a real resend
        assert (first["outcome"], again["outcome"]) == ("created", "unchanged")
        assert again["id"] == first["id"] and again["version"] == 1
        assert await count(session, "SELECT count(*) FROM bank_statements") == 1
        assert await count(session, "SELECT count(*) FROM bank_statement_lines") == 2
        assert len(await breaks(client, shop.regulator)) == 1

    async def test_a_replayed_request_is_answered_as_before(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        shop = await desk(client, session)
        body, headers = statement_json(shop.account_id, []), key()
        first = await client.post("/v1/statements", json=body, headers=headers, auth=shop.bank.auth)
        replay = await client.post("/v1/statements", json=body, headers=headers, auth=shop.bank.auth)
        assert first.status_code == replay.status_code == 201
        assert replay.headers["idempotency-replayed"] == "true" and replay.json() == first.json()

    async def test_a_correction_replaces_the_statement_keeps_the_old_and_matches_again(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        shop = await desk(client, session)
        deposit = await shop.deposit()
        wrong = await send(client, shop.bank, statement_json(shop.account_id, [credit(deposit, amount=PRICE + 1)]))
        v1 = wrong["statements"][0]
        assert v1["lines"]["amount_mismatch"] == 1 and v1["open_breaks"] == 1
        (mismatch,) = await breaks(client, shop.regulator, state="open")
        fixed = (await send(client, shop.bank, statement_json(shop.account_id, [credit(deposit)])))["statements"][0]
        assert fixed["outcome"] == "replaced" and fixed["version"] == 2 and fixed["reconciled"] is True
        old = await statement(client, shop.regulator, v1["id"])
        assert old["status"] == "superseded" and old["superseded_by"] == fixed["id"]
        shown = await client.get(f"/v1/reconciliation/breaks/{mismatch['id']}", headers=bearer(shop.regulator))
        assert (shown.json()["state"], shown.json()["resolution"]) == ("resolved", "superseded")
        listed = await client.get(
            "/v1/statements", params={"include_superseded": "true"}, headers=bearer(shop.regulator)
        )
        assert [(s["version"], s["status"]) for s in listed.json()["items"]] == [(1, "superseded"), (2, "current")]
        current = await client.get("/v1/statements", headers=bearer(shop.regulator))
        assert [s["id"] for s in current.json()["items"]] == [fixed["id"]]
        # the evidence stays as the bank sent it
        assert (await lines(client, shop.regulator, v1["id"]))[0]["amount"]["amount"] == PRICE + 1

    async def test_an_adjustment_follows_its_line_into_the_correction(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        shop = await desk(client, session)
        deposit = await shop.deposit()
        v1 = await send(client, shop.bank, statement_json(shop.account_id, [credit(deposit), fee(200)]))
        (fee_break,) = await breaks(client, shop.regulator, state="open")
        await resolve(client, shop.regulator, fee_break["id"], action="adjust", note="fee booked")
        # the bank corrects the text of another line: the fee is still there, and still adjusted
        corrected = [credit(deposit)._replace(text="card payment, corrected"), fee(200)]
        v2 = (await send(client, shop.bank, statement_json(shop.account_id, corrected)))["statements"][0]
        assert v2["outcome"] == "replaced" and v2["reconciled"] is True, v2
        assert v1["statements"][0]["id"] != v2["id"]
        assert await breaks(client, shop.regulator, state="open") == []
        # the bank drops the fee (it was never charged): the adjustment is now the ledger's alone, a break
        v3 = (await send(client, shop.bank, statement_json(shop.account_id, [credit(deposit)])))["statements"][0]
        (orphan,) = await breaks(client, shop.regulator, state="open")
        assert orphan["kind"] == "not_on_statement" and orphan["owner"] == "regulator"
        assert orphan["ledger_entry_kind"] == "reconciliation_adjustment" and v3["reconciled"] is False


class TestLateReportsAndAgeing:
    async def test_a_deposit_reported_after_the_statement_clears_its_break(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        shop = await desk(client, session)
        unpaid = await shop.sell_unpaid()
        line = credit(unpaid)._replace(bank_transaction_id="BTX-LATE-1")
        await send(client, shop.bank, statement_json(shop.account_id, [line]))
        (found,) = await breaks(client, shop.regulator, state="open")
        assert found["kind"] == "not_in_ledger" and found["amount"]["amount"] == PRICE
        reported = await client.post(
            "/v1/deposits",
            json={
                "payment_reference": unpaid.payment_reference,
                "amount": {"amount": PRICE, "currency": "CNY"},
                "bank_transaction_id": "BTX-LATE-1",
            },
            headers=key(),
            auth=shop.bank.auth,
        )
        assert reported.status_code == 200, reported.text
        run = await client.post(
            f"/v1/escrow-accounts/{shop.account_id}/reconciliation/run", headers=key(), auth=shop.bank.auth
        )
        assert run.status_code == 200 and run.json()["matched"]["service_reference"] == 1, run.text
        assert run.json()["breaks_cleared"] == 1
        shown = await client.get(f"/v1/reconciliation/breaks/{found['id']}", headers=bearer(shop.regulator))
        assert (shown.json()["state"], shown.json()["resolution"]) == ("resolved", "cleared")

    async def test_in_transit_until_its_age_then_a_break(
        self, client: httpx.AsyncClient, session: AsyncSession, settings: Settings
    ) -> None:
        shop = await desk(client, session)
        deposit = await shop.deposit()
        await send(client, shop.bank, statement_json(shop.account_id, []))
        assert await breaks(client, shop.regulator) == []  # in transit: the bank may book it within 2 days
        settings.reconciliation_in_transit_days = 0  # the app's own settings: the age passes
        run = await client.post(
            f"/v1/escrow-accounts/{shop.account_id}/reconciliation/run", headers={**bearer(shop.regulator), **key()}
        )
        assert run.status_code == 200 and run.json()["breaks_opened"] == 1, run.text
        (found,) = await breaks(client, shop.regulator, state="open")
        assert (found["kind"], found["amount"]["amount"], found["line"]) == ("not_on_statement", -PRICE, None)
        assert found["ledger_entry_kind"] == "card_paid"
        # money the ledger says came in but the bank never received: reversed by an adjusting entry
        resolved = await resolve(client, shop.regulator, found["id"], action="adjust", note="deposit bounced")
        assert resolved["resolution"] == "adjusted"
        assert deposit.amount == PRICE

    async def test_the_daily_job_ages_what_no_new_statement_shows(
        self, client: httpx.AsyncClient, session: AsyncSession, sessionmaker, settings: Settings
    ) -> None:
        shop = await desk(client, session)
        await shop.deposit()
        await send(client, shop.bank, statement_json(shop.account_id, []))
        assert await breaks(client, shop.regulator) == []
        quiet = await run_jobs_once(sessionmaker, settings)
        assert quiet["reconciliation_runs"] == 0  # matched today already
        await session.execute(text("UPDATE reconciliation_accounts SET last_run_at = now() - interval '1 day'"))
        await session.commit()
        aged = settings.model_copy(update={"reconciliation_in_transit_days": 0})
        report = await run_jobs_once(sessionmaker, aged)
        assert report["reconciliation_runs"] == 1
        (found,) = await breaks(client, shop.regulator, state="open")
        assert found["kind"] == "not_on_statement"


class TestResolutions:
    async def test_an_unmatched_deposit_pays_the_card_awaiting_it(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        shop = await desk(client, session)
        unpaid = await shop.sell_unpaid()
        line = credit(unpaid)._replace(bank_transaction_id="BTX-NEVER-REPORTED", end_to_end_id=None)
        await send(client, shop.bank, statement_json(shop.account_id, [line]))
        (found,) = await breaks(client, shop.regulator, state="open")
        resolved = await resolve(
            client,
            shop.regulator,
            found["id"],
            action="attach_to_card",
            card_id=unpaid.card_id,
            note="consumer paid without the reference",
        )
        assert (resolved["resolution"], resolved["card_id"]) == ("attached", unpaid.card_id)
        assert resolved["line"]["outcome"] == "matched" and resolved["line"]["matched_by"] == "attached"
        card = await client.get(f"/v1/cards/{unpaid.card_id}", headers=bearer(shop.merchant.token))
        assert card.json()["status"] == "active" and card.json()["protected"]["amount"] == PRICE
        (stmt,) = (await client.get("/v1/statements", headers=bearer(shop.regulator))).json()["items"]
        assert stmt["reconciled"] is True

    @pytest.mark.parametrize(
        ("why", "card", "status"),
        [("a debit", "debit", 409), ("another price", "price", 409), ("no card", "missing", 422)],
    )
    async def test_attaching_is_refused_when_it_does_not_fit(
        self, client: httpx.AsyncClient, session: AsyncSession, why: str, card: str, status: int
    ) -> None:
        shop = await desk(client, session)
        unpaid = await shop.sell_unpaid()
        unpaid.bank_transaction_id = "BTX-UNREPORTED-1"
        line = {
            "debit": fee(PRICE),
            "price": credit(unpaid, amount=PRICE - 1, reference=False),
            "missing": credit(unpaid, reference=False),
        }[card]
        await send(client, shop.bank, statement_json(shop.account_id, [line]))
        (found,) = await breaks(client, shop.regulator, state="open")
        card_id = "card_NOPE" if card == "missing" else unpaid.card_id
        refused = await resolve(
            client, shop.regulator, found["id"], status, action="attach_to_card", card_id=card_id, note=why
        )
        assert refused["code"] in ("resolution_refused", "validation_failed"), refused
        assert (await breaks(client, shop.regulator, state="open"))[0]["id"] == found["id"]

    async def test_accepted_with_a_note_the_day_balances_with_the_difference_explained(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        shop = await desk(client, session)
        stmt = (await send(client, shop.bank, statement_json(shop.account_id, [fee(700)])))["statements"][0]
        assert stmt["closing"]["ok"] is False
        (found,) = await breaks(client, shop.regulator, state="open")
        await resolve(client, shop.regulator, found["id"], action="accept", note="bank reverses the fee tomorrow")
        after = await statement(client, shop.regulator, stmt["id"])
        assert after["closing"]["difference"]["amount"] == after["closing"]["accepted"]["amount"] == -700
        assert after["closing"]["ok"] is True and after["reconciled"] is True
        again = await resolve(client, shop.regulator, found["id"], 409, action="accept", note="twice")
        assert again["code"] == "break_settled"

    async def test_only_the_regulator_resolves(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        shop = await desk(client, session)
        await send(client, shop.bank, statement_json(shop.account_id, [fee(700)]))
        (found,) = await breaks(client, shop.regulator, state="open")
        response = await client.post(
            f"/v1/reconciliation/breaks/{found['id']}/resolve",
            json={"action": "accept", "note": "mine"},
            headers=key(),
            auth=shop.bank.auth,
        )
        assert response.status_code == 403


class TestBalances:
    async def test_an_opening_balance_that_disagrees_with_the_ledger_is_a_balance_break(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        shop = await desk(client, session)
        deposit = await shop.deposit()
        body = statement_json(shop.account_id, [credit(deposit)], opening=5_000)
        stmt = (await send(client, shop.bank, body))["statements"][0]
        assert stmt["lines"]["matched"] == 1 and stmt["opening"]["ok"] is False and stmt["closing"]["ok"] is False
        (found,) = await breaks(client, shop.regulator, state="open")
        assert (found["kind"], found["amount"]["amount"], found["line"]) == ("balance_mismatch", 5_000, None)
        await resolve(client, shop.regulator, found["id"], action="adjust", note="interest credited before custody")
        after = await statement(client, shop.regulator, stmt["id"])
        assert after["opening"]["ok"] is True and after["closing"]["ok"] is True and after["reconciled"] is True

    async def test_the_ledger_side_is_custody_cash_as_of_the_end_of_the_day(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        shop = await desk(client, session)
        d1, d2 = await shop.deposit(), await shop.deposit()
        p = await shop.payout(0, d1.card_id, 3)
        stmt = (await send(client, shop.bank, statement_json(shop.account_id, [credit(d1), credit(d2), debit(p)])))[
            "statements"
        ][0]
        assert stmt["opening"]["ledger"]["amount"] == 0
        assert stmt["closing"]["ledger"]["amount"] == 2 * PRICE - 30_000 == stmt["closing"]["bank"]["amount"]
        assert stmt["reconciled"] is True


class TestStatementsAreChecked:
    async def test_balances_that_do_not_add_up_are_refused(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        shop = await desk(client, session)
        body = statement_json(shop.account_id, [fee(100)])
        body["closing_balance"]["amount"] = 0
        refused = await send(client, shop.bank, body, 422)
        assert refused["code"] == "statement_invalid" and refused["errors"][0]["field"] == "closing_balance"
        assert await count(session, "SELECT count(*) FROM bank_statement_lines") == 0

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            (lambda b: b["lines"][0]["amount"].update(amount=1.5), "lines.0.amount.amount"),
            (lambda b: b["lines"][0]["amount"].update(currency="USD"), "lines.0.amount.currency"),
            (lambda b: b["lines"][0].update(direction="sideways"), "lines.0.direction"),
            (lambda b: b["lines"][0].update(amount={"amount": 0, "currency": "CNY"}), "lines.0.amount.amount"),
            (lambda b: b.update(surprise=1), "surprise"),
        ],
    )
    async def test_bad_fields_are_named(self, client: httpx.AsyncClient, session: AsyncSession, change, field) -> None:
        shop = await desk(client, session)
        body = statement_json(shop.account_id, [fee(100)])
        change(body)
        refused = await send(client, shop.bank, body, 422)
        assert field in {e["field"] for e in refused["errors"]}, refused

    async def test_a_future_day_and_a_late_booking_are_refused(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        from datetime import timedelta

        shop = await desk(client, session)
        tomorrow = today() + timedelta(days=1)
        refused = await send(client, shop.bank, statement_json(shop.account_id, [], day=tomorrow), 422)
        assert refused["errors"][0]["field"] == "business_date"
        late = statement_json(shop.account_id, [fee(100)._replace(booking_date=tomorrow)])
        refused = await send(client, shop.bank, late, 422)
        assert refused["errors"][0]["field"] == "lines[0].booking_date"

    async def test_a_bank_sees_and_sends_only_for_its_own_accounts(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        shop, other = await desk(client, session), await desk(client, session, "RCOT")
        refused = await send(client, other.bank, statement_json(shop.account_id, []), 404)
        assert refused["code"] == "not_found"
        stmt = (await send(client, shop.bank, statement_json(shop.account_id, [fee(1)])))["statements"][0]
        for path in (f"/v1/statements/{stmt['id']}", f"/v1/statements/{stmt['id']}/lines"):
            assert (await client.get(path, auth=other.bank.auth)).status_code == 404
        assert (await client.get("/v1/statements", auth=other.bank.auth)).json()["items"] == []
        assert (await client.get("/v1/reconciliation/breaks", auth=other.bank.auth)).json()["items"] == []
        (found,) = await breaks(client, shop.regulator)
        assert (await client.get(f"/v1/reconciliation/breaks/{found['id']}", auth=other.bank.auth)).status_code == 404


class TestReports:
    async def test_days_overview_and_csv(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        shop, quiet = await desk(client, session), await desk(client, session, "RCQT")
        await send(client, shop.bank, statement_json(shop.account_id, [fee(100)]))
        day = today().isoformat()
        days = await client.get(
            f"/v1/escrow-accounts/{quiet.account_id}/reconciliation",
            params={"from": day, "to": day},
            headers=bearer(quiet.regulator),
        )
        assert [d["status"] for d in days.json()["days"]] == ["missing_statement"]
        overview = await client.get("/v1/reconciliation/overview", headers=bearer(shop.regulator))
        assert overview.status_code == 200, overview.text
        items = overview.json()["items"]
        assert items[0]["escrow_account_id"] == shop.account_id and items[0]["open_breaks"] == 1
        assert items[0]["oldest_open_break_date"] == day and items[0]["open_difference"]["amount"] == -100
        assert {i["escrow_account_id"] for i in items} == {shop.account_id, quiet.account_id}
        csv = await client.get("/v1/reconciliation/breaks.csv", headers=bearer(shop.regulator))
        assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
        header, row = csv.text.strip().splitlines()
        assert header.startswith("id,escrow_account_id,bank_id,kind,state") and ",not_in_ledger,open," in row
        daily = await client.get(
            f"/v1/escrow-accounts/{shop.account_id}/reconciliation.csv",
            params={"from": day, "to": day},
            headers=bearer(shop.regulator),
        )
        assert daily.text.splitlines()[1].startswith(f"{day},breaks,stm_")
