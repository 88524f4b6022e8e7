"""Closure rules: every refusal with its exact status and problem code, and nothing changed by it; edge rules of
the freeze (what it cancels, what it lets finish), of the bank's reports, of replays, of visibility and of the
fund's cap per consumer."""

import asyncio
import csv
import io
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from escrow.closures import service as closures
from escrow.config import Settings
from escrow.jobs import run_jobs_once
from escrow.kit.clock import business_date, utcnow
from escrow.ledger.integrity import verify_database
from tests.closing import (
    bank_executes_all,
    closure_totals,
    compute_plan,
    confirm_service,
    fund_claims,
    fund_overview,
    instructions,
    items,
    order_closure,
    record_service,
    setup_fund,
    start_and_settle,
    statements,
)
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
    onboard_merchant,
    onboard_ratio_merchant,
    open_escrow_account,
    regulator_token,
    sell_and_pay,
)

YUAN = 100  # fen


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"payout_hour": None})


@dataclass
class Shop:
    regulator: str
    bank: Bank
    merchant: Merchant
    account: str
    plan: dict
    consumers: list[tuple[str, str]]  # (consumer id, token)
    cards: list[str]


async def open_shop(
    client: httpx.AsyncClient, session: AsyncSession, code: str, phone_prefix: str, cards: int = 1, regulator=None
) -> Shop:
    """A full-custody gym with one 1 000-yuan card of 10 sessions per consumer (phones ``phone_prefix`` + n)."""
    regulator = regulator or await regulator_token(session)
    bank = await onboard_bank(client, regulator, code)
    merchant = await onboard_merchant(client, regulator, f"Gym {code}")
    account = await open_escrow_account(client, merchant, bank)
    plan = await create_plan(client, merchant, kind="sessions", sessions=10, price=1000 * YUAN)
    consumers = [await consumer_token(client, merchant, f"{phone_prefix}{n}") for n in range(cards)]
    sold = [await sell_and_pay(client, merchant, bank, plan["id"], c) for c, _ in consumers]
    return Shop(regulator, bank, merchant, account, plan, consumers, sold)


def today(settings: Settings):
    return business_date(utcnow(), settings.business_timezone)


async def closures_of(client: httpx.AsyncClient, token: str) -> list[dict]:
    response = await client.get("/v1/closures", headers=bearer(token))
    assert response.status_code == 200, response.text
    return response.json()


async def merchant_status(client: httpx.AsyncClient, regulator: str, merchant_id: str) -> str:
    return (await client.get(f"/v1/merchants/{merchant_id}", headers=bearer(regulator))).json()["status"]


async def post(client: httpx.AsyncClient, token: str, path: str, body: dict | None = None) -> httpx.Response:
    return await client.post(path, json=body, headers={**bearer(token), **key()})


def refused(response: httpx.Response, status: int, code: str) -> dict:
    assert (response.status_code, response.json().get("code")) == (status, code), response.text
    return response.json()


async def card_statuses(client: httpx.AsyncClient, token: str) -> dict[str, str]:
    response = await client.get("/v1/cards", params={"limit": 200}, headers=bearer(token))
    assert response.status_code == 200, response.text
    return {c["id"]: c["status"] for c in response.json()["items"]}


async def verified(engine) -> None:
    report = await verify_database(engine)
    assert report.ok, [c for c in report.checks if not c.ok]


# --- announcing ---------------------------------------------------------------------------------------------


async def test_merchant_announcing_with_too_short_notice_is_refused(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    shop = await open_shop(client, session, "NOTC", "1390100000")
    for body in (
        {"effective_on": (today(settings) + timedelta(days=29)).isoformat(), "reason": "moving"},
        {"reason": "closing at once"},  # a merchant can't close at once: only the regulator can
    ):
        problem = refused(await post(client, shop.merchant.token, "/v1/closures", body), 422, "validation_failed")
        assert problem["errors"][0]["field"] == "effective_on"
    assert await closures_of(client, shop.regulator) == []
    assert await merchant_status(client, shop.regulator, shop.merchant.id) == "active"
    # still selling
    sold = await post(
        client, shop.merchant.token, "/v1/cards", {"plan_id": shop.plan["id"], "consumer_id": shop.consumers[0][0]}
    )
    assert sold.status_code == 201, sold.text


async def test_a_merchant_cannot_announce_another_merchants_closure(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    shop = await open_shop(client, session, "SELF", "1390101000")
    other = await open_shop(client, session, "OTHR", "1390101100", regulator=shop.regulator)
    announced = await post(
        client,
        shop.merchant.token,
        "/v1/closures",
        {
            "merchant_id": other.merchant.id,
            "effective_on": (today(settings) + timedelta(days=30)).isoformat(),
            "reason": "x",
        },
    )
    refused(announced, 422, "validation_failed")
    assert announced.json()["errors"][0]["field"] == "merchant_id"
    assert await merchant_status(client, shop.regulator, shop.merchant.id) == "active"  # nothing happened
    assert await merchant_status(client, shop.regulator, other.merchant.id) == "active"
    assert await closures_of(client, other.merchant.token) == []
    assert await closures_of(client, shop.merchant.token) == []
    sold = await post(
        client, other.merchant.token, "/v1/cards", {"plan_id": other.plan["id"], "consumer_id": other.consumers[0][0]}
    )
    assert sold.status_code == 201, sold.text


async def test_a_merchant_is_closed_only_once(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    shop = await open_shop(client, session, "TWCE", "1390102000")
    first = await order_closure(client, shop.regulator, shop.merchant.id)
    refused(
        await post(client, shop.regulator, "/v1/closures", {"merchant_id": shop.merchant.id, "reason": "again"}),
        409,
        "invalid_state",
    )
    refused(
        await post(
            client,
            shop.merchant.token,
            "/v1/closures",
            {"effective_on": (today(settings) + timedelta(days=40)).isoformat(), "reason": "again"},
        ),
        409,
        "invalid_state",
    )
    assert [c["id"] for c in await closures_of(client, shop.regulator)] == [first["id"]]
    assert (await closure_totals(client, shop.regulator, first["id"]))["status"] == "frozen"


async def test_a_sale_after_an_ordered_closure_is_refused_as_sales_stopped(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    shop = await open_shop(client, session, "SOLD", "1390103000")
    await order_closure(client, shop.regulator, shop.merchant.id)
    sale = await post(
        client, shop.merchant.token, "/v1/cards", {"plan_id": shop.plan["id"], "consumer_id": shop.consumers[0][0]}
    )
    refused(sale, 409, "sales_stopped")


# --- the order of the steps -----------------------------------------------------------------------------------


async def test_no_plan_and_no_settlement_before_the_freeze(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    shop = await open_shop(client, session, "PLAN", "1390104000")
    tomorrow = today(settings) + timedelta(days=1)
    ordered = await post(
        client,
        shop.regulator,
        "/v1/closures",
        {"merchant_id": shop.merchant.id, "effective_on": tomorrow.isoformat(), "reason": "r"},
    )
    assert ordered.status_code == 201 and ordered.json()["status"] == "announced", ordered.text
    closure_id = ordered.json()["id"]
    refused(await post(client, shop.regulator, f"/v1/closures/{closure_id}/plan"), 409, "invalid_state")
    refused(await post(client, shop.regulator, f"/v1/closures/{closure_id}/settlement"), 409, "invalid_state")
    refused(await post(client, shop.regulator, f"/v1/closures/{closure_id}/confirm"), 409, "invalid_state")
    after = await closure_totals(client, shop.regulator, closure_id)
    assert (after["status"], after["progress"], after["items"]) == ("announced", {"done": 0, "total": 0}, 0)
    assert (await card_detail(client, shop.consumers[0][1], shop.cards[0]))["status"] == "active"


async def test_confirm_only_once_settled(
    client: httpx.AsyncClient, session: AsyncSession, engine, settings: Settings, sessionmaker: async_sessionmaker
) -> None:
    shop = await open_shop(client, session, "CONF", "1390105000")
    closure_id = (await order_closure(client, shop.regulator, shop.merchant.id))["id"]
    refused(await post(client, shop.regulator, f"/v1/closures/{closure_id}/confirm"), 409, "invalid_state")
    await compute_plan(client, shop.regulator, closure_id)
    refused(await post(client, shop.regulator, f"/v1/closures/{closure_id}/confirm"), 409, "invalid_state")
    started = await post(client, shop.regulator, f"/v1/closures/{closure_id}/settlement")
    assert started.status_code == 200 and started.json()["status"] == "settling", started.text
    refused(await post(client, shop.regulator, f"/v1/closures/{closure_id}/confirm"), 409, "invalid_state")
    # nothing was paid or closed by the refusals
    assert await merchant_status(client, shop.regulator, shop.merchant.id) == "closing"
    assert (await client.get(f"/v1/escrow-accounts/{shop.account}", headers=bearer(shop.regulator))).json()[
        "status"
    ] == "frozen"
    assert await instructions(client, shop.bank) == []
    await closures.settle(sessionmaker, settings, closure_id)
    confirmed = await post(client, shop.regulator, f"/v1/closures/{closure_id}/confirm")
    assert confirmed.status_code == 200 and confirmed.json()["closure"]["status"] == "confirmed", confirmed.text
    refused(await post(client, shop.regulator, f"/v1/closures/{closure_id}/confirm"), 409, "invalid_state")
    await verified(engine)


async def test_the_settlement_starts_once(
    client: httpx.AsyncClient, session: AsyncSession, engine, settings: Settings, sessionmaker: async_sessionmaker
) -> None:
    shop = await open_shop(client, session, "STRT", "1390106000", cards=2)
    closure_id = (await order_closure(client, shop.regulator, shop.merchant.id))["id"]
    started = await post(client, shop.regulator, f"/v1/closures/{closure_id}/settlement")
    assert started.status_code == 200, started.text
    planned = await items(client, shop.regulator, closure_id)
    assert [(i["status"], i["unused"]) for i in planned] == [("planned", 100000), ("planned", 100000)]
    refused(await post(client, shop.regulator, f"/v1/closures/{closure_id}/settlement"), 409, "invalid_state")
    refused(await post(client, shop.regulator, f"/v1/closures/{closure_id}/plan"), 409, "invalid_state")
    assert await items(client, shop.regulator, closure_id) == planned  # the plan was not computed again
    await closures.settle(sessionmaker, settings, closure_id, batch_size=1)
    refused(await post(client, shop.regulator, f"/v1/closures/{closure_id}/settlement"), 409, "invalid_state")
    assert sorted((i["kind"], i["amount"]) for i in await instructions(client, shop.bank)) == [
        ("refund", 100000),
        ("refund", 100000),
    ]
    assert (await account_totals(client, shop.regulator, shop.account))["refund_payable"] == 200000
    await verified(engine)


# --- takeover -------------------------------------------------------------------------------------------------


async def test_no_takeover_answer_without_a_takeover_or_after_its_deadline(
    client: httpx.AsyncClient, session: AsyncSession, engine, settings: Settings, sessionmaker: async_sessionmaker
) -> None:
    shop = await open_shop(client, session, "TKDL", "1390107000")
    successor = await open_shop(client, session, "TKSC", "1390107100", cards=0, regulator=shop.regulator)
    (_, consumer), card = shop.consumers[0], shop.cards[0]
    # no closure at all, then a closure without a takeover
    refused(await post(client, consumer, f"/v1/cards/{card}/takeover", {"decision": "accept"}), 409, "invalid_state")
    closure_id = (await order_closure(client, shop.regulator, shop.merchant.id))["id"]
    refused(await post(client, consumer, f"/v1/cards/{card}/takeover", {"decision": "accept"}), 409, "invalid_state")
    deadline = utcnow() + timedelta(seconds=1)
    proposed = await post(
        client,
        shop.regulator,
        f"/v1/closures/{closure_id}/takeover",
        {"successor_merchant_id": successor.merchant.id, "deadline": deadline.isoformat()},
    )
    assert proposed.status_code == 200, proposed.text
    await asyncio.sleep(max(0.0, (deadline - utcnow()).total_seconds()) + 0.1)
    refused(await post(client, consumer, f"/v1/cards/{card}/takeover", {"decision": "accept"}), 409, "invalid_state")
    # the late answer counted for nothing: the card is refunded, not moved
    settled = await start_and_settle(client, shop.regulator, closure_id, sessionmaker, settings)
    assert settled["status"] == "settled"
    [item] = await items(client, shop.regulator, closure_id)
    assert (item["decision"], item["from_custody"], item["transferred"], item["new_card_id"]) == (
        "refund",
        100000,
        0,
        None,
    )
    await verified(engine)


async def test_takeover_only_by_another_active_merchant(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    shop = await open_shop(client, session, "TKSM", "1390108000")
    suspended = await open_shop(client, session, "TKSU", "1390108100", cards=0, regulator=shop.regulator)
    paused = await post(
        client,
        shop.regulator,
        f"/v1/merchants/{suspended.merchant.id}/status",
        {"status": "suspended", "reason": "audit"},
    )
    assert paused.status_code == 200, paused.text
    good = await open_shop(client, session, "TKOK", "1390108200", cards=0, regulator=shop.regulator)
    closure_id = (await order_closure(client, shop.regulator, shop.merchant.id))["id"]
    later = (utcnow() + timedelta(days=7)).isoformat()
    for successor, deadline, field in (
        (shop.merchant.id, later, "successor_merchant_id"),  # itself
        (suspended.merchant.id, later, "successor_merchant_id"),  # not active
        ("mer_nobody", later, "successor_merchant_id"),
        (good.merchant.id, (utcnow() - timedelta(seconds=1)).isoformat(), "deadline"),  # in the past
    ):
        problem = refused(
            await post(
                client,
                shop.regulator,
                f"/v1/closures/{closure_id}/takeover",
                {"successor_merchant_id": successor, "deadline": deadline},
            ),
            422,
            "validation_failed",
        )
        assert problem["errors"][0]["field"] == field
    closure = (await client.get(f"/v1/closures/{closure_id}", headers=bearer(shop.regulator))).json()
    assert (closure["successor_merchant_id"], closure["takeover_deadline"]) == (None, None)
    refused(
        await post(client, shop.consumers[0][1], f"/v1/cards/{shop.cards[0]}/takeover", {"decision": "accept"}),
        409,
        "invalid_state",
    )


# --- the freeze -----------------------------------------------------------------------------------------------


async def test_unpaid_sales_are_cancelled_at_the_freeze_and_a_late_deposit_is_kept_unapplied(
    client: httpx.AsyncClient, session: AsyncSession, engine
) -> None:
    shop = await open_shop(client, session, "LATE", "1390109000")
    sold = await post(
        client, shop.merchant.token, "/v1/cards", {"plan_id": shop.plan["id"], "consumer_id": shop.consumers[0][0]}
    )
    assert sold.status_code == 201, sold.text
    unpaid, payment = sold.json()["card"]["id"], sold.json()["payment"]
    assert (await account_totals(client, shop.regulator, shop.account))["cards_awaiting_payment"] == 1
    closure_id = (await order_closure(client, shop.regulator, shop.merchant.id))["id"]
    assert await card_statuses(client, shop.merchant.token) == {shop.cards[0]: "active", unpaid: "cancelled"}
    before = await account_totals(client, shop.regulator, shop.account)
    assert (before["custody_cash"], before["cards_active"], before["cards_awaiting_payment"]) == (100000, 1, 0)

    transaction = bank_transaction_id()
    late = await client.post(
        "/v1/deposits",
        json={
            "payment_reference": payment["payment_reference"],
            "amount": payment["amount"],
            "bank_transaction_id": transaction,
        },
        headers=key(),
        auth=shop.bank.auth,
    )
    assert refused(late, 409, "deposit_refused")["reason"] == "card_cancelled"
    assert await card_statuses(client, shop.merchant.token) == {shop.cards[0]: "active", unpaid: "cancelled"}
    assert await account_totals(client, shop.regulator, shop.account) == before
    kept = await client.get("/v1/unapplied-deposits", auth=shop.bank.auth)
    assert kept.status_code == 200, kept.text
    [row] = [d for d in kept.json() if d["bank_transaction_id"] == transaction]
    assert (row["payment_reference"], row["amount"]["amount"]) == (payment["payment_reference"], 100000)
    assert row["reason"] == "card_cancelled" and f"card {unpaid} was cancelled unpaid" in row["detail"]
    # the plan knows only the paid card
    await compute_plan(client, shop.regulator, closure_id)
    assert [i["card_id"] for i in await items(client, shop.regulator, closure_id)] == [shop.cards[0]]
    await verified(engine)


async def test_a_sale_cancelled_at_the_freeze_can_still_be_read(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    shop = await open_shop(client, session, "CNCL", "1390109100")
    sold = await post(
        client, shop.merchant.token, "/v1/cards", {"plan_id": shop.plan["id"], "consumer_id": shop.consumers[0][0]}
    )
    unpaid = sold.json()["card"]["id"]
    await order_closure(client, shop.regulator, shop.merchant.id)
    response = await client.get(f"/v1/cards/{unpaid}", headers=bearer(shop.consumers[0][1]))
    assert response.status_code == 200, response.text
    detail = response.json()
    assert (detail["status"], detail["value_remaining"]["amount"], detail["refunded"]["amount"]) == ("cancelled", 0, 0)


async def test_an_unsent_payout_is_cancelled_at_the_freeze_a_sent_one_still_completes(
    client: httpx.AsyncClient, session: AsyncSession, engine, settings: Settings, sessionmaker: async_sessionmaker
) -> None:
    shop = await open_shop(client, session, "SENT", "1390110000")
    (_, consumer), card = shop.consumers[0], shop.cards[0]
    await confirm_service(client, consumer, await record_service(client, shop.merchant, card, 1))
    first = await post(client, shop.regulator, "/v1/payout-runs", {})
    [taken] = first.json()["instructions"]
    sent = await client.post(f"/v1/instructions/{taken['id']}/sent", headers=key(), auth=shop.bank.auth)
    assert sent.status_code == 200 and sent.json()["status"] == "sent", sent.text
    await confirm_service(client, consumer, await record_service(client, shop.merchant, card, 2))
    [waiting] = (await post(client, shop.regulator, "/v1/payout-runs", {})).json()["instructions"]
    assert (taken["amount"]["amount"], waiting["amount"]["amount"]) == (10000, 20000)
    assert (await account_totals(client, shop.regulator, shop.account))["payouts_in_flight"] == 30000

    closure_id = (await order_closure(client, shop.regulator, shop.merchant.id))["id"]
    assert (await run_jobs_once(sessionmaker, settings))["closure_holds_released"] == 1  # right after the freeze
    assert [(i["id"], i["status"]) for i in await instructions(client, shop.bank, "cancelled")] == [
        (waiting["id"], "cancelled")
    ]
    assert [i["id"] for i in await instructions(client, shop.bank, "sent")] == [taken["id"]]
    # the 200 yuan not taken by the bank are payable again (the surplus later); the 100 yuan sent are in flight
    assert await account_totals(client, shop.regulator, shop.account) == {
        "custody_cash": 100000,
        "cards_protected": 70000,
        "cards_unprotected": 0,
        "merchant_payable": 30000,
        "refund_payable": 0,
        "payouts_in_flight": 10000,
        "custody_difference": 0,
        "cards_active": 1,
        "cards_awaiting_payment": 0,
    }
    refused(
        await client.post(
            f"/v1/instructions/{waiting['id']}/executed",
            json={"bank_transaction_id": bank_transaction_id()},
            headers=key(),
            auth=shop.bank.auth,
        ),
        409,
        "instruction_settled",
    )
    done = await client.post(
        f"/v1/instructions/{taken['id']}/executed",
        json={"bank_transaction_id": bank_transaction_id()},
        headers=key(),
        auth=shop.bank.auth,
    )
    assert done.status_code == 200 and done.json()["status"] == "executed", done.text
    totals = await account_totals(client, shop.regulator, shop.account)
    assert (totals["custody_cash"], totals["merchant_payable"], totals["payouts_in_flight"]) == (90000, 20000, 0)

    await start_and_settle(client, shop.regulator, closure_id, sessionmaker, settings)
    await bank_executes_all(client, shop.bank)
    confirmed = await post(client, shop.regulator, f"/v1/closures/{closure_id}/confirm")
    [surplus] = confirmed.json()["surplus_instructions"]
    assert (await client.get(f"/v1/instructions/{surplus}", headers=bearer(shop.regulator))).json()["amount"][
        "amount"
    ] == 20000
    await bank_executes_all(client, shop.bank)
    assert (await account_totals(client, shop.regulator, shop.account))["custody_cash"] == 0
    await verified(engine)


# --- the bank's reports ----------------------------------------------------------------------------------------


async def test_a_failed_fund_payout_is_replaced(
    client: httpx.AsyncClient, session: AsyncSession, engine, settings: Settings, sessionmaker: async_sessionmaker
) -> None:
    regulator = await regulator_token(session)
    bank = await onboard_bank(client, regulator, "FAIL")
    fund_bank = await onboard_bank(client, regulator, "FNDF")
    await setup_fund(client, regulator, fund_bank, 500000, "FUND-F-1")
    gym = await onboard_ratio_merchant(client, regulator, "Failing Gym", "A", category="gym")
    account = await open_escrow_account(client, gym, bank)
    plan = await create_plan(client, gym, kind="sessions", sessions=10, price=1000 * YUAN)
    consumer_id, _ = await consumer_token(client, gym, "13901110000")
    await sell_and_pay(client, gym, bank, plan["id"], consumer_id)
    closure_id = (await order_closure(client, regulator, gym.id))["id"]
    await start_and_settle(client, regulator, closure_id, sessionmaker, settings)
    [payout] = await instructions(client, fund_bank)
    assert (payout["kind"], payout["amount"]) == ("fund_payout", 60000)  # 1 000 - 400 in custody
    fund_before = await fund_overview(client, regulator)

    failed = await client.post(
        f"/v1/instructions/{payout['id']}/failed", json={"reason": "account closed"}, headers=key(), auth=fund_bank.auth
    )
    assert failed.status_code == 200 and failed.json()["status"] == "failed", failed.text
    [again] = await instructions(client, fund_bank)
    assert again["id"] != payout["id"]
    assert {k: again[k] for k in ("kind", "book", "amount", "beneficiary", "closure_item_id")} == {
        k: payout[k] for k in ("kind", "book", "amount", "beneficiary", "closure_item_id")
    }
    assert await fund_overview(client, regulator) == fund_before  # one hold released, one taken: the same money
    await bank_executes_all(client, fund_bank)
    assert (await fund_overview(client, regulator))["cash"] == 500000 - 60000  # paid once
    assert [(c["paid"], c["outstanding"]) for c in await fund_claims(client, regulator)] == [(60000, 60000)]
    await bank_executes_all(client, bank)
    assert (await account_totals(client, regulator, account))["custody_cash"] == 0
    await verified(engine)


async def test_a_failed_closure_refund_is_instructed_again_by_the_jobs(
    client: httpx.AsyncClient, session: AsyncSession, engine, settings: Settings, sessionmaker: async_sessionmaker
) -> None:
    shop = await open_shop(client, session, "RFDF", "1390111100")
    closure_id = (await order_closure(client, shop.regulator, shop.merchant.id))["id"]
    await start_and_settle(client, shop.regulator, closure_id, sessionmaker, settings)
    [refund] = await instructions(client, shop.bank)
    failed = await client.post(
        f"/v1/instructions/{refund['id']}/failed", json={"reason": "card closed"}, headers=key(), auth=shop.bank.auth
    )
    assert failed.status_code == 200, failed.text
    assert await instructions(client, shop.bank) == []
    report = await run_jobs_once(sessionmaker, settings)
    assert report["refunds_reinstructed"] == 1
    [again] = await instructions(client, shop.bank)
    assert (again["kind"], again["amount"], again["refund_id"]) == ("refund", 100000, refund["refund_id"])
    await bank_executes_all(client, shop.bank)
    assert (await account_totals(client, shop.regulator, shop.account))["custody_cash"] == 0
    await verified(engine)


async def test_a_failed_set_off_of_an_earlier_claim_is_instructed_again(
    client: httpx.AsyncClient, session: AsyncSession, engine, settings: Settings, sessionmaker: async_sessionmaker
) -> None:
    regulator = await regulator_token(session)
    bank = await onboard_bank(client, regulator, "CLMF")
    fund_bank = await onboard_bank(client, regulator, "FNDL")
    await setup_fund(client, regulator, fund_bank, 1_000_000, "FUND-L-1")
    gym = await onboard_ratio_merchant(client, regulator, "Claim Gym", "A", category="gym")
    account = await open_escrow_account(client, gym, bank)
    plan = await create_plan(client, gym, kind="sessions", sessions=10, price=1000 * YUAN)
    (fay_id, fay), (gus_id, gus) = [await consumer_token(client, gym, f"1390111200{n}") for n in range(2)]
    fays = await sell_and_pay(client, gym, bank, plan["id"], fay_id)
    # Fay changes her mind at once: 400 yuan from custody, the gym (no payable to set off) owes her 600
    quote = await client.get(f"/v1/cards/{fays}/refund-quote", headers=bearer(fay))
    refund = await post(
        client, fay, f"/v1/cards/{fays}/refunds", {"cause": "consumer", "expected_amount": quote.json()["amount"]}
    )
    assert refund.status_code == 201, refund.text
    assert (refund.json()["from_custody"]["amount"], refund.json()["merchant_owes"]["amount"]) == (40000, 60000)
    await bank_executes_all(client, bank)
    # Gus uses 5 sessions: ⌈50 000·40 %⌉ = 20 000 become payable to the gym (not paid out)
    gus_card = await sell_and_pay(client, gym, bank, plan["id"], gus_id)
    await confirm_service(client, gus, await record_service(client, gym, gus_card, 5))
    closure_id = (await order_closure(client, regulator, gym.id))["id"]
    # q: Gus's card 50 000 - 20 000 = 30 000, then Fay's claim 60 000 (T = 90 000); pool 20 000:
    #   ⌊20000·30000/90000⌋ = 6666; 20000 - 6666 = 13334
    await start_and_settle(client, regulator, closure_id, sessionmaker, settings)
    assert [(i["kind"], i["set_off"], i["fund_paid"]) for i in await items(client, regulator, closure_id)] == [
        ("card", 6666, 23334),
        ("claim", 13334, 46666),
    ]
    sent = await instructions(client, bank)
    assert sorted(i["amount"] for i in sent) == [13334, 26666]  # Gus: 20 000 + 6 666; Fay: her set-off
    for instruction in sent:
        failed = await client.post(
            f"/v1/instructions/{instruction['id']}/failed", json={"reason": "rejected"}, headers=key(), auth=bank.auth
        )
        assert failed.status_code == 200, failed.text
    await run_jobs_once(sessionmaker, settings)
    assert sorted(i["amount"] for i in await instructions(client, bank)) == [13334, 26666]
    await bank_executes_all(client, bank)
    assert (await account_totals(client, regulator, account))["refund_payable"] == 0
    await verified(engine)


# --- replays --------------------------------------------------------------------------------------------------


async def test_replayed_closure_and_settlement_requests_answer_the_same_and_move_nothing_twice(
    client: httpx.AsyncClient, session: AsyncSession, engine, settings: Settings, sessionmaker: async_sessionmaker
) -> None:
    shop = await open_shop(client, session, "IDEM", "1390112000")
    body = {"merchant_id": shop.merchant.id, "reason": "vanished"}
    closing = {**bearer(shop.regulator), "Idempotency-Key": "close-idem-1"}
    first = await client.post("/v1/closures", json=body, headers=closing)
    again = await client.post("/v1/closures", json=body, headers=closing)
    assert first.status_code == again.status_code == 201, again.text
    assert again.json() == first.json()
    assert len(await closures_of(client, shop.regulator)) == 1
    closure_id = first.json()["id"]

    starting = {**bearer(shop.regulator), "Idempotency-Key": "settle-idem-1"}
    first = await client.post(f"/v1/closures/{closure_id}/settlement", headers=starting)
    again = await client.post(f"/v1/closures/{closure_id}/settlement", headers=starting)
    assert first.status_code == again.status_code == 200, again.text
    assert again.json() == first.json() and first.json()["status"] == "settling"
    await closures.settle(sessionmaker, settings, closure_id)
    after = await client.post(f"/v1/closures/{closure_id}/settlement", headers=starting)  # once settled too
    assert after.status_code == 200 and after.json() == first.json()
    assert (await closure_totals(client, shop.regulator, closure_id))["status"] == "settled"
    assert [(i["kind"], i["amount"]) for i in await instructions(client, shop.bank)] == [("refund", 100000)]
    assert (await account_totals(client, shop.regulator, shop.account))["refund_payable"] == 100000
    await verified(engine)


# --- who sees what, and the export ----------------------------------------------------------------------------


async def test_items_are_seen_by_the_regulator_and_the_merchant_only(
    client: httpx.AsyncClient, session: AsyncSession, sessionmaker: async_sessionmaker, settings: Settings
) -> None:
    shop = await open_shop(client, session, "SEEN", "1390113000")
    other = await open_shop(client, session, "OTHS", "1390113100", regulator=shop.regulator)
    closure_id = (await order_closure(client, shop.regulator, shop.merchant.id))["id"]
    await start_and_settle(client, shop.regulator, closure_id, sessionmaker, settings)
    assert len(await items(client, shop.merchant.token, closure_id)) == 1
    outsider = other.consumers[0][1]  # a consumer of another merchant
    for path in (
        f"/v1/closures/{closure_id}/items",
        f"/v1/closures/{closure_id}/plan.csv",
        f"/v1/closures/{closure_id}",
    ):
        refused(await client.get(path, headers=bearer(outsider)), 403, "forbidden")  # consumers read their statements
        refused(await client.get(path, headers=bearer(other.merchant.token)), 404, "not_found")
    assert await statements(client, outsider) == []
    assert [s["card_id"] for s in await statements(client, shop.consumers[0][1])] == [shop.cards[0]]


async def test_the_plan_exports_as_csv_one_row_per_item(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    shop = await open_shop(client, session, "CSVX", "1390114000", cards=3)
    closure_id = (await order_closure(client, shop.regulator, shop.merchant.id))["id"]
    await compute_plan(client, shop.regulator, closure_id)
    response = await client.get(f"/v1/closures/{closure_id}/plan.csv", headers=bearer(shop.merchant.token))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert f'filename="{closure_id}-plan.csv"' in response.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == [
        "id",
        "seq",
        "kind",
        "decision",
        "status",
        "escrow_account_id",
        "consumer_id",
        "card_id",
        "refund_id",
        "new_card_id",
        "unused",
        "from_custody",
        "set_off",
        "fund_paid",
        "fund_owed",
        "fund_owed_paid",
        "unpaid",
        "transferred",
        "assumed",
        "done_at",
        "paid_at",
        "revised_at",
    ]
    assert len(rows) == 1 + 3
    listed = {i["seq"]: i["id"] for i in await items(client, shop.regulator, closure_id)}
    assert [(r[0], r[1], r[2], r[4], r[7], r[10], r[11], r[12], r[-3:]) for r in rows[1:]] == [
        (str(listed[n]), str(n), "card", "planned", card, "100000", "100000", "0", ["", "", ""])
        for n, card in enumerate(sorted(shop.cards), 1)
    ]


# --- the fund's cap per consumer ------------------------------------------------------------------------------


class TestFundCapPerConsumer:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"fund_cap_per_consumer": 80000})  # 800 yuan per consumer per closure

    async def test_the_cap_applies_to_a_consumers_cards_together_in_plan_order(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        engine,
        settings: Settings,
        sessionmaker: async_sessionmaker,
    ) -> None:
        regulator = await regulator_token(session)
        bank = await onboard_bank(client, regulator, "CAPB")
        fund_bank = await onboard_bank(client, regulator, "FNDP")
        await setup_fund(client, regulator, fund_bank, 1_000_000, "FUND-P-1")
        gym = await onboard_ratio_merchant(client, regulator, "Capped Gym", "A", category="gym")
        account = await open_escrow_account(client, gym, bank)
        small = await create_plan(client, gym, kind="sessions", sessions=10, price=700 * YUAN)
        big = await create_plan(client, gym, kind="sessions", sessions=10, price=1000 * YUAN)
        (xia_id, xia), (yan_id, yan) = [await consumer_token(client, gym, f"1390115000{n}") for n in range(2)]
        cards = [
            await sell_and_pay(client, gym, bank, plan["id"], consumer)
            for plan, consumer in ((small, xia_id), (big, xia_id), (big, yan_id))
        ]
        assert cards == sorted(cards)
        closure_id = (await order_closure(client, regulator, gym.id))["id"]
        # q (outside custody): 700 - 280 = 420 yuan, 1 000 - 400 = 600, 600; no payable to set off
        # Xia: first card 42 000 (cap left 80 000), second min(60 000, 80 000 - 42 000) = 38 000, 22 000 unpaid
        # Yan: 60 000 within her own cap
        await start_and_settle(client, regulator, closure_id, sessionmaker, settings)
        listed = await items(client, regulator, closure_id)
        assert [(i["consumer_id"], i["from_custody"], i["fund_paid"], i["fund_owed"], i["unpaid"]) for i in listed] == [
            (xia_id, 28000, 42000, 0, 0),
            (xia_id, 40000, 38000, 0, 22000),
            (yan_id, 40000, 60000, 0, 0),
        ]
        totals = await closure_totals(client, regulator, closure_id)
        assert (totals["unused"], totals["from_custody"], totals["fund_paid"], totals["unpaid"]) == (
            270000,
            108000,
            140000,
            22000,
        )
        assert [(s["card_id"], s["fund_paid"], s["unpaid_claim"]) for s in await statements(client, xia)] == [
            (cards[0], 42000, 0),
            (cards[1], 38000, 22000),
        ]
        assert [(s["fund_paid"], s["unpaid_claim"]) for s in await statements(client, yan)] == [(60000, 0)]
        assert sorted(i["amount"] for i in await instructions(client, fund_bank)) == [38000, 42000, 60000]
        await bank_executes_all(client, bank)
        await bank_executes_all(client, fund_bank)
        assert [c["paid"] for c in await fund_claims(client, regulator)] == [140000]  # not the 22 000 left unpaid
        assert (await fund_overview(client, regulator))["cash"] == 1_000_000 - 140000
        assert (await account_totals(client, regulator, account))["custody_cash"] == 0
        await verified(engine)
