"""Worked examples: a card's whole life through the API, every balance checked after every step."""

from datetime import timedelta

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from escrow.config import Settings
from escrow.jobs import run_jobs_once
from escrow.kit.clock import utcnow
from escrow.ledger.integrity import verify_database
from tests.parties import (
    bearer,
    consumer_token,
    create_plan,
    key,
    onboard_bank,
    onboard_merchant,
    open_escrow_account,
    regulator_token,
    sell_and_pay,
)

YUAN = 100  # fen


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"payout_hour": None})  # payouts on demand: each example runs its own


async def card(client: httpx.AsyncClient, token: str, card_id: str) -> dict:
    response = await client.get(f"/v1/cards/{card_id}", headers=bearer(token))
    assert response.status_code == 200, response.text
    return response.json()


async def totals(client: httpx.AsyncClient, token: str, account: str) -> dict[str, int]:
    response = await client.get(f"/v1/escrow-accounts/{account}/totals", headers=bearer(token))
    assert response.status_code == 200, response.text
    return {
        k: (v["amount"] if isinstance(v, dict) else v) for k, v in response.json().items() if k != "escrow_account_id"
    }


def amounts(detail: dict) -> dict[str, int]:
    return {
        k: detail[k]["amount"]
        for k in ("value_remaining", "protected", "unprotected", "pending", "released", "refunded")
    }


async def check_invariants(engine, session: AsyncSession, card_id: str) -> None:
    """Invariant 3 (custody = cards + payables) via verify; invariant 4 (paid = released + refunded + remaining)."""
    report = await verify_database(engine)
    assert report.ok, [c for c in report.checks if not c.ok]
    row = (
        await session.execute(
            text("SELECT price, released, refunded, consumed FROM cards WHERE id = :id"), {"id": card_id}
        )
    ).one()
    balances = (
        await session.execute(
            text(
                "SELECT coalesce(sum(a.posted_credits - a.posted_debits"
                " + (SELECT coalesce(sum(s.posted_credits - s.posted_debits), 0) FROM ledger_account_slots s"
                "    WHERE s.account_id = a.id)), 0)"
                " FROM ledger_accounts a WHERE a.code IN ('card:' || :id, 'card_unprotected:' || :id)"
            ),
            {"id": card_id},
        )
    ).scalar()
    price, released, refunded, consumed = row
    assert price == released + refunded + int(balances) + (consumed - released)


class TestGymSessionsCard:
    async def test_twenty_sessions_three_used_paid_out_then_refunded(
        self, client: httpx.AsyncClient, session: AsyncSession, engine, settings: Settings
    ) -> None:
        regulator = await regulator_token(session)
        bank = await onboard_bank(client, regulator, "GYMB")
        gym = await onboard_merchant(client, regulator, "Iron Temple")
        account = await open_escrow_account(client, gym, bank)
        consumer_id, consumer = await consumer_token(client, gym, "13900000001")
        plan = await create_plan(
            client, gym, kind="sessions", sessions=20, price=2000 * YUAN, list_price_per_session=150 * YUAN
        )

        card_id = await sell_and_pay(client, gym, bank, plan["id"], consumer_id)
        detail = await card(client, consumer, card_id)
        assert detail["status"] == "active" and detail["units_remaining"] == 20
        assert amounts(detail) == {
            "value_remaining": 200000,
            "protected": 200000,
            "unprotected": 0,
            "pending": 0,
            "released": 0,
            "refunded": 0,
        }
        assert await totals(client, regulator, account) == {
            "custody_cash": 200000,
            "cards_protected": 200000,
            "cards_unprotected": 0,
            "merchant_payable": 0,
            "refund_payable": 0,
            "payouts_in_flight": 0,
            "cards_active": 1,
            "cards_awaiting_payment": 0,
        }

        # session 1: recorded, held, confirmed by the consumer
        s1 = await client.post(
            f"/v1/cards/{card_id}/consumptions", json={"sessions": 1}, headers={**bearer(gym.token), **key()}
        )
        assert s1.status_code == 201, s1.text
        assert s1.json()["value"]["amount"] == 10000
        detail = await card(client, consumer, card_id)
        assert detail["pending"]["amount"] == 10000 and detail["value_remaining"]["amount"] == 200000
        assert detail["units_remaining"] == 19 and len(detail["pending_services"]) == 1
        ok = await client.post(f"/v1/consumptions/{s1.json()['id']}/confirm", headers={**bearer(consumer), **key()})
        assert ok.status_code == 200 and ok.json()["status"] == "confirmed", ok.text
        assert amounts(await card(client, consumer, card_id)) == {
            "value_remaining": 190000,
            "protected": 190000,
            "unprotected": 0,
            "pending": 0,
            "released": 10000,
            "refunded": 0,
        }
        assert (await totals(client, regulator, account))["merchant_payable"] == 10000

        # session 2: confirms itself when the window passes
        s2 = await client.post(
            f"/v1/cards/{card_id}/consumptions", json={"sessions": 1}, headers={**bearer(gym.token), **key()}
        )
        assert s2.status_code == 201
        sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        report = await run_jobs_once(sessionmaker, settings, now=utcnow() + timedelta(hours=23))
        assert report["services_auto_confirmed"] == 0
        report = await run_jobs_once(sessionmaker, settings, now=utcnow() + timedelta(hours=25))
        assert report["services_auto_confirmed"] == 1
        assert (await client.get(f"/v1/consumptions/{s2.json()['id']}", headers=bearer(consumer))).json()[
            "resolved_by"
        ] == "auto"
        assert amounts(await card(client, consumer, card_id))["released"] == 20000

        # session 3: disputed, then voided by the merchant: the value returns to the card
        s3 = await client.post(
            f"/v1/cards/{card_id}/consumptions", json={"sessions": 1}, headers={**bearer(gym.token), **key()}
        )
        disputed = await client.post(
            f"/v1/consumptions/{s3.json()['id']}/dispute",
            json={"reason": "I was not there"},
            headers={**bearer(consumer), **key()},
        )
        assert disputed.status_code == 200 and disputed.json()["status"] == "disputed"
        report = await run_jobs_once(sessionmaker, settings, now=utcnow() + timedelta(hours=25))
        assert report["services_auto_confirmed"] == 0  # a dispute stops the clock
        voided = await client.post(
            f"/v1/consumptions/{s3.json()['id']}/resolve",
            json={"outcome": "void", "note": "no-show was ours"},
            headers={**bearer(gym.token), **key()},
        )
        assert voided.status_code == 200 and voided.json()["status"] == "voided", voided.text
        detail = await card(client, consumer, card_id)
        assert detail["units_remaining"] == 18
        assert amounts(detail) == {
            "value_remaining": 180000,
            "protected": 180000,
            "unprotected": 0,
            "pending": 0,
            "released": 20000,
            "refunded": 0,
        }

        # payout: the bank pays the gym its 200 yuan
        run = await client.post("/v1/payout-runs", json={}, headers={**bearer(regulator), **key()})
        assert run.status_code == 201, run.text
        [instruction] = run.json()["instructions"]
        assert instruction["amount"]["amount"] == 20000 and instruction["kind"] == "payout"
        assert (await totals(client, regulator, account))["payouts_in_flight"] == 20000
        pending = await client.get("/v1/instructions?status=pending", auth=bank.auth)
        assert [i["id"] for i in pending.json()["items"]] == [instruction["id"]]
        done = await client.post(
            f"/v1/instructions/{instruction['id']}/executed",
            json={"bank_transaction_id": "PAY0001"},
            headers=key(),
            auth=bank.auth,
        )
        assert done.status_code == 200 and done.json()["status"] == "executed", done.text
        assert await totals(client, regulator, account) == {
            "custody_cash": 180000,
            "cards_protected": 180000,
            "cards_unprotected": 0,
            "merchant_payable": 0,
            "refund_payable": 0,
            "payouts_in_flight": 0,
            "cards_active": 1,
            "cards_awaiting_payment": 0,
        }

        # refund on the consumer's own initiative: 2 sessions delivered at the list price of 150 yuan
        quote = await client.get(f"/v1/cards/{card_id}/refund-quote", headers=bearer(consumer))
        assert quote.status_code == 200, quote.text
        q = quote.json()
        assert (
            q["cause"] == "consumer"
            and q["amount"]["amount"] == 200000 - 2 * 15000
            and q["retained"]["amount"] == 10000
        )
        refund = await client.post(
            f"/v1/cards/{card_id}/refunds",
            json={"cause": "consumer", "expected_amount": q["amount"]},
            headers={**bearer(consumer), **key()},
        )
        assert refund.status_code == 201, refund.text
        assert refund.json()["status"] == "instructed" and refund.json()["from_custody"]["amount"] == 170000
        detail = await card(client, consumer, card_id)
        assert detail["status"] == "refunded"
        assert amounts(detail) == {
            "value_remaining": 0,
            "protected": 0,
            "unprotected": 0,
            "pending": 0,
            "released": 30000,
            "refunded": 170000,
        }
        assert await totals(client, regulator, account) == {
            "custody_cash": 180000,
            "cards_protected": 0,
            "cards_unprotected": 0,
            "merchant_payable": 10000,
            "refund_payable": 170000,
            "payouts_in_flight": 0,
            "cards_active": 0,
            "cards_awaiting_payment": 0,
        }
        [refund_instruction] = (await client.get("/v1/instructions?status=pending", auth=bank.auth)).json()["items"]
        paid = await client.post(
            f"/v1/instructions/{refund_instruction['id']}/executed",
            json={"bank_transaction_id": "RFD0001"},
            headers=key(),
            auth=bank.auth,
        )
        assert paid.status_code == 200
        got = await client.get(f"/v1/refunds/{refund.json()['id']}", headers=bearer(consumer))
        assert got.json()["status"] == "paid"
        assert (await totals(client, regulator, account))["custody_cash"] == 10000
        history = (await client.get(f"/v1/cards/{card_id}/history", headers=bearer(consumer))).json()["items"]
        assert [h["event"] for h in reversed(history)] == [
            "card_paid",
            "consumption_held",
            "consumption_released",
            "consumption_held",
            "consumption_released",
            "consumption_held",
            "consumption_voided",
            "release",
            "refund",
        ]
        await check_invariants(engine, session, card_id)
