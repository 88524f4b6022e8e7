"""Requests on one card at the same instant: no overdraft, no service after a refund, one answer per question.

Every race goes through the API: concurrent HTTP requests on the test's event loop into one ASGI app, each
request a unit of work on a connection of its own (the app's pool is made larger than the number of racers,
so nobody waits for a connection instead of for a lock). After each race: the ledger verifies (invariants
1-3, no constrained account below zero), and invariant 4 holds for the card, custodied and unprotected parts
alike.
"""

import asyncio
import random
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from escrow.config import Settings
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

pytestmark = pytest.mark.slow

RACERS = 30
TIMEOUT = 120  # seconds; a deadlock or a lost wake-up fails the test instead of hanging it


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # every racer gets a connection of its own (the embedded test server allows 100)
    return settings.model_copy(update={"db_pool_size": RACERS + 10, "db_max_overflow": 0, "payout_hour": None})


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

    async def sell(self, **plan: Any) -> str:
        made = await create_plan(self.client, self.merchant, **plan)
        return await sell_and_pay(self.client, self.merchant, self.bank, made["id"], self.consumer_id)

    def record(self, card_id: str, **body: Any) -> Any:
        return self.client.post(
            f"/v1/cards/{card_id}/consumptions", json=body, headers={**bearer(self.merchant.token), **key()}
        )

    def confirm(self, consumption_id: str) -> Any:
        return self.client.post(
            f"/v1/consumptions/{consumption_id}/confirm", headers={**bearer(self.consumer), **key()}
        )

    def dispute(self, consumption_id: str) -> Any:
        return self.client.post(
            f"/v1/consumptions/{consumption_id}/dispute",
            json={"reason": "I was not there"},
            headers={**bearer(self.consumer), **key()},
        )

    async def quote(self, card_id: str, cause: str) -> dict:
        response = await self.client.get(
            f"/v1/cards/{card_id}/refund-quote?cause={cause}", headers=bearer(self.consumer)
        )
        assert response.status_code == 200, response.text
        return response.json()

    def refund(self, card_id: str, cause: str, amount: dict) -> Any:
        return self.client.post(
            f"/v1/cards/{card_id}/refunds",
            json={"cause": cause, "expected_amount": amount},
            headers={**bearer(self.consumer), **key()},
        )


@pytest.fixture
async def world(client: httpx.AsyncClient, session: AsyncSession, engine: AsyncEngine) -> World:
    """A merchant at 40 % custody (rating A, in business since 2015), so every card has both parts."""
    regulator = await regulator_token(session)
    bank = await onboard_bank(client, regulator, "RACE")
    merchant = await onboard_ratio_merchant(client, regulator, "Busy Gym", "A")
    account = await open_escrow_account(client, merchant, bank)
    consumer_id, consumer = await consumer_token(client, merchant, "13700000001")
    return World(client, engine, regulator, bank, merchant, account, consumer_id, consumer)


async def at_once(*requests: Any) -> list[httpx.Response]:
    return list(await asyncio.wait_for(asyncio.gather(*requests), TIMEOUT))


def code(response: httpx.Response) -> str | None:
    return response.json().get("code") if response.status_code >= 400 else None


async def check_card(world: World, card_id: str) -> dict:
    """Invariants 1-3 (verify) and 4 for one card; returns the card as the consumer sees it."""
    report = await verify_database(world.engine)
    assert report.ok, [c for c in report.checks if not c.ok]
    detail = await card_detail(world.client, world.consumer, card_id)
    async with world.engine.connect() as connection:
        row = (await connection.execute(text("SELECT * FROM cards WHERE id = :id"), {"id": card_id})).one()
        parts = (
            await connection.execute(
                text(
                    "SELECT a.code,"
                    " coalesce(sum(p.amount) FILTER (WHERE p.side = 'C' AND p.kind = 'posted'), 0),"
                    " coalesce(sum(p.amount) FILTER (WHERE p.side = 'D' AND p.kind = 'posted'"
                    "   AND e.kind IN ('consumption', 'release')), 0),"
                    " coalesce(sum(p.amount) FILTER (WHERE p.side = 'D' AND p.kind = 'posted'"
                    "   AND e.kind = 'refund'), 0),"
                    " coalesce(sum(p.amount) FILTER (WHERE p.side = 'D' AND p.kind = 'posted'), 0),"
                    " coalesce(sum(CASE p.kind WHEN 'pending' THEN p.amount ELSE -p.amount END)"
                    "   FILTER (WHERE p.side = 'D' AND p.kind <> 'posted'), 0)"
                    " FROM ledger_accounts a JOIN ledger_postings p ON p.account_id = a.id"
                    " JOIN ledger_entries e ON e.id = p.entry_id"
                    " WHERE a.code IN ('card:' || :id, 'card_unprotected:' || :id) GROUP BY a.code"
                ),
                {"id": card_id},
            )
        ).all()
    by_part = {c.split(":")[0]: (int(p), int(r), int(f), int(d), int(h)) for c, p, r, f, d, h in parts}
    protected = by_part["card"]
    unprotected = by_part.get("card_unprotected", (0, 0, 0, 0, 0))
    for (paid, released, refunded, debits, held), shown in (
        (protected, detail["protected"]["amount"]),
        (unprotected, detail["unprotected"]["amount"]),
    ):
        assert debits == released + refunded, "only services, releases and refunds take value off a card"
        assert paid == released + refunded + shown, (by_part, detail)  # invariant 4, part by part
        assert 0 <= held <= shown  # what is held is still on the card, and never more than it has
    assert protected[0] == row.protected_paid and protected[0] + unprotected[0] == row.price
    assert protected[1] + unprotected[1] == row.released == detail["released"]["amount"]
    assert protected[2] + unprotected[2] == row.refunded == detail["refunded"]["amount"]
    assert row.price == row.released + row.refunded + detail["value_remaining"]["amount"]
    assert protected[4] + unprotected[4] == detail["pending"]["amount"]
    assert 0 <= row.units_used <= row.units_total and detail["units_remaining"] == row.units_total - row.units_used
    assert row.consumed + row.refunded <= row.price
    totals = await account_totals(world.client, world.regulator, world.account)
    assert totals["custody_cash"] == totals["cards_protected"] + totals["merchant_payable"] + totals["refund_payable"]
    assert totals["payouts_in_flight"] <= totals["merchant_payable"]
    return detail


async def services_on(world: World, card_id: str) -> list[dict]:
    response = await world.client.get(f"/v1/consumptions?card_id={card_id}", headers=bearer(world.merchant.token))
    assert response.status_code == 200, response.text
    return response.json()


class TestRefundRacingServices:
    @pytest.mark.parametrize("cause", ["consumer", "merchant"])
    async def test_a_refund_and_services_recorded_at_once_never_overdraw_the_card(
        self, world: World, cause: str
    ) -> None:
        racers = RACERS - 1
        for round_ in range(6):
            card_id = await world.sell(
                kind="sessions", sessions=40, price=40_000 + round_, list_price_per_session=1_500
            )
            if round_ % 2:  # past cooling-off: one session delivered, so the refund charges for it
                first = await world.record(card_id, sessions=1)
                assert (await world.confirm(first.json()["id"])).status_code == 200
            before = {s["id"] for s in await services_on(world, card_id)}
            quote = await world.quote(card_id, cause)
            requests = [world.record(card_id, sessions=1) for _ in range(racers)]
            # the refund goes first, in the middle or last, so that both orders happen over the rounds
            requests.insert([0, racers // 2, racers][round_ % 3], world.refund(card_id, cause, quote["amount"]))
            responses = await at_once(*requests)
            refund = next(r for r in responses if "/refunds" in str(r.request.url))
            records = [r for r in responses if r is not refund]
            recorded = [r for r in records if r.status_code == 201]
            new = [s for s in await services_on(world, card_id) if s["id"] not in before]
            assert sorted(s["id"] for s in new) == sorted(r.json()["id"] for r in recorded)

            if refund.status_code == 201:
                # nothing was recorded before the refund (it would have been refused) nor after it
                assert recorded == [] and new == []
                refused = {"consumer": "card_not_active", "merchant": "refund_in_progress"}
                if refund.json()["cause"] == "cooling_off":
                    refused["merchant"] = "card_not_active"  # cooling-off: approved at once
                assert {(r.status_code, code(r)) for r in records} == {(409, refused[cause])}, records[0].text
            else:
                assert refund.status_code == 409 and code(refund) == "services_pending", refund.text
                assert recorded, "the refund was refused for services that were never recorded"
                assert all(r.status_code == 201 for r in records), [r.text for r in records if r.status_code != 201]
            detail = await check_card(world, card_id)
            assert detail["units_remaining"] >= 0

            # settle the card: approve an open request, or confirm the services and refund at the new quote
            if refund.status_code == 201 and refund.json()["status"] == "requested":
                approved = await world.client.post(
                    f"/v1/refunds/{refund.json()['id']}/approve", headers={**bearer(world.regulator), **key()}
                )
                assert approved.status_code == 200, approved.text
            elif refund.status_code == 409:
                await at_once(*(world.confirm(r.json()["id"]) for r in recorded))
                quote = await world.quote(card_id, "merchant")
                again = await world.refund(card_id, "merchant", quote["amount"])
                assert again.status_code == 201, again.text
                approved = await world.client.post(
                    f"/v1/refunds/{again.json()['id']}/approve", headers={**bearer(world.merchant.token), **key()}
                )
                assert approved.status_code == 200, approved.text
            detail = await check_card(world, card_id)
            assert detail["status"] == "refunded" and detail["value_remaining"]["amount"] == 0
            late = await world.record(card_id, sessions=1)
            assert late.status_code == 409 and code(late) == "card_not_active"


class TestServicesRacingForTheLastUnits:
    async def test_only_the_sessions_left_are_recorded(self, world: World) -> None:
        sessions = 10
        card_id = await world.sell(kind="sessions", sessions=sessions, price=9_999)
        responses = await at_once(*(world.record(card_id, sessions=1) for _ in range(RACERS)))

        won = [r for r in responses if r.status_code == 201]
        lost = [r for r in responses if r.status_code != 201]
        assert len(won) == sessions
        assert {(r.status_code, code(r)) for r in lost} == {(409, "exceeds_remaining")}
        # the k-th session is worth ⌊P·k/N⌋ - ⌊P·(k-1)/N⌋ whatever order they landed in: the last closes the card
        assert sorted(r.json()["value"]["amount"] for r in won) == sorted(
            9_999 * k // sessions - 9_999 * (k - 1) // sessions for k in range(1, sessions + 1)
        )
        detail = await check_card(world, card_id)
        assert detail["units_remaining"] == 0 and detail["pending"]["amount"] == 9_999
        await at_once(*(world.confirm(r.json()["id"]) for r in won))
        detail = await check_card(world, card_id)
        assert detail["status"] == "exhausted" and detail["released"]["amount"] == 9_999

    async def test_only_the_face_value_left_is_spent(self, world: World) -> None:
        face = 50_000
        card_id = await world.sell(kind="stored_value", price=40_000, face_value=face)
        rng = random.Random(20261126)
        amounts = [rng.randint(1, 4_000) for _ in range(RACERS)]
        responses = await at_once(
            *(world.record(card_id, face_value={"amount": a, "currency": "CNY"}) for a in amounts)
        )

        won = [a for a, r in zip(amounts, responses, strict=True) if r.status_code == 201]
        lost = [(a, r) for a, r in zip(amounts, responses, strict=True) if r.status_code != 201]
        assert won and lost
        assert all(r.status_code == 409 and code(r) == "exceeds_remaining" for _, r in lost), lost[0][1].text
        detail = await check_card(world, card_id)
        assert detail["units_remaining"] == face - sum(won) >= 0
        # what is left only fell during the race, so every refusal asked for more than is left now
        assert all(a > detail["units_remaining"] for a, _ in lost)
        values = sum(r.json()["value"]["amount"] for r in responses if r.status_code == 201)
        assert detail["pending"]["amount"] == values <= 40_000


class TestConfirmRacingDispute:
    async def test_exactly_one_of_confirm_and_dispute_wins(self, world: World) -> None:
        services = RACERS // 2
        card_id = await world.sell(kind="sessions", sessions=services, price=30_001)
        recorded = [(await world.record(card_id, sessions=1)).json() for _ in range(services)]
        requests = []
        for n, service in enumerate(recorded):
            pair = [world.confirm(service["id"]), world.dispute(service["id"])]
            requests += pair if n % 2 else pair[::-1]
        responses = await at_once(*requests)

        confirmed = disputed = 0
        for n, service in enumerate(recorded):
            first, second = responses[2 * n : 2 * n + 2]
            confirm, dispute = (first, second) if n % 2 else (second, first)
            won = [r for r in (confirm, dispute) if r.status_code == 200]
            assert len(won) == 1, (confirm.text, dispute.text)
            loser = dispute if won[0] is confirm else confirm
            assert loser.status_code == 409 and code(loser) == "invalid_state", loser.text
            status = (
                await world.client.get(f"/v1/consumptions/{service['id']}", headers=bearer(world.consumer))
            ).json()
            if won[0] is confirm:
                assert status["status"] == "confirmed"
                confirmed += service["value"]["amount"]
            else:
                assert status["status"] == "disputed"
                disputed += service["value"]["amount"]
        detail = await check_card(world, card_id)
        assert detail["released"]["amount"] == confirmed and detail["pending"]["amount"] == disputed
        assert confirmed + disputed == 30_001


class TestBankAndPayoutRaces:
    async def test_concurrent_payout_runs_pay_the_payable_once(self, world: World) -> None:
        card_id = await world.sell(kind="sessions", sessions=10, price=10_000)
        for _ in range(4):
            service = await world.record(card_id, sessions=1)
            assert (await world.confirm(service.json()["id"])).status_code == 200
        payable = (await account_totals(world.client, world.regulator, world.account))["merchant_payable"]
        assert payable == 1_600  # 40 % of 4 sessions of 1,000 fen

        runs = []
        for n in range(RACERS):
            token = world.regulator if n % 2 else world.merchant.token
            runs.append(world.client.post("/v1/payout-runs", json={}, headers={**bearer(token), **key()}))
        responses = await at_once(*runs)
        assert all(r.status_code == 201 for r in responses), [r.text for r in responses if r.status_code != 201]
        made = [i for r in responses for i in r.json()["instructions"] if i["escrow_account_id"] == world.account]
        assert [i["amount"]["amount"] for i in made] == [payable]
        totals = await account_totals(world.client, world.regulator, world.account)
        assert totals["payouts_in_flight"] == payable
        await check_card(world, card_id)

    async def test_executed_and_failed_reported_at_once_settle_the_instruction_once(self, world: World) -> None:
        card_id = await world.sell(kind="sessions", sessions=10, price=10_000)
        instructions = []
        for _ in range(10):  # one payout instruction per session confirmed
            service = await world.record(card_id, sessions=1)
            assert (await world.confirm(service.json()["id"])).status_code == 200
            run = await world.client.post("/v1/payout-runs", json={}, headers={**bearer(world.regulator), **key()})
            [instruction] = run.json()["instructions"]
            assert instruction["amount"]["amount"] == 400
            instructions.append(instruction)
        custody_before = (await account_totals(world.client, world.regulator, world.account))["custody_cash"]
        requests = []
        for n, instruction in enumerate(instructions):
            executed = world.client.post(
                f"/v1/instructions/{instruction['id']}/executed",
                json={"bank_transaction_id": bank_transaction_id()},
                headers=key(),
                auth=world.bank.auth,
            )
            failed = world.client.post(
                f"/v1/instructions/{instruction['id']}/failed",
                json={"reason": "account closed"},
                headers=key(),
                auth=world.bank.auth,
            )
            requests += [executed, failed] if n % 2 else [failed, executed]
        responses = await at_once(*requests)

        paid = 0
        for n, instruction in enumerate(instructions):
            first, second = responses[2 * n : 2 * n + 2]
            executed, failed = (first, second) if n % 2 else (second, first)
            won = [r for r in (executed, failed) if r.status_code == 200]
            assert len(won) == 1, (executed.text, failed.text)
            loser = failed if won[0] is executed else executed
            assert loser.status_code == 409 and code(loser) == "instruction_settled", loser.text
            if won[0] is executed:
                paid += instruction["amount"]["amount"]
        totals = await account_totals(world.client, world.regulator, world.account)
        assert totals["custody_cash"] == custody_before - paid and totals["payouts_in_flight"] == 0
        await check_card(world, card_id)
