"""Worked examples of closures: a merchant closes and every consumer is paid back (or moved to a successor).

Each example is a story told through the API, with every balance checked after every step and every amount
computed by hand, to the fen, in the comments. Rounding rule (service.py): a pool shared pro rata gives item k
⌊pool·C_k/T⌋ - ⌊pool·C_(k-1)/T⌋, C_k the running total of the claims in plan order, T their sum.
"""

import asyncio
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from escrow.config import Settings
from escrow.jobs import run_jobs_once
from escrow.kit.clock import business_date, utcnow
from escrow.ledger.integrity import verify_database
from tests.closing import (
    bank_executes_all,
    card_amounts,
    closure_totals,
    compute_plan,
    confirm_service,
    contribute,
    flat,
    fund_claims,
    fund_overview,
    instructions,
    items,
    money_of_item,
    order_closure,
    record_service,
    setup_fund,
    start_and_settle,
    statements,
)
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
NOTHING = {
    "fund_paid": 0,
    "fund_owed": 0,
    "fund_owed_paid": 0,
    "unpaid": 0,
    "transferred": 0,
    "assumed": 0,
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"payout_hour": None})  # payouts on demand: each example runs its own


async def verified(engine) -> None:
    report = await verify_database(engine)
    assert report.ok, [c for c in report.checks if not c.ok]


def totals_of(
    *, unused: int, from_custody: int = 0, set_off: int = 0, fund_paid: int = 0, fund_owed: int = 0, **rest: int
) -> dict:
    """The money totals of a closure: everything not given is 0."""
    return {
        "unused": unused,
        "from_custody": from_custody,
        "set_off": set_off,
        "fund_paid": fund_paid,
        "fund_owed": fund_owed,
        "fund_owed_paid": rest.get("fund_owed_paid", 0),
        "unpaid": rest.get("unpaid", 0),
        "transferred": rest.get("transferred", 0),
        "assumed": rest.get("assumed", 0),
    }


def money_totals(totals: dict) -> dict:
    return {k: v for k, v in totals.items() if k not in ("status", "progress", "items", "done")}


def statement_of(closure_id: str, item: dict, **money: int) -> dict:
    """What GET /v1/me/closure-statements shows for a card refunded by the closure (0 where not given), once all
    of it was paid; ``item`` is the plan's line (GET /v1/closures/{id}/items)."""
    return {
        "closure_id": closure_id,
        "closure_item_id": item["id"],
        "card_id": item["card_id"],
        "refund_id": item["refund_id"],
        "paid": money.pop("paid", True),
        "kind": "card",
        "decision": money.pop("decision", "refund"),
        "new_card_id": money.pop("new_card_id", None),
        **{
            k: money.get(k, 0)
            for k in (
                "unused",
                "from_custody",
                "set_off",
                "fund_paid",
                "fund_owed",
                "fund_paid_later",
                "unpaid_claim",
                "transferred",
                "assumed_by_successor",
            )
        },
    }


class TestSalonUnderFullCustodyOrderedClosed:
    async def test_everyone_refunded_from_custody_and_the_unpaid_payable_is_the_surplus(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        engine,
        settings: Settings,
        sessionmaker: async_sessionmaker,
    ) -> None:
        regulator = await regulator_token(session)
        bank = await onboard_bank(client, regulator, "SALA")
        fund_bank = await onboard_bank(client, regulator, "FNDA")
        await setup_fund(client, regulator, fund_bank, 1_000_000, "FUND-A-1")
        fund_before = await fund_overview(client, regulator)
        assert fund_before["cash"] == 1_000_000 and fund_before["available"] == 1_000_000

        salon = await onboard_merchant(client, regulator, "Silk Salon", "salon")
        account = await open_escrow_account(client, salon, bank)
        plan = await create_plan(client, salon, kind="sessions", sessions=10, price=1000 * YUAN)  # 100 yuan a session
        consumers = [await consumer_token(client, salon, f"1390001000{n}") for n in range(3)]
        card1, card2, card3 = [await sell_and_pay(client, salon, bank, plan["id"], c) for c, _ in consumers]
        (_, ann), (_, bo), _ = consumers
        assert [card1, card2, card3] == sorted([card1, card2, card3])  # plan order is card order

        # Ann has 2 sessions (200 yuan), paid out to the salon by the bank
        await confirm_service(client, ann, await record_service(client, salon, card1, 2))
        run = await client.post("/v1/payout-runs", json={}, headers={**bearer(regulator), **key()})
        assert run.status_code == 201, run.text
        assert [i["amount"]["amount"] for i in run.json()["instructions"]] == [20000]
        await bank_executes_all(client, bank)
        # Bo has 1 session confirmed (100 yuan, not paid out yet) and 1 awaiting his confirmation
        await confirm_service(client, bo, await record_service(client, salon, card2, 1))
        held = await record_service(client, salon, card2, 1)
        assert card_amounts(await card_detail(client, bo, card2)) == {
            "status": "active",
            "units_remaining": 8,
            "value_remaining": 90000,  # the held 100 yuan is still on the card
            "protected": 90000,
            "unprotected": 0,
            "pending": 10000,
            "released": 10000,
            "refunded": 0,
        }
        # custody 3 000 - 200 paid out = 2 800 yuan = cards 800 + 900 + 1 000 + payable 100
        assert await account_totals(client, regulator, account) == {
            "custody_cash": 280000,
            "cards_protected": 270000,
            "cards_unprotected": 0,
            "merchant_payable": 10000,
            "refund_payable": 0,
            "payouts_in_flight": 0,
            "custody_difference": 0,
            "cards_active": 3,
            "cards_awaiting_payment": 0,
        }

        # the regulator orders the closure: frozen at once; Bo can no longer confirm the session still held …
        closure = await order_closure(client, regulator, salon.id, "licence revoked")
        assert (closure["mode"], closure["status"]) == ("ordered", "frozen")
        closure_id = closure["id"]
        late = await client.post(f"/v1/consumptions/{held['id']}/confirm", headers={**bearer(bo), **key()})
        assert late.status_code == 423 and late.json()["code"] == "account_frozen", late.text
        # … and the jobs void it right after the freeze: its value goes back on the card
        report = await run_jobs_once(sessionmaker, settings)
        assert report["closure_holds_released"] == 1
        voided = await client.get(f"/v1/consumptions/{held['id']}", headers=bearer(bo))
        assert voided.json()["status"] == "voided"
        assert card_amounts(await card_detail(client, bo, card2)) == {
            "status": "active",
            "units_remaining": 9,
            "value_remaining": 90000,
            "protected": 90000,
            "unprotected": 0,
            "pending": 0,
            "released": 10000,
            "refunded": 0,
        }

        # the plan: all of each card's unused value comes from custody (no unprotected part: q = 0 everywhere)
        planned = await compute_plan(client, regulator, closure_id)
        assert planned["progress"] == {"done": 0, "total": 3}
        assert money_totals(flat(planned["totals"])) == totals_of(unused=270000, from_custody=270000)
        assert [money_of_item(i) for i in await items(client, regulator, closure_id)] == [
            {"kind": "card", "decision": "refund", "status": "planned", "unused": u, "from_custody": u, "set_off": 0}
            | NOTHING
            for u in (80000, 90000, 100000)
        ]

        settled = await start_and_settle(client, regulator, closure_id, sessionmaker, settings)
        assert settled["status"] == "settled" and settled["progress"] == {"done": 3, "total": 3}
        assert money_totals(flat(settled["totals"])) == totals_of(unused=270000, from_custody=270000)
        listed = await items(client, regulator, closure_id)
        assert [i["status"] for i in listed] == ["done"] * 3 and all(i["refund_id"] for i in listed)
        refunds = sorted((i["amount"], i["kind"], i["refund_id"]) for i in await instructions(client, bank))
        assert refunds == sorted(
            (i["unused"], "refund", i["refund_id"]) for i in listed
        )  # 800, 900 and 1 000 yuan back along the original payments
        # refunds instructed (held); the salon's 100 yuan stays payable
        assert await account_totals(client, regulator, account) == {
            "custody_cash": 280000,
            "cards_protected": 0,
            "cards_unprotected": 0,
            "merchant_payable": 10000,
            "refund_payable": 270000,
            "payouts_in_flight": 0,
            "custody_difference": 0,
            "cards_active": 0,
            "cards_awaiting_payment": 0,
        }
        assert card_amounts(await card_detail(client, bo, card2)) == {
            "status": "closed_settled",
            "units_remaining": 9,
            "value_remaining": 0,
            "protected": 0,
            "unprotected": 0,
            "pending": 0,
            "released": 10000,
            "refunded": 90000,
        }

        # the bank pays the three refunds: custody keeps only the salon's 100 yuan
        assert len(await bank_executes_all(client, bank)) == 3
        assert await account_totals(client, regulator, account) == {
            "custody_cash": 10000,
            "cards_protected": 0,
            "cards_unprotected": 0,
            "merchant_payable": 10000,
            "refund_payable": 0,
            "payouts_in_flight": 0,
            "custody_difference": 0,
            "cards_active": 0,
            "cards_awaiting_payment": 0,
        }
        by_card = {i["card_id"]: i for i in listed}
        refund = await client.get(f"/v1/refunds/{by_card[card2]['refund_id']}", headers=bearer(bo))
        assert refund.status_code == 200, refund.text
        assert (refund.json()["status"], refund.json()["cause"], refund.json()["amount"]["amount"]) == (
            "paid",
            "closure",
            90000,
        )
        for (_, token), card, unused in (
            (consumers[0], card1, 80000),
            (consumers[1], card2, 90000),
            (consumers[2], card3, 100000),
        ):
            assert await statements(client, token) == [
                statement_of(closure_id, by_card[card], unused=unused, from_custody=unused)
            ]
        assert await fund_overview(client, regulator) == fund_before  # the fund was not needed

        # the regulator confirms: the unpaid payable (Bo's confirmed session, 100 yuan) is the surplus
        confirmed = await client.post(f"/v1/closures/{closure_id}/confirm", headers={**bearer(regulator), **key()})
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["closure"]["status"] == "confirmed"
        [surplus_id] = confirmed.json()["surplus_instructions"]
        [surplus] = await instructions(client, bank)
        assert (surplus["id"], surplus["kind"], surplus["amount"]) == (surplus_id, "payout", 10000)
        assert (await account_totals(client, regulator, account))["payouts_in_flight"] == 10000
        await bank_executes_all(client, bank)
        assert await account_totals(client, regulator, account) == {
            "custody_cash": 0,
            "cards_protected": 0,
            "cards_unprotected": 0,
            "merchant_payable": 0,
            "refund_payable": 0,
            "payouts_in_flight": 0,
            "custody_difference": 0,
            "cards_active": 0,
            "cards_awaiting_payment": 0,
        }
        merchant = await client.get(f"/v1/merchants/{salon.id}", headers=bearer(regulator))
        assert merchant.json()["status"] == "closed"
        escrow = await client.get(f"/v1/escrow-accounts/{account}", headers=bearer(regulator))
        assert escrow.json()["status"] == "closed"
        assert await fund_overview(client, regulator) == fund_before
        assert await fund_claims(client, regulator) == []
        await verified(engine)


class TestGymUnderFortyPercentCustodyVanishes:
    async def test_custody_set_off_and_fund_each_pay_their_part(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        engine,
        settings: Settings,
        sessionmaker: async_sessionmaker,
    ) -> None:
        regulator = await regulator_token(session)
        bank = await onboard_bank(client, regulator, "GYMB")
        fund_bank = await onboard_bank(client, regulator, "FNDB")
        await setup_fund(client, regulator, fund_bank, 1_000_000, "FUND-B-1")  # 10 000 yuan: more than enough
        gym = await onboard_ratio_merchant(client, regulator, "Old Oak Gym", "A", category="gym")
        account = await open_escrow_account(client, gym, bank)
        plan = await create_plan(client, gym, kind="sessions", sessions=10, price=1000 * YUAN)
        consumers = [await consumer_token(client, gym, f"1390002000{n}") for n in range(3)]
        cards = [await sell_and_pay(client, gym, bank, plan["id"], c) for c, _ in consumers]
        assert cards == sorted(cards)
        (_, dan), (_, eva), (_, fay) = consumers
        # each card: 1 000 yuan paid, 400 in custody (rating A: 40 %), 600 a claim on the gym
        # Dan uses 2 sessions (200 yuan): ⌈200·40 %⌉ = 80 leave custody for the gym, 120 discharge its obligation
        await confirm_service(client, dan, await record_service(client, gym, cards[0], 2))
        assert card_amounts(await card_detail(client, dan, cards[0])) == {
            "status": "active",
            "units_remaining": 8,
            "value_remaining": 80000,
            "protected": 32000,
            "unprotected": 48000,
            "pending": 0,
            "released": 20000,
            "refunded": 0,
        }
        assert await account_totals(client, regulator, account) == {
            "custody_cash": 120000,  # 3 x 400 yuan
            "cards_protected": 112000,  # 320 + 400 + 400
            "cards_unprotected": 168000,  # 480 + 600 + 600
            "merchant_payable": 8000,  # not paid out: the set-off pool
            "refund_payable": 0,
            "payouts_in_flight": 0,
            "custody_difference": 0,
            "cards_active": 3,
            "cards_awaiting_payment": 0,
        }

        closure = await order_closure(client, regulator, gym.id, "the gym vanished")
        closure_id = closure["id"]
        # per card: custody pays P = protected left; q = unused - P is left for set-off and the fund
        #   q = 48 000, 60 000, 60 000 (T = 168 000); set-off pool 8 000 shared cumulatively:
        #   ⌊8000·48000/168000⌋ = 2285; ⌊8000·108000/168000⌋ = 5142 → 2857; 8000 - 5142 = 2858
        # the fund pays the rest in full (within the cap, and it has the money):
        #   48000 - 2285 = 45715; 60000 - 2857 = 57143; 60000 - 2858 = 57142 (160 000 in all)
        planned = await compute_plan(client, regulator, closure_id)
        expected = [
            (80000, 32000, 2285, 45715),
            (100000, 40000, 2857, 57143),
            (100000, 40000, 2858, 57142),
        ]
        assert money_totals(flat(planned["totals"])) == totals_of(
            unused=280000, from_custody=112000, set_off=8000, fund_paid=160000
        )
        settled = await start_and_settle(client, regulator, closure_id, sessionmaker, settings)
        assert settled["status"] == "settled"
        assert money_totals(flat(settled["totals"])) == totals_of(
            unused=280000, from_custody=112000, set_off=8000, fund_paid=160000
        )
        listed = await items(client, regulator, closure_id)
        assert [i["card_id"] for i in listed] == cards
        assert [money_of_item(i) for i in listed] == [
            {"kind": "card", "decision": "refund", "status": "done"}
            | NOTHING
            | {"unused": u, "from_custody": p, "set_off": s, "fund_paid": f}
            for u, p, s, f in expected
        ]
        # the escrow account's bank returns custody + set-off: 34 285, 42 857, 42 858 (= the 1 200 yuan it holds)
        assert sorted((i["kind"], i["amount"]) for i in await instructions(client, bank)) == [
            ("refund", 34285),
            ("refund", 42857),
            ("refund", 42858),
        ]
        # the fund's bank pays the fund's shares
        fund_payouts = await instructions(client, fund_bank)
        assert sorted((i["kind"], i["book"], i["amount"]) for i in fund_payouts) == [
            ("fund_payout", "fund", 45715),
            ("fund_payout", "fund", 57142),
            ("fund_payout", "fund", 57143),
        ]
        assert await account_totals(client, regulator, account) == {
            "custody_cash": 120000,
            "cards_protected": 0,
            "cards_unprotected": 0,
            "merchant_payable": 0,  # all of it set off
            "refund_payable": 120000,
            "payouts_in_flight": 0,
            "custody_difference": 0,
            "cards_active": 0,
            "cards_awaiting_payment": 0,
        }
        assert await fund_overview(client, regulator) == {
            "cash": 1_000_000,
            "available": 840000,
            "contributions": 1_000_000,
            "payable": 160000,
            "claims_outstanding": 160000,
            "owed_to_consumers": 0,
            "owed_items": 0,
        }

        await bank_executes_all(client, bank)
        executed = await bank_executes_all(client, fund_bank)
        assert (await account_totals(client, regulator, account))["custody_cash"] == 0
        assert await fund_overview(client, regulator) == {
            "cash": 840000,
            "available": 840000,
            "contributions": 1_000_000,
            "payable": 0,
            "claims_outstanding": 160000,
            "owed_to_consumers": 0,
            "owed_items": 0,
        }
        # the fund took over the consumers' claims: exactly what it paid, to the fen
        claims = await fund_claims(client, regulator)
        assert claims == [
            {"escrow_account_id": account, "merchant_id": gym.id, "paid": 160000, "recovered": 0, "outstanding": 160000}
        ]
        assert claims[0]["paid"] == sum(i["amount"]["amount"] for i in executed)
        refund = (await client.get(f"/v1/refunds/{listed[0]['refund_id']}", headers=bearer(dan))).json()
        assert (refund["status"], refund["cause"]) == ("paid", "closure")
        # the fund paid 45,715 of it: that claim on the gym is the fund's now, the gym owes Dan nothing more
        assert [flat(refund)[k] for k in ("amount", "from_custody", "set_off", "from_fund", "merchant_owes")] == [
            80000,
            32000,
            2285,
            45715,
            0,
        ]
        for (_, token), item, (u, p, s, f) in zip(consumers, listed, expected, strict=True):
            assert await statements(client, token) == [
                statement_of(closure_id, item, unused=u, from_custody=p, set_off=s, fund_paid=f)
            ]
        assert card_amounts(await card_detail(client, eva, cards[1]))["refunded"] == 100000
        assert card_amounts(await card_detail(client, fay, cards[2]))["status"] == "closed_settled"

        confirmed = await client.post(f"/v1/closures/{closure_id}/confirm", headers={**bearer(regulator), **key()})
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["surplus_instructions"] == []  # the payable went to the consumers by set-off
        report = await verify_database(engine)
        assert {c.name: c.ok for c in report.checks}["fund_claims_mirror_subrogation"] is True
        assert report.ok, [c for c in report.checks if not c.ok]


class TestFundTooSmall:
    async def test_pro_rata_then_the_queue_is_paid_in_order_and_a_recovery_lowers_the_claim(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        engine,
        settings: Settings,
        sessionmaker: async_sessionmaker,
    ) -> None:
        regulator = await regulator_token(session)
        bank = await onboard_bank(client, regulator, "GYMC")
        fund_bank = await onboard_bank(client, regulator, "FNDC")
        await setup_fund(client, regulator, fund_bank, 100000, "FUND-C-1")  # 1 000 yuan only
        gym = await onboard_ratio_merchant(client, regulator, "Riverside Gym", "A", category="gym")
        account = await open_escrow_account(client, gym, bank)
        big = await create_plan(client, gym, kind="sessions", sessions=10, price=1000 * YUAN)
        small = await create_plan(client, gym, kind="sessions", sessions=10, price=700 * YUAN)
        consumers = [await consumer_token(client, gym, f"1390003000{n}") for n in range(3)]
        cards = [
            await sell_and_pay(client, gym, bank, plan["id"], c)
            for plan, (c, _) in zip((big, small, big), consumers, strict=True)
        ]
        assert cards == sorted(cards)
        # custody 400 + 280 + 400 yuan; outside custody 600 + 420 + 600
        assert await account_totals(client, regulator, account) == {
            "custody_cash": 108000,
            "cards_protected": 108000,
            "cards_unprotected": 162000,
            "merchant_payable": 0,
            "refund_payable": 0,
            "payouts_in_flight": 0,
            "custody_difference": 0,
            "cards_active": 3,
            "cards_awaiting_payment": 0,
        }

        closure = await order_closure(client, regulator, gym.id)
        closure_id = closure["id"]
        # no payable to set off: the fund is asked for q = 60 000 + 42 000 + 60 000 = 162 000 and has 100 000
        #   ⌊100000·60000/162000⌋ = ⌊37037.04⌋ = 37037
        #   ⌊100000·102000/162000⌋ = ⌊62962.96⌋ = 62962 → 62962 - 37037 = 25925
        #   100000 - 62962 = 37038
        # owed: 60000 - 37037 = 22963; 42000 - 25925 = 16075; 60000 - 37038 = 22962 (62 000 in all)
        settled = await start_and_settle(client, regulator, closure_id, sessionmaker, settings)
        assert settled["status"] == "settled"
        assert money_totals(flat(settled["totals"])) == totals_of(
            unused=270000, from_custody=108000, fund_paid=100000, fund_owed=62000
        )
        listed = await items(client, regulator, closure_id)
        assert [(i["unused"], i["from_custody"], i["fund_paid"], i["fund_owed"], i["unpaid"]) for i in listed] == [
            (100000, 40000, 37037, 22963, 0),
            (70000, 28000, 25925, 16075, 0),
            (100000, 40000, 37038, 22962, 0),
        ]
        assert sorted(i["amount"] for i in await instructions(client, fund_bank)) == [25925, 37037, 37038]
        assert await fund_overview(client, regulator) == {
            "cash": 100000,
            "available": 0,
            "contributions": 100000,
            "payable": 100000,
            "claims_outstanding": 100000,
            "owed_to_consumers": 62000,
            "owed_items": 3,
        }
        await bank_executes_all(client, bank)
        await bank_executes_all(client, fund_bank)
        assert (await account_totals(client, regulator, account))["custody_cash"] == 0
        assert (await fund_overview(client, regulator))["cash"] == 0

        # 300 yuan come in: the oldest owed item is paid in full (22 963), the second in part (7 037)
        paid_in = await contribute(client, regulator, 30000, "FUND-C-2", "government")
        assert paid_in["owed_payments_made"] == 2
        assert sorted(i["amount"] for i in await instructions(client, fund_bank)) == [7037, 22963]
        assert [(i["fund_owed"], i["fund_owed_paid"]) for i in await items(client, regulator, closure_id)] == [
            (22963, 22963),
            (16075, 7037),
            (22962, 0),
        ]
        assert await fund_overview(client, regulator) == {
            "cash": 30000,
            "available": 0,
            "contributions": 130000,
            "payable": 30000,
            "claims_outstanding": 130000,
            "owed_to_consumers": 32000,  # 16075 - 7037 = 9038, and 22962
            "owed_items": 2,
        }
        owed = [
            {"fund_paid": 37037, "fund_owed": 0, "fund_paid_later": 22963},
            {"fund_paid": 25925, "fund_owed": 9038, "fund_paid_later": 7037},
            {"fund_paid": 37038, "fund_owed": 22962, "fund_paid_later": 0},
        ]
        for (_, token), item, expected in zip(consumers, listed, owed, strict=True):
            [statement] = await statements(client, token)
            assert {k: statement[k] for k in expected} == expected
            assert statement["unused"] == item["unused"] and statement["from_custody"] == item["from_custody"]
        await bank_executes_all(client, fund_bank)

        # 500 yuan more: the rest of the queue (9 038 + 22 962 = 32 000) is paid, 180 yuan stay available
        paid_in = await contribute(client, regulator, 50000, "FUND-C-3", "guarantee_deposit")
        assert paid_in["owed_payments_made"] == 2
        assert sorted(i["amount"] for i in await instructions(client, fund_bank)) == [9038, 22962]
        await bank_executes_all(client, fund_bank)
        assert await fund_overview(client, regulator) == {
            "cash": 18000,
            "available": 18000,
            "contributions": 180000,
            "payable": 0,
            "claims_outstanding": 162000,
            "owed_to_consumers": 0,
            "owed_items": 0,
        }
        after = await closure_totals(client, regulator, closure_id)
        assert (after["fund_owed"], after["fund_owed_paid"]) == (62000, 62000)
        assert [(await statements(client, t))[0]["fund_owed"] for _, t in consumers] == [0, 0, 0]

        confirmed = await client.post(f"/v1/closures/{closure_id}/confirm", headers={**bearer(regulator), **key()})
        assert confirmed.status_code == 200, confirmed.text

        # the liquidator pays the fund 500 yuan back: its claim on the gym falls to 1 120 yuan
        recovery = await client.post(
            "/v1/fund/recoveries",
            json={
                "escrow_account_id": account,
                "amount": {"amount": 50000, "currency": "CNY"},
                "bank_transaction_id": "REC-C-1",
                "note": "liquidator, first distribution",
            },
            headers={**bearer(regulator), **key()},
        )
        assert recovery.status_code == 201, recovery.text
        assert recovery.json()["owed_payments_made"] == 0
        assert await fund_claims(client, regulator) == [
            {
                "escrow_account_id": account,
                "merchant_id": gym.id,
                "paid": 162000,
                "recovered": 50000,
                "outstanding": 112000,
            }
        ]
        assert await fund_overview(client, regulator) == {
            "cash": 68000,
            "available": 68000,
            "contributions": 180000,
            "payable": 0,
            "claims_outstanding": 112000,
            "owed_to_consumers": 0,
            "owed_items": 0,
        }
        await verified(engine)


class TestTrainingCentreTakenOver:
    async def test_accepted_card_moves_to_the_successor_the_others_are_refunded(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        engine,
        settings: Settings,
        sessionmaker: async_sessionmaker,
    ) -> None:
        regulator = await regulator_token(session)
        bank = await onboard_bank(client, regulator, "TRNB")
        other_bank = await onboard_bank(client, regulator, "SUCB")
        school = await onboard_merchant(client, regulator, "Abacus Academy", "training")
        account = await open_escrow_account(client, school, bank)
        successor = await onboard_merchant(client, regulator, "Bright Minds", "training")
        successor_account = await open_escrow_account(client, successor, other_bank)
        # training: at most 60 sessions, 5 000 yuan, 90 days
        plan = await create_plan(client, school, kind="sessions", sessions=20, price=2000 * YUAN, validity_days=90)
        consumers = [await consumer_token(client, school, f"1390004000{n}") for n in range(3)]
        cards = [await sell_and_pay(client, school, bank, plan["id"], c) for c, _ in consumers]
        assert cards == sorted(cards)
        (amy_id, amy), (_, ben), (_, cat) = consumers
        amy_card, ben_card, cat_card = cards
        # Amy took 5 lessons (500 yuan), Cat 2 (200 yuan); the school was paid its 700 yuan
        await confirm_service(client, amy, await record_service(client, school, amy_card, 5))
        await confirm_service(client, cat, await record_service(client, school, cat_card, 2))
        run = await client.post("/v1/payout-runs", json={}, headers={**bearer(school.token), **key()})
        assert [i["amount"]["amount"] for i in run.json()["instructions"]] == [70000]
        await bank_executes_all(client, bank)
        assert await account_totals(client, regulator, account) == {
            "custody_cash": 530000,  # 6 000 - 700
            "cards_protected": 530000,  # 1 500 + 2 000 + 1 800
            "cards_unprotected": 0,
            "merchant_payable": 0,
            "refund_payable": 0,
            "payouts_in_flight": 0,
            "custody_difference": 0,
            "cards_active": 3,
            "cards_awaiting_payment": 0,
        }

        closure = await order_closure(client, regulator, school.id, "the owner retires")
        closure_id = closure["id"]
        deadline = utcnow() + timedelta(seconds=2.5)
        proposed = await client.post(
            f"/v1/closures/{closure_id}/takeover",
            json={"successor_merchant_id": successor.id, "deadline": deadline.isoformat()},
            headers={**bearer(school.token), **key()},
        )
        assert proposed.status_code == 200, proposed.text
        assert proposed.json()["successor_merchant_id"] == successor.id
        for token, card, decision in ((amy, amy_card, "accept"), (ben, ben_card, "decline")):
            answered = await client.post(
                f"/v1/cards/{card}/takeover", json={"decision": decision}, headers={**bearer(token), **key()}
            )
            assert answered.status_code == 200, answered.text
            assert (answered.json()["card_id"], answered.json()["decision"]) == (card, decision)
        # Cat has not answered and the deadline has not passed: the settlement can't start yet
        early = await client.post(f"/v1/closures/{closure_id}/settlement", headers={**bearer(regulator), **key()})
        assert early.status_code == 409 and early.json()["code"] == "takeover_open", early.text
        assert (await closure_totals(client, regulator, closure_id))["status"] == "frozen"

        await asyncio.sleep(max(0.0, (deadline - utcnow()).total_seconds()) + 0.1)
        # Amy's card moves with its 1 500 yuan in custody; Ben (declined) and Cat (silent) are refunded
        settled = await start_and_settle(client, regulator, closure_id, sessionmaker, settings)
        assert settled["status"] == "settled"
        assert money_totals(flat(settled["totals"])) == totals_of(
            unused=530000, from_custody=380000, transferred=150000
        )
        listed = await items(client, regulator, closure_id)
        assert [(i["card_id"], i["decision"], i["unused"], i["from_custody"], i["transferred"]) for i in listed] == [
            (amy_card, "transfer", 150000, 0, 150000),
            (ben_card, "refund", 200000, 200000, 0),
            (cat_card, "refund", 180000, 180000, 0),
        ]
        new_card = listed[0]["new_card_id"]
        assert new_card is not None and listed[0]["refund_id"] is None
        assert sorted((i["kind"], i["amount"], i["target_card_id"]) for i in await instructions(client, bank)) == [
            ("refund", 180000, None),
            ("refund", 200000, None),
            ("transfer", 150000, new_card),
        ]
        old = await card_detail(client, amy, amy_card)
        assert card_amounts(old) == {
            "status": "transferred",
            "units_remaining": 15,
            "value_remaining": 0,
            "protected": 0,
            "unprotected": 0,
            "pending": 0,
            "released": 50000,
            "refunded": 0,
        }
        moved = await card_detail(client, amy, new_card)
        assert (moved["merchant_id"], moved["escrow_account_id"], moved["plan_id"]) == (
            successor.id,
            successor_account,
            plan["id"],
        )
        assert (moved["status"], moved["price"]["amount"], moved["units_total"]) == ("awaiting_payment", 150000, 15)
        assert await account_totals(client, regulator, successor_account) == {
            "custody_cash": 0,
            "cards_protected": 0,
            "cards_unprotected": 0,
            "merchant_payable": 0,
            "refund_payable": 0,
            "payouts_in_flight": 0,
            "custody_difference": 0,
            "cards_active": 0,
            "cards_awaiting_payment": 1,
        }

        # the bank carries out the refunds and the transfer: Amy's card goes live at Bright Minds
        await bank_executes_all(client, bank)
        assert (await account_totals(client, regulator, account))["custody_cash"] == 0
        assert await account_totals(client, regulator, successor_account) == {
            "custody_cash": 150000,
            "cards_protected": 150000,
            "cards_unprotected": 0,
            "merchant_payable": 0,
            "refund_payable": 0,
            "payouts_in_flight": 0,
            "custody_difference": 0,
            "cards_active": 1,
            "cards_awaiting_payment": 0,
        }
        assert card_amounts(await card_detail(client, successor.token, new_card)) == {
            "status": "active",
            "units_remaining": 15,
            "value_remaining": 150000,
            "protected": 150000,
            "unprotected": 0,
            "pending": 0,
            "released": 0,
            "refunded": 0,
        }
        assert (await client.get(f"/v1/cards/{amy_card}", headers=bearer(successor.token))).status_code == 404
        # the successor gives Amy a lesson: ⌊150 000·1/15⌋ = 10 000
        lesson = await record_service(client, successor, new_card, 1)
        assert lesson["value"]["amount"] == 10000
        await confirm_service(client, amy, lesson)
        assert card_amounts(await card_detail(client, amy, new_card)) == {
            "status": "active",
            "units_remaining": 14,
            "value_remaining": 140000,
            "protected": 140000,
            "unprotected": 0,
            "pending": 0,
            "released": 10000,
            "refunded": 0,
        }
        assert (await account_totals(client, regulator, successor_account))["merchant_payable"] == 10000

        by_card = {i["card_id"]: i for i in listed}
        assert await statements(client, amy) == [
            statement_of(
                closure_id,
                by_card[amy_card],
                decision="transfer",
                new_card_id=new_card,
                unused=150000,
                transferred=150000,
            )
        ]
        assert await statements(client, ben) == [
            statement_of(closure_id, by_card[ben_card], unused=200000, from_custody=200000)
        ]
        assert await statements(client, cat) == [
            statement_of(closure_id, by_card[cat_card], unused=180000, from_custody=180000)
        ]
        assert (await client.get(f"/v1/closures/{closure_id}", headers=bearer(successor.token))).status_code == 200
        # the successor sees the closure it takes part in, not the other consumers' items
        hidden = await client.get(f"/v1/closures/{closure_id}/items", headers=bearer(successor.token))
        assert hidden.status_code == 404 and hidden.json()["code"] == "not_found"
        confirmed = await client.post(f"/v1/closures/{closure_id}/confirm", headers={**bearer(regulator), **key()})
        assert confirmed.status_code == 200 and confirmed.json()["surplus_instructions"] == [], confirmed.text
        assert amy_id == moved["consumer_id"]
        await verified(engine)


class TestAnnouncedClosure:
    async def test_sales_stop_at_once_services_go_on_until_the_date_then_the_jobs_freeze_it(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        engine,
        settings: Settings,
        sessionmaker: async_sessionmaker,
    ) -> None:
        regulator = await regulator_token(session)
        bank = await onboard_bank(client, regulator, "ANNB")
        gym = await onboard_merchant(client, regulator, "Harbour Gym")
        account = await open_escrow_account(client, gym, bank)
        plan = await create_plan(client, gym, kind="sessions", sessions=10, price=1000 * YUAN)
        eve_id, eve = await consumer_token(client, gym, "13900050000")
        card = await sell_and_pay(client, gym, bank, plan["id"], eve_id)

        today = business_date(utcnow(), settings.business_timezone)
        effective_on = today + timedelta(days=30)
        announced = await client.post(
            "/v1/closures",
            json={"effective_on": effective_on.isoformat(), "reason": "the lease ends"},
            headers={**bearer(gym.token), **key()},
        )
        assert announced.status_code == 201, announced.text
        closure = announced.json()
        assert (closure["merchant_id"], closure["mode"], closure["status"], closure["effective_on"]) == (
            gym.id,
            "announced",
            "announced",
            effective_on.isoformat(),
        )
        assert closure["frozen_at"] is None
        # no more sales...
        sale = await client.post(
            "/v1/cards", json={"plan_id": plan["id"], "consumer_id": eve_id}, headers={**bearer(gym.token), **key()}
        )
        assert sale.status_code == 409 and sale.json()["code"] == "sales_stopped", sale.text
        # ...but Eve's sessions go on: 1 session, 100 yuan released
        await confirm_service(client, eve, await record_service(client, gym, card, 1))
        assert await account_totals(client, regulator, account) == {
            "custody_cash": 100000,
            "cards_protected": 90000,
            "cards_unprotected": 0,
            "merchant_payable": 10000,
            "refund_payable": 0,
            "payouts_in_flight": 0,
            "custody_difference": 0,
            "cards_active": 1,
            "cards_awaiting_payment": 0,
        }

        # the jobs before the date leave it alone (today, and the evening before the date)
        shanghai = ZoneInfo(settings.business_timezone)
        for now in (utcnow(), datetime.combine(effective_on - timedelta(days=1), time(23, 59), shanghai)):
            report = await run_jobs_once(sessionmaker, settings, now=now.astimezone(UTC))
            assert report["closures_frozen"] == 0
            assert (await closure_totals(client, regulator, closure["id"]))["status"] == "announced"
        again = await record_service(client, gym, card, 1)
        await confirm_service(client, eve, again)

        # just after midnight on the date, the jobs freeze it
        report = await run_jobs_once(
            sessionmaker, settings, now=datetime.combine(effective_on, time(0, 5), shanghai).astimezone(UTC)
        )
        assert report["closures_frozen"] == 1
        frozen = await client.get(f"/v1/closures/{closure['id']}", headers=bearer(gym.token))
        assert frozen.json()["status"] == "frozen" and frozen.json()["frozen_at"] is not None
        escrow = await client.get(f"/v1/escrow-accounts/{account}", headers=bearer(regulator))
        assert escrow.json()["status"] == "frozen"
        late = await client.post(
            f"/v1/cards/{card}/consumptions", json={"sessions": 1}, headers={**bearer(gym.token), **key()}
        )
        assert late.status_code == 409 and late.json()["code"] == "card_not_active", late.text
        assert card_amounts(await card_detail(client, eve, card)) == {
            "status": "active",
            "units_remaining": 8,
            "value_remaining": 80000,
            "protected": 80000,
            "unprotected": 0,
            "pending": 0,
            "released": 20000,
            "refunded": 0,
        }

        # settled like any other: Eve's 800 yuan back from custody, the gym's 200 yuan are its surplus
        settled = await start_and_settle(client, regulator, closure["id"], sessionmaker, settings)
        assert money_totals(flat(settled["totals"])) == totals_of(unused=80000, from_custody=80000)
        assert sorted((i["kind"], i["amount"]) for i in await instructions(client, bank)) == [("refund", 80000)]
        await bank_executes_all(client, bank)
        confirmed = await client.post(f"/v1/closures/{closure['id']}/confirm", headers={**bearer(regulator), **key()})
        assert confirmed.status_code == 200, confirmed.text
        assert [(i["kind"], i["amount"]) for i in await instructions(client, bank)] == [("payout", 20000)]
        await bank_executes_all(client, bank)
        assert (await account_totals(client, regulator, account))["custody_cash"] == 0
        await verified(engine)
