"""Reconciliation, walked through as the bank and the regulator do it: a day's statement against the ledger."""

from datetime import datetime, time
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from escrow import ledger
from escrow.config import Settings
from escrow.ledger.integrity import verify_database
from tests.parties import account_totals, bearer
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


def end_of(day) -> datetime:
    return datetime.combine(day, time.max, ZoneInfo("Asia/Shanghai"))


class TestADayOfDepositsPayoutsAndARefund:
    async def test_every_outcome_once_then_balanced_after_resolution(
        self, client: httpx.AsyncClient, session: AsyncSession, engine: AsyncEngine
    ) -> None:
        shop = await desk(client, session)
        regulator = shop.regulator
        # The day: four cards paid, two payouts, one refund.
        d1, d2, d3, d4 = [await shop.deposit() for _ in range(4)]
        p1 = await shop.payout(0, d1.card_id, 2)  # 20,000 fen to the merchant
        p2 = await shop.payout(1, d2.card_id, 1)  # 10,000 fen: the bank books it tomorrow
        r = await shop.refund(3, d4.card_id)  # the whole 100,000 back (cooling-off)
        assert (p1.amount, p2.amount, r.amount) == (20_000, 10_000, PRICE)
        custody = (await ledger.balance(session, shop.account_id, "custody_cash", as_of=end_of(today()))).posted
        assert custody == 4 * PRICE - 20_000 - 10_000 - PRICE

        # The bank's statement: d3 credited 5 yuan more than the card's price, a fee the ledger doesn't know, the
        # second payout not booked yet; d4's line quotes no reference (the bank's id matches), the refund's line
        # quotes neither reference (amount and date match).
        day_lines = [
            credit(d1),
            credit(d2),
            credit(d3, amount=PRICE + 500),
            credit(d4, reference=False),
            debit(p1),
            debit(r, reference=False, bank_reference="BANK-OWN-REF-1"),
            fee(1_500),
        ]
        sent = (await send(client, shop.bank, statement_json(shop.account_id, day_lines)))["statements"]
        assert [s["outcome"] for s in sent] == ["created"]
        stmt = sent[0]
        assert stmt["lines"] == {"matched": 5, "amount_mismatch": 1, "not_in_ledger": 1}
        assert stmt["closing"]["bank"]["amount"] == 279_000
        assert stmt["closing"]["ledger"]["amount"] == custody == 270_000
        # what the bank should show: the ledger less the payout it hasn't booked
        assert stmt["closing"]["expected"]["amount"] == 280_000
        assert stmt["closing"]["difference"]["amount"] == -1_000  # +500 - 1,500
        assert stmt["closing"]["ok"] is False and stmt["opening"]["ok"] is True
        assert stmt["reconciled"] is False and stmt["open_breaks"] == 2

        by_line = {line["bank_transaction_id"]: line for line in await lines(client, regulator, stmt["id"])}
        assert {k: (v["outcome"], v["matched_by"]) for k, v in by_line.items()} == {
            d1.bank_transaction_id: ("matched", "service_reference"),
            d2.bank_transaction_id: ("matched", "service_reference"),
            d3.bank_transaction_id: ("amount_mismatch", "service_reference"),
            d4.bank_transaction_id: ("matched", "bank_reference"),
            p1.bank_transaction_id: ("matched", "service_reference"),
            "BANK-OWN-REF-1": ("matched", "amount_date"),
            "FEE-0001": ("not_in_ledger", None),
        }
        open_breaks = await breaks(client, regulator, state="open")
        assert sorted((b["kind"], b["amount"]["amount"], b["owner"]) for b in open_breaks) == [
            ("amount_mismatch", 500, "bank"),
            ("not_in_ledger", -1_500, "bank"),
        ]
        # the payout the bank hasn't booked is in transit, not a break (yet)
        days = await client.get(
            f"/v1/escrow-accounts/{shop.account_id}/reconciliation",
            headers=bearer(regulator),
            params={"from": today().isoformat(), "to": today().isoformat()},
        )
        assert days.status_code == 200, days.text
        assert [(d["status"], d["open_breaks"]) for d in days.json()["days"]] == [("breaks", 2)]

        # The regulator resolves: the fee really left custody, the consumer really paid 5 yuan more — both are
        # booked by adjusting entries (custody_cash against custody_difference), never by editing anything.
        by_kind = {b["kind"]: b for b in open_breaks}
        fee_break = await resolve(
            client, regulator, by_kind["not_in_ledger"]["id"], action="adjust", note="fee charged in error; claimed"
        )
        assert fee_break["state"] == "resolved" and fee_break["resolution"] == "adjusted"
        assert fee_break["adjustment_entry_id"] is not None
        extra = await resolve(
            client, regulator, by_kind["amount_mismatch"]["id"], action="adjust", note="consumer overpaid 5 yuan"
        )
        assert extra["resolution"] == "adjusted" and extra["line"]["outcome"] == "matched"

        after = await statement(client, regulator, stmt["id"])
        assert after["lines"] == {"matched": 7, "amount_mismatch": 0, "not_in_ledger": 0}
        assert after["closing"]["expected"]["amount"] == 279_000 == after["closing"]["bank"]["amount"]
        assert after["closing"]["ok"] is True and after["opening"]["ok"] is True
        assert after["reconciled"] is True and after["open_breaks"] == 0
        assert await breaks(client, regulator, state="open") == []
        difference = await ledger.balance(session, shop.account_id, "custody_difference")
        assert difference.posted == 500 - 1_500  # a credit-normal account: 10 yuan missing from custody, net
        # the fee's line is accounted for by the adjusting entry alone; the overpaid deposit keeps the rule that
        # matched it (its 5 yuan difference adjusted)
        by_line = {line["bank_transaction_id"]: line for line in await lines(client, regulator, stmt["id"])}
        assert (by_line["FEE-0001"]["outcome"], by_line["FEE-0001"]["matched_by"]) == ("matched", "adjustment")
        assert len(by_line["FEE-0001"]["ledger_entry_ids"]) == 1
        assert by_line[d3.bank_transaction_id]["matched_by"] == "service_reference"
        # the account's totals say why custody is 10 yuan short of what cards and payables add up to
        totals = await account_totals(client, regulator, shop.account_id)
        assert totals["custody_difference"] == -1_000
        assert (
            totals["custody_cash"]
            == 269_000
            == (totals["cards_protected"] + totals["merchant_payable"] + totals["refund_payable"] - 1_000)
        )
        report = await verify_database(engine)
        assert report.ok, [c for c in report.checks if not c.ok]
        # the journal rows of the day are untouched: the adjustments are entries of their own
        kinds = (
            await session.execute(
                text("SELECT kind, count(*) FROM ledger_entries WHERE escrow_account_id = :a AND kind = :k GROUP BY 1"),
                {"a": shop.account_id, "k": "reconciliation_adjustment"},
            )
        ).all()
        assert kinds == [("reconciliation_adjustment", 2)]
        days = await client.get(
            f"/v1/escrow-accounts/{shop.account_id}/reconciliation",
            headers=bearer(regulator),
            params={"from": today().isoformat(), "to": today().isoformat()},
        )
        assert [d["status"] for d in days.json()["days"]] == ["balanced"]
        assert p2.amount == 10_000  # still in transit: the bank books it with tomorrow's statement
