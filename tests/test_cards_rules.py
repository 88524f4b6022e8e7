"""The rules around a card: plan caps and void clauses, when sales stop, deposits that can't be applied,
cooling-off, refund deadlines, payout and refund failures, expiry and the daily payout run."""

from datetime import timedelta

import httpx
import pytest
from litestar import Litestar
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from escrow.config import Settings
from escrow.jobs import run_jobs_once
from escrow.kit.clock import utcnow
from tests.parties import (
    Bank,
    Merchant,
    bank_transaction_id,
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

YUAN = 100


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"payout_hour": None})


class World:
    regulator: str
    bank: Bank
    merchant: Merchant
    account: str
    consumer_id: str
    consumer: str


async def world(client: httpx.AsyncClient, session: AsyncSession, category: str = "gym") -> World:
    w = World()
    w.regulator = await regulator_token(session)
    w.bank = await onboard_bank(client, w.regulator, "RULB")
    w.merchant = await onboard_merchant(client, w.regulator, "Rules Co", category=category)
    w.account = await open_escrow_account(client, w.merchant, w.bank)
    w.consumer_id, w.consumer = await consumer_token(client, w.merchant, "13700000001")
    return w


def money(fen: int) -> dict:
    return {"amount": fen, "currency": "CNY"}


async def post_plan(client: httpx.AsyncClient, merchant: Merchant, **plan) -> httpx.Response:
    body = {"name": "plan", "validity_days": 365, **plan}
    for name in ("price", "face_value", "list_price_per_session"):
        if isinstance(body.get(name), int):
            body[name] = money(body[name])
    return await client.post("/v1/plans", json=body, headers={**bearer(merchant.token), **key()})


class TestPlanRules:
    @pytest.mark.parametrize(
        ("category", "plan", "rule"),
        [
            ("training", {"kind": "sessions", "sessions": 40, "price": 5001 * YUAN}, "training_max_price"),
            ("training", {"kind": "sessions", "sessions": 61, "price": 3000 * YUAN}, "training_max_sessions"),
            (
                "training",
                {"kind": "period", "days": 120, "price": 3000 * YUAN, "validity_days": 120},
                "training_max_days",
            ),
            (
                "gym",
                {"kind": "period", "days": 731, "price": 3000 * YUAN, "validity_days": 800},
                "fitness_period_max_days",
            ),
            ("gym", {"kind": "period", "days": 365, "price": 5001 * YUAN}, "fitness_period_max_price"),
            ("gym", {"kind": "sessions", "sessions": 50, "price": 20001 * YUAN}, "fitness_sessions_max_price"),
            ("gym", {"kind": "sessions", "sessions": 61, "price": 6100 * YUAN}, "fitness_max_sessions"),
            (
                "salon",
                {"kind": "stored_value", "price": 4000 * YUAN, "face_value": 5001 * YUAN},
                "stored_value_max_face",
            ),
            (
                "salon",
                {"kind": "sessions", "sessions": 10, "price": 1000, "terms": "概不退款"},
                "void_clause_no_refund",
            ),
            (
                "other",
                {"kind": "sessions", "sessions": 10, "price": 1000, "terms": "No refunds."},
                "void_clause_no_refund",
            ),
            ("gym", {"kind": "period", "days": 30, "price": 1000, "terms": "过期作废"}, "void_clause_forfeiture"),
            (
                "salon",
                {"kind": "sessions", "sessions": 5, "price": 500, "terms": "本店拥有最终解释权"},
                "void_clause_final_interpretation",
            ),
        ],
    )
    async def test_broken_rule_is_named(
        self, client: httpx.AsyncClient, session: AsyncSession, category: str, plan: dict, rule: str
    ) -> None:
        regulator = await regulator_token(session)
        merchant = await onboard_merchant(client, regulator, "Capped", category=category)
        response = await post_plan(client, merchant, **plan)
        assert response.status_code == 422, response.text
        problem = response.json()
        assert response.headers["content-type"].startswith("application/problem+json")
        assert problem["code"] == "plan_rule_broken"
        assert rule in [e["rule"] for e in problem["errors"]]

    @pytest.mark.parametrize(
        ("plan", "field"),
        [
            ({"kind": "stored_value", "price": 1000, "face_value": 999}, "face_value"),
            ({"kind": "sessions", "price": 1000}, "sessions"),
            ({"kind": "sessions", "sessions": 10, "days": 3, "price": 1000}, "days"),
            (
                {"kind": "sessions", "sessions": 10, "price": 1000, "list_price_per_session": 99},
                "list_price_per_session",
            ),
            ({"kind": "sessions", "sessions": 10, "price": 1000.5}, "price"),
        ],
    )
    async def test_inconsistent_plan_names_the_field(
        self, client: httpx.AsyncClient, session: AsyncSession, plan: dict, field: str
    ) -> None:
        regulator = await regulator_token(session)
        merchant = await onboard_merchant(client, regulator, "Careless")
        response = await post_plan(client, merchant, **plan)
        assert response.status_code == 422, response.text
        assert field in [e["field"] for e in response.json()["errors"]]

    async def test_caps_are_checked_again_at_sale(
        self, client: httpx.AsyncClient, session: AsyncSession, app: Litestar
    ) -> None:
        w = await world(client, session, category="training")
        plan = await create_plan(client, w.merchant, kind="sessions", sessions=30, price=4000 * YUAN)
        app.state.settings = app.state.settings.model_copy(update={"training_max_price": 3000 * YUAN})
        sold = await client.post(
            "/v1/cards",
            json={"plan_id": plan["id"], "consumer_id": w.consumer_id},
            headers={**bearer(w.merchant.token), **key()},
        )
        assert sold.status_code == 422 and sold.json()["errors"][0]["rule"] == "training_max_price"

    async def test_gym_consumer_total_is_capped(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        w = await world(client, session)
        plan = await create_plan(client, w.merchant, kind="sessions", sessions=50, price=15000 * YUAN)
        await sell_and_pay(client, w.merchant, w.bank, plan["id"], w.consumer_id)
        second = await client.post(
            "/v1/cards",
            json={"plan_id": plan["id"], "consumer_id": w.consumer_id},
            headers={**bearer(w.merchant.token), **key()},
        )
        assert second.status_code == 422
        assert second.json()["errors"][0]["rule"] == "fitness_consumer_max_total"


class TestSalesStop:
    async def test_no_sale_while_merchant_suspended(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        w = await world(client, session)
        plan = await create_plan(client, w.merchant, kind="sessions", sessions=10, price=1000 * YUAN)
        suspended = await client.post(
            f"/v1/merchants/{w.merchant.id}/status",
            json={"status": "suspended", "reason": "complaints"},
            headers={**bearer(w.regulator), **key()},
        )
        assert suspended.status_code == 200
        sold = await client.post(
            "/v1/cards",
            json={"plan_id": plan["id"], "consumer_id": w.consumer_id},
            headers={**bearer(w.merchant.token), **key()},
        )
        assert sold.status_code == 409 and sold.json()["code"] == "sales_stopped"

    async def test_no_sale_while_escrow_account_frozen(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        w = await world(client, session)
        plan = await create_plan(client, w.merchant, kind="sessions", sessions=10, price=1000 * YUAN)
        await client.post(
            f"/v1/escrow-accounts/{w.account}/freeze",
            json={"reason": "audit"},
            headers={**bearer(w.regulator), **key()},
        )
        sold = await client.post(
            "/v1/cards",
            json={"plan_id": plan["id"], "consumer_id": w.consumer_id, "escrow_account_id": w.account},
            headers={**bearer(w.merchant.token), **key()},
        )
        assert sold.status_code == 409 and sold.json()["code"] == "sales_stopped"

    async def test_retired_plan_is_not_sold(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        w = await world(client, session)
        plan = await create_plan(client, w.merchant, kind="sessions", sessions=10, price=1000 * YUAN)
        retired = await client.post(f"/v1/plans/{plan['id']}/retire", headers={**bearer(w.merchant.token), **key()})
        assert retired.status_code == 200 and retired.json()["active"] is False
        sold = await client.post(
            "/v1/cards",
            json={"plan_id": plan["id"], "consumer_id": w.consumer_id},
            headers={**bearer(w.merchant.token), **key()},
        )
        assert sold.status_code == 422 and sold.json()["errors"][0]["field"] == "plan_id"


async def sell(client: httpx.AsyncClient, w: World, plan_id: str) -> dict:
    sold = await client.post(
        "/v1/cards",
        json={"plan_id": plan_id, "consumer_id": w.consumer_id},
        headers={**bearer(w.merchant.token), **key()},
    )
    assert sold.status_code == 201, sold.text
    return sold.json()


async def deposit(
    client: httpx.AsyncClient, bank: Bank, reference: str, amount: int, transaction: str
) -> httpx.Response:
    return await client.post(
        "/v1/deposits",
        json={"payment_reference": reference, "amount": money(amount), "bank_transaction_id": transaction},
        headers=key(),
        auth=bank.auth,
    )


async def custody(client: httpx.AsyncClient, w: World) -> int:
    totals = await client.get(f"/v1/escrow-accounts/{w.account}/totals", headers=bearer(w.regulator))
    return totals.json()["custody_cash"]["amount"]


class TestDeposits:
    async def test_wrong_amount_is_refused_and_kept(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        w = await world(client, session)
        plan = await create_plan(client, w.merchant, kind="sessions", sessions=10, price=1000 * YUAN)
        sold = await sell(client, w, plan["id"])
        reference = sold["payment"]["payment_reference"]
        wrong = await deposit(client, w.bank, reference, 999 * YUAN, "BTXWRONG1")
        assert wrong.status_code == 422 and wrong.json()["reason"] == "amount_mismatch"
        again = await deposit(client, w.bank, reference, 999 * YUAN, "BTXWRONG1")
        assert again.status_code == 422 and again.json()["reason"] == "amount_mismatch"
        kept = (await client.get("/v1/unapplied-deposits", auth=w.bank.auth)).json()
        assert [(d["bank_transaction_id"], d["reason"], d["amount"]["amount"]) for d in kept] == [
            ("BTXWRONG1", "amount_mismatch", 99900)
        ]
        card = await client.get(f"/v1/cards/{sold['card']['id']}", headers=bearer(w.consumer))
        assert card.json()["status"] == "awaiting_payment" and await custody(client, w) == 0
        # the right amount then activates it
        right = await deposit(client, w.bank, reference, 1000 * YUAN, "BTXRIGHT1")
        assert right.status_code == 200 and right.json()["status"] == "active"
        assert await custody(client, w) == 100000

    async def test_unknown_reference_is_refused_and_kept(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        w = await world(client, session)
        unknown = await deposit(client, w.bank, "PE000000000000000000", 5000, "BTXUNK1")
        assert unknown.status_code == 422 and unknown.json()["reason"] == "unknown_reference"
        kept = (await client.get("/v1/unapplied-deposits", headers=bearer(w.regulator))).json()
        assert [d["reason"] for d in kept] == ["unknown_reference"]

    async def test_same_deposit_reported_twice_moves_money_once(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        w = await world(client, session)
        plan = await create_plan(client, w.merchant, kind="sessions", sessions=10, price=1000 * YUAN)
        reference = (await sell(client, w, plan["id"]))["payment"]["payment_reference"]
        transaction = bank_transaction_id()
        first = await deposit(client, w.bank, reference, 1000 * YUAN, transaction)
        second = await deposit(client, w.bank, reference, 1000 * YUAN, transaction)
        assert first.status_code == second.status_code == 200
        assert first.json() == second.json() and await custody(client, w) == 100000
        # a second, different payment for the same card is not applied
        double = await deposit(client, w.bank, reference, 1000 * YUAN, bank_transaction_id())
        assert double.status_code == 409 and double.json()["reason"] == "already_paid"
        assert await custody(client, w) == 100000


class TestRefundRules:
    async def test_cooling_off_refunds_the_whole_price(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        w = await world(client, session)
        plan = await create_plan(
            client, w.merchant, kind="sessions", sessions=10, price=1000 * YUAN, list_price_per_session=200 * YUAN
        )
        card_id = await sell_and_pay(client, w.merchant, w.bank, plan["id"], w.consumer_id)
        quote = (await client.get(f"/v1/cards/{card_id}/refund-quote", headers=bearer(w.consumer))).json()
        assert quote["cause"] == "cooling_off" and quote["amount"]["amount"] == 100000
        refund = await client.post(
            f"/v1/cards/{card_id}/refunds",
            json={"expected_amount": quote["amount"]},
            headers={**bearer(w.consumer), **key()},
        )
        assert refund.status_code == 201, refund.text
        body = refund.json()
        assert body["cause"] == "cooling_off" and body["status"] == "instructed"
        assert body["due_on"] is not None
        approved_on = body["approved_at"][:10]
        assert body["due_on"] > approved_on

    async def test_after_cooling_off_list_price_applies(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        w = await world(client, session)
        plan = await create_plan(
            client, w.merchant, kind="sessions", sessions=10, price=1000 * YUAN, list_price_per_session=200 * YUAN
        )
        card_id = await sell_and_pay(client, w.merchant, w.bank, plan["id"], w.consumer_id)
        await session.execute(
            text("UPDATE cards SET paid_at = paid_at - interval '8 days' WHERE id = :id"), {"id": card_id}
        )
        await session.commit()
        quote = (await client.get(f"/v1/cards/{card_id}/refund-quote", headers=bearer(w.consumer))).json()
        assert quote["cause"] == "consumer" and quote["amount"]["amount"] == 100000  # nothing delivered yet

    async def test_refund_waits_for_pending_services(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        w = await world(client, session)
        plan = await create_plan(client, w.merchant, kind="sessions", sessions=10, price=1000 * YUAN)
        card_id = await sell_and_pay(client, w.merchant, w.bank, plan["id"], w.consumer_id)
        await client.post(
            f"/v1/cards/{card_id}/consumptions", json={"sessions": 1}, headers={**bearer(w.merchant.token), **key()}
        )
        refused = await client.post(
            f"/v1/cards/{card_id}/refunds",
            json={"expected_amount": money(90000)},
            headers={**bearer(w.consumer), **key()},
        )
        assert refused.status_code == 409 and refused.json()["code"] == "services_pending"

    async def test_changed_quote_is_refused_with_the_new_one(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        w = await world(client, session)
        plan = await create_plan(client, w.merchant, kind="sessions", sessions=10, price=1000 * YUAN)
        card_id = await sell_and_pay(client, w.merchant, w.bank, plan["id"], w.consumer_id)
        refused = await client.post(
            f"/v1/cards/{card_id}/refunds",
            json={"expected_amount": money(123)},
            headers={**bearer(w.consumer), **key()},
        )
        assert refused.status_code == 409 and refused.json()["code"] == "quote_changed"
        assert refused.json()["quote"]["amount"] == 100000

    async def test_overdue_refunds_are_listed_for_the_regulator(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        w = await world(client, session)
        plan = await create_plan(client, w.merchant, kind="sessions", sessions=10, price=1000 * YUAN)
        card_id = await sell_and_pay(client, w.merchant, w.bank, plan["id"], w.consumer_id)
        quote = (await client.get(f"/v1/cards/{card_id}/refund-quote", headers=bearer(w.consumer))).json()
        refund = (
            await client.post(
                f"/v1/cards/{card_id}/refunds",
                json={"expected_amount": quote["amount"]},
                headers={**bearer(w.consumer), **key()},
            )
        ).json()
        assert (await client.get("/v1/refunds?overdue=true", headers=bearer(w.regulator))).json() == []
        await session.execute(text("UPDATE refunds SET due_on = current_date - 1 WHERE id = :id"), {"id": refund["id"]})
        await session.commit()
        overdue = (await client.get("/v1/refunds?overdue=true", headers=bearer(w.regulator))).json()
        assert [r["id"] for r in overdue] == [refund["id"]]

    async def test_failed_refund_payment_is_instructed_again(
        self, client: httpx.AsyncClient, session: AsyncSession, engine, settings: Settings
    ) -> None:
        w = await world(client, session)
        plan = await create_plan(client, w.merchant, kind="sessions", sessions=10, price=1000 * YUAN)
        card_id = await sell_and_pay(client, w.merchant, w.bank, plan["id"], w.consumer_id)
        quote = (await client.get(f"/v1/cards/{card_id}/refund-quote", headers=bearer(w.consumer))).json()
        refund = (
            await client.post(
                f"/v1/cards/{card_id}/refunds",
                json={"expected_amount": quote["amount"]},
                headers={**bearer(w.consumer), **key()},
            )
        ).json()
        [instruction] = (await client.get("/v1/instructions?status=pending", auth=w.bank.auth)).json()["items"]
        failed = await client.post(
            f"/v1/instructions/{instruction['id']}/failed",
            json={"reason": "card account closed"},
            headers=key(),
            auth=w.bank.auth,
        )
        assert failed.status_code == 200 and failed.json()["status"] == "failed"
        assert (await client.get(f"/v1/refunds/{refund['id']}", headers=bearer(w.consumer))).json()[
            "status"
        ] == "approved"
        report = await run_jobs_once(async_sessionmaker(engine, expire_on_commit=False), settings)
        assert report["refunds_reinstructed"] == 1
        [again] = (await client.get("/v1/instructions?status=pending", auth=w.bank.auth)).json()["items"]
        assert again["id"] != instruction["id"] and again["amount"]["amount"] == 100000


class TestPayouts:
    async def test_failed_payout_is_retried_by_the_next_run(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        w = await world(client, session)
        plan = await create_plan(client, w.merchant, kind="sessions", sessions=10, price=1000 * YUAN)
        card_id = await sell_and_pay(client, w.merchant, w.bank, plan["id"], w.consumer_id)
        consumption = await client.post(
            f"/v1/cards/{card_id}/consumptions", json={"sessions": 2}, headers={**bearer(w.merchant.token), **key()}
        )
        await client.post(
            f"/v1/consumptions/{consumption.json()['id']}/confirm", headers={**bearer(w.consumer), **key()}
        )
        [first] = (await client.post("/v1/payout-runs", json={}, headers={**bearer(w.merchant.token), **key()})).json()[
            "instructions"
        ]
        assert first["amount"]["amount"] == 20000
        nothing = await client.post("/v1/payout-runs", json={}, headers={**bearer(w.merchant.token), **key()})
        assert nothing.json()["instructions"] == []  # the payable is already held by the first instruction
        await client.post(
            f"/v1/instructions/{first['id']}/failed", json={"reason": "account frozen"}, headers=key(), auth=w.bank.auth
        )
        executed_after_failure = await client.post(
            f"/v1/instructions/{first['id']}/executed",
            json={"bank_transaction_id": "X1"},
            headers=key(),
            auth=w.bank.auth,
        )
        assert executed_after_failure.status_code == 409
        [second] = (await client.post("/v1/payout-runs", json={}, headers={**bearer(w.regulator), **key()})).json()[
            "instructions"
        ]
        assert second["amount"]["amount"] == 20000 and second["id"] != first["id"]

    async def test_daily_run_happens_once_per_business_date(
        self, client: httpx.AsyncClient, session: AsyncSession, engine, settings: Settings
    ) -> None:
        w = await world(client, session)
        plan = await create_plan(client, w.merchant, kind="sessions", sessions=10, price=1000 * YUAN)
        card_id = await sell_and_pay(client, w.merchant, w.bank, plan["id"], w.consumer_id)
        consumption = await client.post(
            f"/v1/cards/{card_id}/consumptions", json={"sessions": 1}, headers={**bearer(w.merchant.token), **key()}
        )
        await client.post(
            f"/v1/consumptions/{consumption.json()['id']}/confirm", headers={**bearer(w.consumer), **key()}
        )
        daily = settings.model_copy(update={"payout_hour": 0})
        sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        assert (await run_jobs_once(sessionmaker, daily))["payout_instructions"] == 1
        assert (await run_jobs_once(sessionmaker, daily))["payout_instructions"] is None  # already run today
        tomorrow = await run_jobs_once(sessionmaker, daily, now=utcnow() + timedelta(days=1))
        assert tomorrow["payout_instructions"] == 0  # run, nothing left to pay


class TestExpiry:
    async def _expired_card(self, client: httpx.AsyncClient, session: AsyncSession) -> tuple[World, str]:
        w = await world(client, session)
        plan = await create_plan(client, w.merchant, kind="sessions", sessions=10, price=1000 * YUAN, validity_days=30)
        card_id = await sell_and_pay(client, w.merchant, w.bank, plan["id"], w.consumer_id)
        consumption = await client.post(
            f"/v1/cards/{card_id}/consumptions", json={"sessions": 3}, headers={**bearer(w.merchant.token), **key()}
        )
        await client.post(
            f"/v1/consumptions/{consumption.json()['id']}/confirm", headers={**bearer(w.consumer), **key()}
        )
        await session.execute(text("UPDATE cards SET valid_until = current_date - 1 WHERE id = :id"), {"id": card_id})
        await session.commit()
        return w, card_id

    async def test_balance_is_refunded_never_forfeited(
        self, client: httpx.AsyncClient, session: AsyncSession, engine, settings: Settings
    ) -> None:
        w, card_id = await self._expired_card(client, session)
        refused = await client.post(
            f"/v1/cards/{card_id}/consumptions", json={"sessions": 1}, headers={**bearer(w.merchant.token), **key()}
        )
        assert refused.status_code == 409 and refused.json()["code"] == "card_not_active"
        report = await run_jobs_once(async_sessionmaker(engine, expire_on_commit=False), settings)
        assert report["cards_refunded_at_expiry"] == 1
        card = (await client.get(f"/v1/cards/{card_id}", headers=bearer(w.consumer))).json()
        assert card["status"] == "expired_refunded" and card["refunded"]["amount"] == 70000
        [refund] = (await client.get("/v1/refunds", headers=bearer(w.consumer))).json()
        assert refund["cause"] == "expiry" and refund["amount"]["amount"] == 70000

    async def test_balance_is_extended_when_so_configured(
        self, client: httpx.AsyncClient, session: AsyncSession, engine, settings: Settings
    ) -> None:
        w, card_id = await self._expired_card(client, session)
        extend = settings.model_copy(update={"expiry_action": "extend"})
        report = await run_jobs_once(async_sessionmaker(engine, expire_on_commit=False), extend)
        assert report["cards_extended"] == 1
        card = (await client.get(f"/v1/cards/{card_id}", headers=bearer(w.consumer))).json()
        assert card["status"] == "active" and card["value_remaining"]["amount"] == 70000
        assert card["valid_until"] > utcnow().date().isoformat()


class TestVerify:
    async def test_a_card_out_of_step_with_the_journal_is_detected(
        self, client: httpx.AsyncClient, session: AsyncSession, engine
    ) -> None:
        from escrow.ledger.integrity import verify_database

        w = await world(client, session)
        plan = await create_plan(client, w.merchant, kind="sessions", sessions=10, price=1000 * YUAN)
        card_id = await sell_and_pay(client, w.merchant, w.bank, plan["id"], w.consumer_id)
        assert (await verify_database(engine)).ok
        await session.execute(text("UPDATE cards SET refunded = 100 WHERE id = :id"), {"id": card_id})
        await session.commit()
        report = await verify_database(engine)
        [failed] = [c for c in report.checks if not c.ok]
        assert failed.name == "cards_conserve_value" and failed.first_failure["card_id"] == card_id


class TestJobs:
    async def test_old_bank_nonces_are_forgotten_by_the_jobs(
        self, client: httpx.AsyncClient, session: AsyncSession, engine, settings: Settings
    ) -> None:
        w = await world(client, session)
        await client.get("/v1/escrow-accounts", auth=w.bank.auth)  # a recent nonce
        await session.execute(
            text(
                "INSERT INTO bank_nonces (bank_id, nonce, seen_at)"
                " VALUES (:bank, 'old-nonce-0123456789', now() - interval '11 minutes')"
            ),
            {"bank": w.bank.id},
        )
        await session.commit()
        report = await run_jobs_once(async_sessionmaker(engine, expire_on_commit=False), settings)
        assert report["bank_nonces_forgotten"] == 1
        left = (await session.execute(text("SELECT nonce FROM bank_nonces"))).scalars().all()
        assert len(left) >= 1 and "old-nonce-0123456789" not in left


class TestReviewFindings:
    """Cases a second review found; each pinned here."""

    async def test_an_open_request_on_one_expired_card_does_not_stop_the_others(
        self, client: httpx.AsyncClient, session: AsyncSession, engine, settings: Settings
    ) -> None:
        w = await world(client, session)
        plan = await create_plan(client, w.merchant, kind="sessions", sessions=10, price=1000 * YUAN)
        waiting = await sell_and_pay(client, w.merchant, w.bank, plan["id"], w.consumer_id)
        other = await sell_and_pay(client, w.merchant, w.bank, plan["id"], w.consumer_id)
        await session.execute(text("UPDATE cards SET paid_at = paid_at - interval '8 days'"))
        await session.commit()
        quote = (
            await client.get(f"/v1/cards/{waiting}/refund-quote?cause=merchant", headers=bearer(w.consumer))
        ).json()
        requested = await client.post(
            f"/v1/cards/{waiting}/refunds",
            json={"cause": "merchant", "expected_amount": quote["amount"]},
            headers={**bearer(w.consumer), **key()},
        )
        assert requested.json()["status"] == "requested"
        await session.execute(text("UPDATE cards SET valid_until = current_date - 1"))
        await session.commit()
        report = await run_jobs_once(async_sessionmaker(engine, expire_on_commit=False), settings)
        assert report["cards_refunded_at_expiry"] == 1
        statuses = {
            c: (await client.get(f"/v1/cards/{c}", headers=bearer(w.consumer))).json()["status"]
            for c in (waiting, other)
        }
        assert statuses == {waiting: "active", other: "expired_refunded"}

    async def test_membership_refund_approved_later_pays_what_was_requested(
        self, client: httpx.AsyncClient, session: AsyncSession, engine, settings: Settings
    ) -> None:
        w = await world(client, session)
        plan = await create_plan(client, w.merchant, kind="period", days=30, price=3000 * YUAN, validity_days=30)
        card_id = await sell_and_pay(client, w.merchant, w.bank, plan["id"], w.consumer_id)
        await session.execute(
            text("UPDATE cards SET starts_on = starts_on - 10, paid_at = paid_at - interval '10 days' WHERE id = :id"),
            {"id": card_id},
        )
        await session.commit()
        quote = (
            await client.get(f"/v1/cards/{card_id}/refund-quote?cause=merchant", headers=bearer(w.consumer))
        ).json()
        assert quote["amount"]["amount"] == 200000
        requested = await client.post(
            f"/v1/cards/{card_id}/refunds",
            json={"cause": "merchant", "expected_amount": quote["amount"]},
            headers={**bearer(w.consumer), **key()},
        )
        # two more days pass before the regulator decides: the jobs release nothing meanwhile
        await session.execute(text("UPDATE cards SET starts_on = starts_on - 2 WHERE id = :id"), {"id": card_id})
        await session.commit()
        report = await run_jobs_once(async_sessionmaker(engine, expire_on_commit=False), settings)
        assert report["period_days_released"] == 0
        approved = await client.post(
            f"/v1/refunds/{requested.json()['id']}/approve", headers={**bearer(w.regulator), **key()}
        )
        assert approved.status_code == 200, approved.text
        assert approved.json()["amount"]["amount"] == 200000

    async def test_set_off_counts_what_the_refund_itself_releases(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        from tests.parties import onboard_ratio_merchant

        regulator = await regulator_token(session)
        bank = await onboard_bank(client, regulator, "SOFB")
        merchant = await onboard_ratio_merchant(client, regulator, "Set-off Gym", "A", category="gym")
        await open_escrow_account(client, merchant, bank)
        consumer_id, consumer = await consumer_token(client, merchant, "13700000009")
        plan = await create_plan(
            client, merchant, kind="sessions", sessions=10, price=1000 * YUAN, list_price_per_session=150 * YUAN
        )
        card_id = await sell_and_pay(client, merchant, bank, plan["id"], consumer_id)
        recorded = await client.post(
            f"/v1/cards/{card_id}/consumptions", json={"sessions": 2}, headers={**bearer(merchant.token), **key()}
        )
        await client.post(f"/v1/consumptions/{recorded.json()['id']}/confirm", headers={**bearer(consumer), **key()})
        [payout] = (await client.post("/v1/payout-runs", json={}, headers={**bearer(regulator), **key()})).json()[
            "instructions"
        ]
        await client.post(
            f"/v1/instructions/{payout['id']}/executed",
            json={"bank_transaction_id": "P1"},
            headers=key(),
            auth=bank.auth,
        )
        quote = (await client.get(f"/v1/cards/{card_id}/refund-quote", headers=bearer(consumer))).json()
        refund = await client.post(
            f"/v1/cards/{card_id}/refunds",
            json={"expected_amount": quote["amount"]},
            headers={**bearer(consumer), **key()},
        )
        body = refund.json()
        assert (body["retained"]["amount"], body["set_off"]["amount"], body["merchant_owes"]["amount"]) == (
            10000,
            4000,
            38000,
        )

    async def test_one_bank_transaction_pays_one_card(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        w = await world(client, session)
        plan = await create_plan(client, w.merchant, kind="sessions", sessions=10, price=1000 * YUAN)
        first = (await sell(client, w, plan["id"]))["payment"]["payment_reference"]
        second = (await sell(client, w, plan["id"]))["payment"]["payment_reference"]
        assert (await deposit(client, w.bank, first, 100000, "SAMETXN1")).status_code == 200
        again = await deposit(client, w.bank, second, 100000, "SAMETXN1")
        assert again.status_code == 409 and again.json()["reason"] == "transaction_already_applied"
        assert await custody(client, w) == 100000

    async def test_bad_inputs_are_4xx_not_500(self, client: httpx.AsyncClient, session: AsyncSession) -> None:
        import base64

        w = await world(client, session)
        plan = await create_plan(client, w.merchant, kind="stored_value", price=1000, face_value=1000)
        card_id = await sell_and_pay(client, w.merchant, w.bank, plan["id"], w.consumer_id)
        zero = await client.post(
            f"/v1/cards/{card_id}/consumptions",
            json={"face_value": money(0)},
            headers={**bearer(w.merchant.token), **key()},
        )
        assert zero.status_code == 422 and zero.json()["errors"][0]["field"] == "face_value"
        for raw in ("²", "9" * 30, "a\x00b"):
            cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
            for path in (f"/v1/cards/{card_id}/history", "/v1/cards"):
                response = await client.get(path, params={"cursor": cursor}, headers=bearer(w.regulator))
                # history cursors are entry numbers; card cursors are ids (a digit string is merely past the end)
                expected = {422} if "history" in path or "\x00" in raw else {200, 422}
                assert response.status_code in expected, (path, raw, response.text)
        for path in ("/v1/cards", "/v1/consumptions", "/v1/refunds", "/v1/instructions"):
            response = await client.get(path, params={"status": "\x00"}, headers=bearer(w.regulator))
            assert 400 <= response.status_code < 500, (path, response.text)
