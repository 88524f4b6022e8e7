"""Invariant 5 for cards: a retried request never moves money twice.

Every state-changing endpoint of the cards, services, refunds and payouts is sent twice with the same
``Idempotency-Key``: the second answer is the first one replayed (``Idempotency-Replayed: true``, same status,
same body), and nothing changed in between — not the escrow account's totals, not the cards' balances, not the
number of journal entries, cards, services, refunds or bank instructions. The bank's own retries with new keys
are harmless too: the same deposit (same bank transaction id) is applied once, the same execution report is
answered again, a contradicting one is refused.
"""

from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from escrow.ledger.integrity import verify_database
from tests.parties import (
    Bank,
    Merchant,
    account_totals,
    bank_transaction_id,
    bearer,
    card_detail,
    consumer_token,
    create_plan,
    key,
    onboard_bank,
    onboard_ratio_merchant,
    open_escrow_account,
    regulator_token,
    sell_and_pay,
)

PRICE = 100_000  # fen: 10 sessions of 10,000 fen, at 40 % custody
SESSIONS = 10


@dataclass
class World:
    client: httpx.AsyncClient
    engine: AsyncEngine
    regulator: str
    bank: Bank
    merchant: Merchant
    account: str
    consumer_id: str
    consumer: str
    plan_id: str

    def headers(self, who: str | None) -> dict[str, str]:
        token = {"merchant": self.merchant.token, "consumer": self.consumer, "regulator": self.regulator}.get(who or "")
        return bearer(token) if token else {}

    async def snapshot(self) -> dict[str, Any]:
        """Everything money-related the account shows: totals, every card's balances, and how many rows of each
        kind exist."""
        async with self.engine.connect() as connection:
            counts = (
                await connection.execute(
                    text(
                        "SELECT (SELECT count(*) FROM ledger_entries WHERE escrow_account_id = :a),"
                        " (SELECT count(*) FROM ledger_postings WHERE escrow_account_id = :a),"
                        " (SELECT count(*) FROM cards WHERE escrow_account_id = :a),"
                        " (SELECT count(*) FROM consumptions WHERE escrow_account_id = :a),"
                        " (SELECT count(*) FROM refunds WHERE escrow_account_id = :a),"
                        " (SELECT count(*) FROM instructions WHERE escrow_account_id = :a),"
                        " (SELECT count(*) FROM plans WHERE merchant_id = :m)"
                    ),
                    {"a": self.account, "m": self.merchant.id},
                )
            ).one()
            card_ids = (
                await connection.scalars(
                    text("SELECT id FROM cards WHERE escrow_account_id = :a ORDER BY id"), {"a": self.account}
                )
            ).all()
        cards = {card_id: await card_detail(self.client, self.regulator, card_id) for card_id in card_ids}
        return {
            "totals": await account_totals(self.client, self.regulator, self.account),
            "cards": cards,
            "rows": dict(
                zip(
                    ("entries", "postings", "cards", "services", "refunds", "instructions", "plans"),
                    counts,
                    strict=True,
                )
            ),
        }

    async def send(
        self, path: str, body: Any = None, *, who: str | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """POST as ``who`` (a role, or the bank when None), with ``headers`` (a fresh key unless given)."""
        return await self.client.post(
            path,
            json=body,
            headers={**self.headers(who), **(headers or key())},
            auth=self.bank.auth if who is None else None,
        )

    async def twice(self, path: str, body: Any = None, *, who: str | None = None) -> httpx.Response:
        """Send once, then again with the same key: the replay repeats the answer and changes nothing."""
        same_key = key()
        first = await self.send(path, body, who=who, headers=same_key)
        assert first.status_code in (200, 201), first.text
        assert "idempotency-replayed" not in first.headers
        before = await self.snapshot()
        second = await self.send(path, body, who=who, headers=same_key)
        assert second.headers.get("idempotency-replayed") == "true", second.headers
        assert (second.status_code, second.json()) == (first.status_code, first.json())
        assert await self.snapshot() == before
        report = await verify_database(self.engine)
        assert report.ok, [c for c in report.checks if not c.ok]
        return first

    async def unchanged_by(self, path: str, body: Any = None, *, who: str | None = None) -> httpx.Response:
        """Send with a new key; whatever the answer, nothing changes."""
        before = await self.snapshot()
        response = await self.send(path, body, who=who)
        assert "idempotency-replayed" not in response.headers
        assert await self.snapshot() == before
        return response

    # -- set-up steps, each checked -----------------------------------------------------------------------------

    async def sell_unpaid(self) -> dict:
        sold = await self.send("/v1/cards", {"plan_id": self.plan_id, "consumer_id": self.consumer_id}, who="merchant")
        assert sold.status_code == 201, sold.text
        return sold.json()

    async def sell(self) -> str:
        return await sell_and_pay(self.client, self.merchant, self.bank, self.plan_id, self.consumer_id)

    async def record(self, card_id: str) -> dict:
        recorded = await self.send(f"/v1/cards/{card_id}/consumptions", {"sessions": 1}, who="merchant")
        assert recorded.status_code == 201, recorded.text
        return recorded.json()

    async def confirm(self, consumption: dict) -> None:
        confirmed = await self.send(f"/v1/consumptions/{consumption['id']}/confirm", who="consumer")
        assert confirmed.status_code == 200, confirmed.text

    async def used_card(self) -> str:
        """A card past cooling-off: two sessions delivered and confirmed, so the merchant has a payable."""
        card_id = await self.sell()
        for _ in range(2):
            await self.confirm(await self.record(card_id))
        return card_id

    async def quote(self, card_id: str, cause: str) -> dict:
        response = await self.client.get(
            f"/v1/cards/{card_id}/refund-quote?cause={cause}", headers=bearer(self.consumer)
        )
        assert response.status_code == 200, response.text
        return response.json()["amount"]

    async def pending_instructions(self) -> list[dict]:
        response = await self.client.get("/v1/instructions?status=pending", auth=self.bank.auth)
        assert response.status_code == 200, response.text
        return response.json()["items"]


@pytest.fixture
async def world(client: httpx.AsyncClient, session: AsyncSession, engine: AsyncEngine) -> World:
    regulator = await regulator_token(session)
    bank = await onboard_bank(client, regulator, "IDEM")
    merchant = await onboard_ratio_merchant(client, regulator, "Twice Gym", "A")
    account = await open_escrow_account(client, merchant, bank)
    consumer_id, consumer = await consumer_token(client, merchant, "13600000001")
    plan = await create_plan(
        client, merchant, kind="sessions", sessions=SESSIONS, price=PRICE, list_price_per_session=12_000
    )
    return World(client, engine, regulator, bank, merchant, account, consumer_id, consumer, plan["id"])


def deposit_of(sold: dict, transaction: str) -> dict:
    payment = sold["payment"]
    return {
        "payment_reference": payment["payment_reference"],
        "amount": payment["amount"],
        "bank_transaction_id": transaction,
    }


class TestSalesAndDeposits:
    async def test_a_sale_replayed_sells_one_card(self, world: World) -> None:
        sold = await world.twice(
            "/v1/cards", {"plan_id": world.plan_id, "consumer_id": world.consumer_id}, who="merchant"
        )
        totals = await account_totals(world.client, world.regulator, world.account)
        assert totals["cards_awaiting_payment"] == 1
        assert sold.json()["card"]["status"] == "awaiting_payment"

    async def test_a_deposit_replayed_pays_the_card_once(self, world: World) -> None:
        sold = await world.sell_unpaid()
        paid = await world.twice("/v1/deposits", deposit_of(sold, bank_transaction_id()))
        assert paid.json()["status"] == "active"
        totals = await account_totals(world.client, world.regulator, world.account)
        assert totals["custody_cash"] == totals["cards_protected"] == 40_000
        assert totals["cards_unprotected"] == 60_000

    async def test_the_same_deposit_reported_again_with_a_new_key_is_applied_once(self, world: World) -> None:
        sold = await world.sell_unpaid()
        report = deposit_of(sold, bank_transaction_id())
        first = await world.send("/v1/deposits", report)
        assert first.status_code == 200, first.text
        again = await world.unchanged_by("/v1/deposits", report)
        assert again.status_code == 200, again.text
        assert again.json() == first.json()  # the same card, as it was paid
        assert (await account_totals(world.client, world.regulator, world.account))["custody_cash"] == 40_000

    async def test_another_deposit_for_a_paid_card_is_refused_and_moves_nothing(self, world: World) -> None:
        sold = await world.sell_unpaid()
        assert (await world.send("/v1/deposits", deposit_of(sold, bank_transaction_id()))).status_code == 200
        second = await world.unchanged_by("/v1/deposits", deposit_of(sold, bank_transaction_id()))
        assert second.status_code == 409 and second.json()["code"] == "deposit_refused", second.text


class TestServices:
    async def test_a_service_recorded_twice_is_held_once(self, world: World) -> None:
        card_id = await world.sell()
        recorded = await world.twice(f"/v1/cards/{card_id}/consumptions", {"sessions": 2}, who="merchant")
        assert recorded.json()["value"]["amount"] == 20_000
        detail = await card_detail(world.client, world.consumer, card_id)
        assert detail["units_remaining"] == SESSIONS - 2 and detail["pending"]["amount"] == 20_000

    async def test_the_same_key_with_another_service_is_refused_and_holds_nothing(self, world: World) -> None:
        card_id = await world.sell()
        same_key = key()
        first = await world.send(f"/v1/cards/{card_id}/consumptions", {"sessions": 1}, who="merchant", headers=same_key)
        assert first.status_code == 201, first.text
        before = await world.snapshot()
        other = await world.send(f"/v1/cards/{card_id}/consumptions", {"sessions": 3}, who="merchant", headers=same_key)
        assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused", other.text
        assert await world.snapshot() == before

    async def test_a_confirmation_replayed_releases_once(self, world: World) -> None:
        card_id = await world.sell()
        service = await world.record(card_id)
        confirmed = await world.twice(f"/v1/consumptions/{service['id']}/confirm", who="consumer")
        assert confirmed.json()["status"] == "confirmed"
        assert (await account_totals(world.client, world.regulator, world.account))["merchant_payable"] == 4_000
        assert (await card_detail(world.client, world.consumer, card_id))["released"]["amount"] == 10_000

    async def test_a_dispute_replayed(self, world: World) -> None:
        card_id = await world.sell()
        service = await world.record(card_id)
        disputed = await world.twice(
            f"/v1/consumptions/{service['id']}/dispute", {"reason": "not there"}, who="consumer"
        )
        assert disputed.json()["status"] == "disputed"

    @pytest.mark.parametrize(("outcome", "who"), [("void", "merchant"), ("confirm", "regulator")])
    async def test_a_resolution_replayed_moves_the_value_once(self, world: World, outcome: str, who: str) -> None:
        card_id = await world.sell()
        service = await world.record(card_id)
        disputed = await world.send(f"/v1/consumptions/{service['id']}/dispute", {"reason": "no"}, who="consumer")
        assert disputed.status_code == 200, disputed.text
        resolved = await world.twice(f"/v1/consumptions/{service['id']}/resolve", {"outcome": outcome}, who=who)
        assert resolved.json()["status"] == {"void": "voided", "confirm": "confirmed"}[outcome]
        detail = await card_detail(world.client, world.consumer, card_id)
        assert detail["pending"]["amount"] == 0
        assert detail["released"]["amount"] == {"void": 0, "confirm": 10_000}[outcome]
        assert detail["units_remaining"] == {"void": SESSIONS, "confirm": SESSIONS - 1}[outcome]


class TestRefunds:
    async def test_a_refund_replayed_refunds_once(self, world: World) -> None:
        card_id = await world.used_card()
        amount = await world.quote(card_id, "consumer")
        assert amount["amount"] == PRICE - 2 * 12_000  # two sessions at the list price
        refund = await world.twice(
            f"/v1/cards/{card_id}/refunds", {"cause": "consumer", "expected_amount": amount}, who="consumer"
        )
        assert refund.json()["status"] == "instructed"
        detail = await card_detail(world.client, world.consumer, card_id)
        assert detail["status"] == "refunded" and detail["refunded"]["amount"] == amount["amount"]
        [instruction] = await world.pending_instructions()
        assert instruction["refund_id"] == refund.json()["id"]

    async def test_a_merchant_caused_refund_and_its_approval_replayed(self, world: World) -> None:
        card_id = await world.used_card()
        amount = await world.quote(card_id, "merchant")
        assert amount["amount"] == PRICE - 2 * 10_000  # delivered value at the card's own price
        requested = await world.twice(
            f"/v1/cards/{card_id}/refunds", {"cause": "merchant", "expected_amount": amount}, who="consumer"
        )
        assert requested.json()["status"] == "requested"
        approved = await world.twice(f"/v1/refunds/{requested.json()['id']}/approve", who="merchant")
        assert approved.json()["status"] == "instructed"
        body = approved.json()
        assert body["from_custody"]["amount"] == 32_000  # 40 % of the 80,000 fen left
        assert body["set_off"]["amount"] == 8_000  # the merchant's whole unpaid payable
        assert body["merchant_owes"]["amount"] == 40_000
        assert (await card_detail(world.client, world.consumer, card_id))["refunded"]["amount"] == 80_000
        assert len(await world.pending_instructions()) == 1

    async def test_a_rejection_replayed(self, world: World) -> None:
        card_id = await world.used_card()
        amount = await world.quote(card_id, "merchant")
        requested = await world.send(
            f"/v1/cards/{card_id}/refunds", {"cause": "merchant", "expected_amount": amount}, who="consumer"
        )
        assert requested.status_code == 201, requested.text
        rejected = await world.twice(
            f"/v1/refunds/{requested.json()['id']}/reject", {"reason": "delivered as agreed"}, who="merchant"
        )
        assert rejected.json()["status"] == "rejected"


class TestPayoutsAndBankReports:
    async def test_a_payout_run_replayed_instructs_once(self, world: World) -> None:
        await world.used_card()
        run = await world.twice("/v1/payout-runs", {}, who="regulator")
        [instruction] = run.json()["instructions"]
        assert instruction["amount"]["amount"] == 8_000
        # a new run (a new key) finds nothing more to pay
        again = await world.unchanged_by("/v1/payout-runs", {}, who="merchant")
        assert again.status_code == 201 and again.json()["instructions"] == []
        assert (await account_totals(world.client, world.regulator, world.account))["payouts_in_flight"] == 8_000

    async def payout(self, world: World) -> dict:
        await world.used_card()
        run = await world.send("/v1/payout-runs", {}, who="regulator")
        assert run.status_code == 201, run.text
        [instruction] = run.json()["instructions"]
        return instruction

    async def test_an_execution_report_replayed_pays_once(self, world: World) -> None:
        instruction = await self.payout(world)
        transaction = bank_transaction_id()
        path = f"/v1/instructions/{instruction['id']}/executed"
        executed = await world.twice(path, {"bank_transaction_id": transaction})
        assert executed.json()["status"] == "executed"
        totals = await account_totals(world.client, world.regulator, world.account)
        assert totals["custody_cash"] == 40_000 - 8_000 and totals["merchant_payable"] == 0
        # the bank reports it again with a new key: the same transaction is harmless, another one is refused
        same = await world.unchanged_by(path, {"bank_transaction_id": transaction})
        assert same.status_code == 200 and same.json() == executed.json()
        other = await world.unchanged_by(path, {"bank_transaction_id": bank_transaction_id()})
        assert other.status_code == 409 and other.json()["code"] == "instruction_settled", other.text

    async def test_a_failure_report_replayed_releases_once(self, world: World) -> None:
        instruction = await self.payout(world)
        path = f"/v1/instructions/{instruction['id']}/failed"
        failed = await world.twice(path, {"reason": "beneficiary account closed"})
        assert failed.json()["status"] == "failed"
        totals = await account_totals(world.client, world.regulator, world.account)
        assert totals["payouts_in_flight"] == 0 and totals["merchant_payable"] == 8_000
        assert totals["custody_cash"] == 40_000
        again = await world.unchanged_by(path, {"reason": "beneficiary account closed"})
        assert again.status_code == 200 and again.json()["status"] == "failed"
        late = await world.unchanged_by(
            f"/v1/instructions/{instruction['id']}/executed", {"bank_transaction_id": bank_transaction_id()}
        )
        assert late.status_code == 409 and late.json()["code"] == "instruction_settled", late.text

    async def test_a_refund_paid_report_replayed_pays_the_consumer_once(self, world: World) -> None:
        card_id = await world.used_card()
        amount = await world.quote(card_id, "consumer")
        refund = await world.send(
            f"/v1/cards/{card_id}/refunds", {"cause": "consumer", "expected_amount": amount}, who="consumer"
        )
        assert refund.status_code == 201, refund.text
        [instruction] = await world.pending_instructions()
        owed = refund.json()["from_custody"]["amount"] + refund.json()["set_off"]["amount"]
        assert instruction["amount"]["amount"] == owed
        await world.twice(f"/v1/instructions/{instruction['id']}/executed", {"bank_transaction_id": "RFD-1"})
        paid = await world.client.get(f"/v1/refunds/{refund.json()['id']}", headers=bearer(world.consumer))
        assert paid.json()["status"] == "paid"
        totals = await account_totals(world.client, world.regulator, world.account)
        assert totals["refund_payable"] == 0 and totals["custody_cash"] == 40_000 - owed


class TestPlans:
    async def test_a_plan_made_and_retired_twice(self, world: World) -> None:
        made = await world.twice(
            "/v1/plans",
            {"name": "5 sessions", "kind": "sessions", "sessions": 5, "price": {"amount": 50_000}, "validity_days": 90},
            who="merchant",
        )
        retired = await world.twice(f"/v1/plans/{made.json()['id']}/retire", who="merchant")
        assert retired.json()["active"] is False
