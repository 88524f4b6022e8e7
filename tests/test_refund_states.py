"""A refund's states as the API shows them, and as the README and the OpenAPI document say (issue #12, item 7).

Domain.md §3: requested → approved → instructed → paid. Approval and the bank instruction are one transaction,
so an approved refund is answered as ``instructed`` (with ``approved_at``); ``approved`` is seen only while a
refund waits for a new instruction after its instruction failed."""

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from escrow.config import Settings
from escrow.jobs import run_jobs_once
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
from tests.test_readme import README


class TestAMerchantCausedRefund:
    async def test_requested_then_instructed_on_approval_approved_after_a_failure_then_paid(
        self, client: httpx.AsyncClient, session: AsyncSession, engine, settings: Settings
    ) -> None:
        regulator = await regulator_token(session)
        bank = await onboard_bank(client, regulator, "RSTB")
        gym = await onboard_merchant(client, regulator, "State Gym")
        await open_escrow_account(client, gym, bank)
        consumer_id, consumer = await consumer_token(client, gym, "13900001701")
        plan = await create_plan(client, gym, kind="sessions", sessions=10, price=1000 * 100)
        card_id = await sell_and_pay(client, gym, bank, plan["id"], consumer_id)
        await session.execute(text("UPDATE cards SET paid_at = paid_at - interval '8 days'"))  # past cooling-off
        await session.commit()
        quote = (await client.get(f"/v1/cards/{card_id}/refund-quote?cause=merchant", headers=bearer(consumer))).json()
        requested = await client.post(
            f"/v1/cards/{card_id}/refunds",
            json={"cause": "merchant", "expected_amount": quote["amount"]},
            headers={**bearer(consumer), **key()},
        )
        assert requested.status_code == 201, requested.text
        assert (requested.json()["status"], requested.json()["approved_at"]) == ("requested", None)
        refund_id = requested.json()["id"]

        approved = await client.post(f"/v1/refunds/{refund_id}/approve", headers={**bearer(gym.token), **key()})
        assert approved.status_code == 200, approved.text
        assert approved.json()["status"] == "instructed" and approved.json()["approved_at"] is not None
        [instruction] = (await client.get("/v1/instructions?status=pending", auth=bank.auth)).json()["items"]
        assert (instruction["refund_id"], instruction["amount"]["amount"]) == (refund_id, 100000)

        await client.post(
            f"/v1/instructions/{instruction['id']}/failed",
            json={"reason": "account closed"},
            headers=key(),
            auth=bank.auth,
        )
        refund = (await client.get(f"/v1/refunds/{refund_id}", headers=bearer(consumer))).json()
        assert refund["status"] == "approved"  # approved, waiting to be instructed again
        assert (await run_jobs_once(async_sessionmaker(engine, expire_on_commit=False), settings))[
            "refunds_reinstructed"
        ] == 1
        assert (await client.get(f"/v1/refunds/{refund_id}", headers=bearer(consumer))).json()["status"] == "instructed"
        [again] = (await client.get("/v1/instructions?status=pending", auth=bank.auth)).json()["items"]
        executed = await client.post(
            f"/v1/instructions/{again['id']}/executed",
            json={"bank_transaction_id": "RST-1"},
            headers=key(),
            auth=bank.auth,
        )
        assert executed.status_code == 200, executed.text
        assert (await client.get(f"/v1/refunds/{refund_id}", headers=bearer(consumer))).json()["status"] == "paid"


class TestTheDocumentsSayWhatTheApiDoes:
    async def test_readme_and_openapi_describe_instructed_on_approval(self, client: httpx.AsyncClient) -> None:
        assert "requested → approved → instructed → paid" in README
        assert "answers `201` with `instructed`" in README
        schema = (await client.get("/openapi.json")).json()["components"]["schemas"]["RefundOut"]
        assert "answered as instructed" in schema["properties"]["status"]["description"]
