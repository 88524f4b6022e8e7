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
    account_totals,
    bearer,
    card_detail,
    consumer_token,
    create_plan,
    key,
    onboard_bank,
    onboard_merchant,
    onboard_ratio_merchant,
    open_escrow_account,
    regulator_token,
    sell_and_pay,
)

YUAN = 100  # fen


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"payout_hour": None})  # payouts on demand: each example runs its own


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
        await session.execute(text("SELECT price, released, refunded FROM cards WHERE id = :id"), {"id": card_id})
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
    price, released, refunded = row
    assert price == released + refunded + int(balances)  # the posted balances still include what is only held


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
        detail = await card_detail(client, consumer, card_id)
        assert detail["status"] == "active" and detail["units_remaining"] == 20
        assert amounts(detail) == {
            "value_remaining": 200000,
            "protected": 200000,
            "unprotected": 0,
            "pending": 0,
            "released": 0,
            "refunded": 0,
        }
        assert await account_totals(client, regulator, account) == {
            "custody_cash": 200000,
            "cards_protected": 200000,
            "cards_unprotected": 0,
            "merchant_payable": 0,
            "refund_payable": 0,
            "payouts_in_flight": 0,
            "custody_difference": 0,
            "cards_active": 1,
            "cards_awaiting_payment": 0,
        }

        # session 1: recorded, held, confirmed by the consumer
        s1 = await client.post(
            f"/v1/cards/{card_id}/consumptions", json={"sessions": 1}, headers={**bearer(gym.token), **key()}
        )
        assert s1.status_code == 201, s1.text
        assert s1.json()["value"]["amount"] == 10000
        detail = await card_detail(client, consumer, card_id)
        assert detail["pending"]["amount"] == 10000 and detail["value_remaining"]["amount"] == 200000
        assert detail["units_remaining"] == 19 and len(detail["pending_services"]) == 1
        ok = await client.post(f"/v1/consumptions/{s1.json()['id']}/confirm", headers={**bearer(consumer), **key()})
        assert ok.status_code == 200 and ok.json()["status"] == "confirmed", ok.text
        assert amounts(await card_detail(client, consumer, card_id)) == {
            "value_remaining": 190000,
            "protected": 190000,
            "unprotected": 0,
            "pending": 0,
            "released": 10000,
            "refunded": 0,
        }
        assert (await account_totals(client, regulator, account))["merchant_payable"] == 10000

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
        assert amounts(await card_detail(client, consumer, card_id))["released"] == 20000

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
        detail = await card_detail(client, consumer, card_id)
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
        assert (await account_totals(client, regulator, account))["payouts_in_flight"] == 20000
        pending = await client.get("/v1/instructions?status=pending", auth=bank.auth)
        assert [i["id"] for i in pending.json()["items"]] == [instruction["id"]]
        done = await client.post(
            f"/v1/instructions/{instruction['id']}/executed",
            json={"bank_transaction_id": "PAY0001"},
            headers=key(),
            auth=bank.auth,
        )
        assert done.status_code == 200 and done.json()["status"] == "executed", done.text
        assert await account_totals(client, regulator, account) == {
            "custody_cash": 180000,
            "cards_protected": 180000,
            "cards_unprotected": 0,
            "merchant_payable": 0,
            "refund_payable": 0,
            "payouts_in_flight": 0,
            "custody_difference": 0,
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
        detail = await card_detail(client, consumer, card_id)
        assert detail["status"] == "refunded"
        assert amounts(detail) == {
            "value_remaining": 0,
            "protected": 0,
            "unprotected": 0,
            "pending": 0,
            "released": 30000,
            "refunded": 170000,
        }
        assert await account_totals(client, regulator, account) == {
            "custody_cash": 180000,
            "cards_protected": 0,
            "cards_unprotected": 0,
            "merchant_payable": 10000,
            "refund_payable": 170000,
            "payouts_in_flight": 0,
            "custody_difference": 0,
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
        assert (await account_totals(client, regulator, account))["custody_cash"] == 10000
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


async def refund_at_quote(client: httpx.AsyncClient, consumer: str, card_id: str, cause: str = "consumer") -> dict:
    quote = await client.get(f"/v1/cards/{card_id}/refund-quote?cause={cause}", headers=bearer(consumer))
    assert quote.status_code == 200, quote.text
    refund = await client.post(
        f"/v1/cards/{card_id}/refunds",
        json={"cause": cause, "expected_amount": quote.json()["amount"]},
        headers={**bearer(consumer), **key()},
    )
    assert refund.status_code == 201, refund.text
    return {"quote": quote.json(), **refund.json()}


async def record(client: httpx.AsyncClient, merchant, card_id: str, **body) -> dict:
    response = await client.post(
        f"/v1/cards/{card_id}/consumptions", json=body, headers={**bearer(merchant.token), **key()}
    )
    assert response.status_code == 201, response.text
    return response.json()


async def confirm(client: httpx.AsyncClient, consumer: str, consumption: dict) -> None:
    response = await client.post(f"/v1/consumptions/{consumption['id']}/confirm", headers={**bearer(consumer), **key()})
    assert response.status_code == 200, response.text


class TestStoredValueCardWithGiftedCredit:
    async def test_gift_is_not_money_when_the_consumer_ends_the_card(
        self, client: httpx.AsyncClient, session: AsyncSession, engine
    ) -> None:
        regulator = await regulator_token(session)
        bank = await onboard_bank(client, regulator, "SALB")
        salon = await onboard_merchant(client, regulator, "Jade Salon", category="salon")
        account = await open_escrow_account(client, salon, bank)
        consumer_id, consumer = await consumer_token(client, salon, "13900000002")
        # pay 1,000 yuan, get 1,200 yuan to spend
        plan = await create_plan(client, salon, kind="stored_value", price=1000 * YUAN, face_value=1200 * YUAN)
        card_id = await sell_and_pay(client, salon, bank, plan["id"], consumer_id)
        detail = await card_detail(client, consumer, card_id)
        assert detail["units_total"] == 120000 and amounts(detail)["value_remaining"] == 100000

        # a 300-yuan haircut (face value) is worth 250 yuan of the money paid
        haircut = await record(client, salon, card_id, face_value={"amount": 300 * YUAN, "currency": "CNY"})
        assert haircut["value"]["amount"] == 25000
        await confirm(client, consumer, haircut)
        detail = await card_detail(client, consumer, card_id)
        assert detail["units_remaining"] == 90000
        assert amounts(detail) == {
            "value_remaining": 75000,
            "protected": 75000,
            "unprotected": 0,
            "pending": 0,
            "released": 25000,
            "refunded": 0,
        }
        # spending more face value than is left is refused
        too_much = await client.post(
            f"/v1/cards/{card_id}/consumptions",
            json={"face_value": {"amount": 90001, "currency": "CNY"}},
            headers={**bearer(salon.token), **key()},
        )
        assert too_much.status_code == 409 and too_much.json()["code"] == "exceeds_remaining"

        # the consumer ends the card: 1,000 - 300 spent = 700 yuan back; the gifted 50 yuan used is not money
        refund = await refund_at_quote(client, consumer, card_id)
        assert refund["quote"]["rule"].startswith("prepayment less face value spent")
        assert refund["amount"]["amount"] == 70000 and refund["retained"]["amount"] == 5000
        assert refund["from_custody"]["amount"] == 70000 and refund["due_on"] is not None
        detail = await card_detail(client, consumer, card_id)
        assert amounts(detail) == {
            "value_remaining": 0,
            "protected": 0,
            "unprotected": 0,
            "pending": 0,
            "released": 30000,
            "refunded": 70000,
        }
        assert (await account_totals(client, regulator, account))["merchant_payable"] == 30000
        await check_invariants(engine, session, card_id)

    async def test_merchant_caused_refund_prices_delivery_at_the_discount(
        self, client: httpx.AsyncClient, session: AsyncSession, engine
    ) -> None:
        regulator = await regulator_token(session)
        bank = await onboard_bank(client, regulator, "SALC")
        salon = await onboard_merchant(client, regulator, "Pearl Salon", category="salon")
        await open_escrow_account(client, salon, bank)
        consumer_id, consumer = await consumer_token(client, salon, "13900000003")
        plan = await create_plan(client, salon, kind="stored_value", price=1000 * YUAN, face_value=1200 * YUAN)
        card_id = await sell_and_pay(client, salon, bank, plan["id"], consumer_id)
        await confirm(
            client, consumer, await record(client, salon, card_id, face_value={"amount": 30000, "currency": "CNY"})
        )

        refund = await refund_at_quote(client, consumer, card_id, cause="merchant")
        assert refund["status"] == "requested" and refund["amount"]["amount"] == 75000  # 1,000 - 250 delivered
        # while the request is open the card takes no more services
        blocked = await client.post(
            f"/v1/cards/{card_id}/consumptions",
            json={"face_value": {"amount": 100, "currency": "CNY"}},
            headers={**bearer(salon.token), **key()},
        )
        assert blocked.status_code == 409 and blocked.json()["code"] == "refund_in_progress"
        approved = await client.post(f"/v1/refunds/{refund['id']}/approve", headers={**bearer(regulator), **key()})
        assert approved.status_code == 200 and approved.json()["status"] == "instructed", approved.text
        assert amounts(await card_detail(client, consumer, card_id))["refunded"] == 75000
        await check_invariants(engine, session, card_id)


class TestPeriodMembership:
    async def test_released_day_by_day_and_refunded_pro_rata_mid_term(
        self, client: httpx.AsyncClient, session: AsyncSession, engine, settings: Settings
    ) -> None:
        regulator = await regulator_token(session)
        bank = await onboard_bank(client, regulator, "PERB")
        gym = await onboard_merchant(client, regulator, "Dawn Gym")
        account = await open_escrow_account(client, gym, bank)
        consumer_id, consumer = await consumer_token(client, gym, "13900000004")
        # 100 yuan for 30 days: days are worth 3.33 or 3.34 yuan, cumulatively rounded
        plan = await create_plan(client, gym, kind="period", price=100 * YUAN, days=30, validity_days=30)
        card_id = await sell_and_pay(client, gym, bank, plan["id"], consumer_id)
        manual = await client.post(
            f"/v1/cards/{card_id}/consumptions", json={"sessions": 1}, headers={**bearer(gym.token), **key()}
        )
        assert manual.status_code == 409 and manual.json()["code"] == "invalid_state"

        # ten days later: the job releases days 1..10, ⌊10000·10/30⌋ = 3,333 fen
        await session.execute(
            text(
                "UPDATE cards SET starts_on = starts_on - 10, valid_until = valid_until - 10,"
                " paid_at = paid_at - interval '10 days' WHERE id = :id"
            ),
            {"id": card_id},
        )
        await session.commit()
        sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        report = await run_jobs_once(sessionmaker, settings)
        assert report["period_days_released"] == 10
        assert (await run_jobs_once(sessionmaker, settings))["period_days_released"] == 0  # idempotent
        detail = await card_detail(client, consumer, card_id)
        assert detail["units_remaining"] == 20
        assert amounts(detail) == {
            "value_remaining": 6667,
            "protected": 6667,
            "unprotected": 0,
            "pending": 0,
            "released": 3333,
            "refunded": 0,
        }

        # frozen for two days: those days are not released, they stay the consumer's
        frozen = await client.post(
            f"/v1/escrow-accounts/{account}/freeze",
            json={"reason": "inspection"},
            headers={**bearer(regulator), **key()},
        )
        assert frozen.status_code == 200
        await session.execute(
            text("UPDATE cards SET starts_on = starts_on - 2, valid_until = valid_until - 2 WHERE id = :id"),
            {"id": card_id},
        )
        await session.commit()
        report = await run_jobs_once(sessionmaker, settings)
        assert report["period_days_skipped_frozen"] == 2 and report["period_days_released"] == 0
        await client.post(f"/v1/escrow-accounts/{account}/unfreeze", headers={**bearer(regulator), **key()})

        # refund mid-term: pro rata to the 18 days not delivered plus the 2 frozen days
        refund = await refund_at_quote(client, consumer, card_id)
        assert refund["quote"]["rule"].startswith("pro rata")
        assert refund["amount"]["amount"] == 6667 and refund["retained"]["amount"] == 0
        detail = await card_detail(client, consumer, card_id)
        assert detail["status"] == "refunded" and amounts(detail)["refunded"] == 6667
        await check_invariants(engine, session, card_id)

    async def test_last_day_closes_the_card_to_the_fen(
        self, client: httpx.AsyncClient, session: AsyncSession, engine, settings: Settings
    ) -> None:
        regulator = await regulator_token(session)
        bank = await onboard_bank(client, regulator, "PERC")
        gym = await onboard_merchant(client, regulator, "Dusk Gym")
        await open_escrow_account(client, gym, bank)
        consumer_id, consumer = await consumer_token(client, gym, "13900000005")
        plan = await create_plan(client, gym, kind="period", price=99999, days=7, validity_days=7)
        card_id = await sell_and_pay(client, gym, bank, plan["id"], consumer_id)
        sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        for day in range(1, 8):
            await session.execute(
                text("UPDATE cards SET starts_on = starts_on - 1, valid_until = valid_until - 1 WHERE id = :id"),
                {"id": card_id},
            )
            await session.commit()
            assert (await run_jobs_once(sessionmaker, settings))["period_days_released"] == 1, day
        detail = await card_detail(client, consumer, card_id)
        assert detail["status"] == "exhausted" and detail["units_remaining"] == 0
        assert amounts(detail)["released"] == 99999 and amounts(detail)["value_remaining"] == 0
        await check_invariants(engine, session, card_id)


class TestCardUnderFortyPercentCustody:
    async def test_custody_holds_forty_percent_and_the_rest_is_set_off_or_owed(
        self, client: httpx.AsyncClient, session: AsyncSession, engine
    ) -> None:
        regulator = await regulator_token(session)
        bank = await onboard_bank(client, regulator, "RATB")
        gym = await onboard_ratio_merchant(client, regulator, "Old Oak Gym", "A", category="gym")
        account = await open_escrow_account(client, gym, bank)
        consumer_id, consumer = await consumer_token(client, gym, "13900000006")
        plan = await create_plan(client, gym, kind="sessions", sessions=10, price=3000 * YUAN)
        card_id = await sell_and_pay(client, gym, bank, plan["id"], consumer_id)
        detail = await card_detail(client, consumer, card_id)
        assert detail["custody_ratio_bp"] == 4000
        assert amounts(detail) == {
            "value_remaining": 300000,
            "protected": 120000,
            "unprotected": 180000,
            "pending": 0,
            "released": 0,
            "refunded": 0,
        }
        # only the custodied part is in the bank
        assert (await account_totals(client, regulator, account))["custody_cash"] == 120000

        # 3 sessions of 300 yuan: 40 % of each leaves custody for the merchant, 60 % discharges its obligation
        for _ in range(3):
            await confirm(client, consumer, await record(client, gym, card_id, sessions=1))
        detail = await card_detail(client, consumer, card_id)
        assert amounts(detail) == {
            "value_remaining": 210000,
            "protected": 84000,
            "unprotected": 126000,
            "pending": 0,
            "released": 90000,
            "refunded": 0,
        }
        assert (await account_totals(client, regulator, account))["merchant_payable"] == 36000

        # refund of 2,100 yuan: 840 from custody, 360 set off from the unpaid payable, 900 still owed by the gym
        refund = await refund_at_quote(client, consumer, card_id)
        assert refund["amount"]["amount"] == 210000
        assert refund["from_custody"]["amount"] == 84000
        assert refund["set_off"]["amount"] == 36000
        assert refund["merchant_owes"]["amount"] == 90000
        assert await account_totals(client, regulator, account) == {
            "custody_cash": 120000,
            "cards_protected": 0,
            "cards_unprotected": 0,
            "merchant_payable": 0,
            "refund_payable": 120000,
            "payouts_in_flight": 0,
            "custody_difference": 0,
            "cards_active": 0,
            "cards_awaiting_payment": 0,
        }
        [instruction] = (await client.get("/v1/instructions?status=pending", auth=bank.auth)).json()["items"]
        assert instruction["amount"]["amount"] == 120000 and instruction["kind"] == "refund"
        await check_invariants(engine, session, card_id)
