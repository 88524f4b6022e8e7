"""Closure items as an integrator links them and a consumer reads them (issue #12, items 2 and 3).

- Each plan line has an id (items and plan.csv); it is the ``closure_item_id`` of the instructions that pay it,
  and stays the same when the settlement's start computes the plan again (the fund's share is fixed then); a line
  whose figures changed says so (``revised_at``).
- A consumer's closure refund is ``paid`` only when every part of it was executed — custody's refund and the
  fund's payout alike — and ``merchant_owes`` leaves out what the fund pays (that claim is the fund's)."""

import csv
import io

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from escrow.config import Settings
from tests.closing import (
    bank_executes_all,
    compute_plan,
    contribute,
    fund_claims,
    instructions,
    items,
    order_closure,
    setup_fund,
    start_and_settle,
    statements,
)
from tests.parties import (
    bearer,
    consumer_token,
    create_plan,
    onboard_bank,
    onboard_ratio_merchant,
    open_escrow_account,
    regulator_token,
    sell_and_pay,
)

YUAN = 100


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"payout_hour": None})


class TestAFortyPercentGymClosesWithTheFundShortThenTopped:
    async def test_ids_link_instructions_to_the_plan_shown_and_refunds_are_paid_when_the_fund_paid(
        self, client: httpx.AsyncClient, session: AsyncSession, sessionmaker: async_sessionmaker, settings: Settings
    ) -> None:
        regulator = await regulator_token(session)
        bank = await onboard_bank(client, regulator, "CIPB")
        fund_bank = await onboard_bank(client, regulator, "CIPF")
        await setup_fund(client, regulator, fund_bank, 30000, "FUND-CIP-1")
        gym = await onboard_ratio_merchant(client, regulator, "Lakeside Gym", "A", category="gym")
        await open_escrow_account(client, gym, bank)
        (gao, gao_token), (hu, hu_token) = [await consumer_token(client, gym, f"1390001810{n}") for n in range(2)]
        gao_card = await sell_and_pay(
            client,
            gym,
            bank,
            (await create_plan(client, gym, kind="sessions", sessions=10, price=1000 * YUAN))["id"],
            gao,
        )
        hu_card = await sell_and_pay(
            client,
            gym,
            bank,
            (await create_plan(client, gym, kind="sessions", sessions=10, price=700 * YUAN))["id"],
            hu,
        )
        closure_id = (await order_closure(client, regulator, gym.id))["id"]

        # The plan shown: 40 % from custody; the fund (300 yuan) is short of the 600 + 420 yuan asked of it:
        #   ⌊30000·60000/102000⌋ = 17 647 and 30 000 - 17 647 = 12 353; the rest is owed
        shown = await compute_plan(client, regulator, closure_id)
        plan = await items(client, regulator, closure_id)
        assert [(i["card_id"], i["from_custody"], i["fund_paid"], i["fund_owed"]) for i in plan] == sorted(
            [(gao_card, 40000, 17647, 42353), (hu_card, 28000, 12353, 29647)]
        )
        assert all(i["revised_at"] is None and i["paid_at"] is None for i in plan)
        ids = {i["card_id"]: i["id"] for i in plan}
        exported = list(csv.DictReader(io.StringIO((await client.get(
            f"/v1/closures/{closure_id}/plan.csv", headers=bearer(regulator)
        )).text)))  # fmt: skip
        assert {row["card_id"]: int(row["id"]) for row in exported} == ids

        # 1,000 yuan come into the fund before the start: the start fixes the fund's share again, now in full
        await contribute(client, regulator, 100000, "FUND-CIP-2")
        settled = await start_and_settle(client, regulator, closure_id, sessionmaker, settings)
        assert settled["status"] == "settled" and settled["planned_at"] > shown["planned_at"]
        fixed = await items(client, regulator, closure_id)
        assert {i["card_id"]: i["id"] for i in fixed} == ids  # the lines of the plan shown, same ids
        assert {i["card_id"]: (i["fund_paid"], i["fund_owed"]) for i in fixed} == {
            gao_card: (60000, 0),
            hu_card: (42000, 0),
        }
        assert all(i["revised_at"] == settled["planned_at"] for i in fixed)  # both lines changed: said so

        # every instruction names a line one can list
        sent = await instructions(client, bank) + await instructions(client, fund_bank)
        assert sorted((i["kind"], i["closure_item_id"], i["amount"]) for i in sent) == sorted(
            [
                ("refund", ids[gao_card], 40000),
                ("refund", ids[hu_card], 28000),
                ("fund_payout", ids[gao_card], 60000),
                ("fund_payout", ids[hu_card], 42000),
            ]
        )

        # custody's bank pays first: Gao has 400 of 1,000 yuan, the fund's 600 are still to come
        await bank_executes_all(client, bank)
        by_card = {i["card_id"]: i for i in await items(client, regulator, closure_id)}
        refund = (await client.get(f"/v1/refunds/{by_card[gao_card]['refund_id']}", headers=bearer(gao_token))).json()
        assert refund["status"] == "instructed" and refund["paid_at"] is None
        amounts = {k: refund[k]["amount"] for k in ("amount", "from_custody", "set_off", "from_fund", "merchant_owes")}
        assert amounts == {
            "amount": 100000,
            "from_custody": 40000,
            "set_off": 0,
            "from_fund": 60000,
            "merchant_owes": 0,
        }
        [statement] = await statements(client, gao_token)
        assert (statement["closure_item_id"], statement["paid"], statement["unpaid_claim"]) == (ids[gao_card], False, 0)
        assert by_card[gao_card]["paid_at"] is None

        # the fund's bank pays: now every part is executed
        await bank_executes_all(client, fund_bank)
        for token, card in ((gao_token, gao_card), (hu_token, hu_card)):
            line = {i["card_id"]: i for i in await items(client, regulator, closure_id)}[card]
            refund = (await client.get(f"/v1/refunds/{line['refund_id']}", headers=bearer(token))).json()
            assert refund["status"] == "paid" and refund["paid_at"] is not None
            assert line["paid_at"] is not None
            [statement] = await statements(client, token)
            assert statement["paid"] is True
        # the fund holds the consumers' claims on the gym: what it paid, to the fen
        [claim] = await fund_claims(client, regulator)
        assert (claim["paid"], claim["outstanding"]) == (102000, 102000)
