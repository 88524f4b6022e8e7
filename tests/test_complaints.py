"""Complaints (issue #14 §3) through the API: filing, the 24-hour answer clock, mediation outcomes, and who sees what.

Time is moved by a test-only means: the complaint's ``answer_due_at`` is written into the past directly in the
database (what 24 hours passing would leave), never by sleeping; the service itself reads the clock of the request.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.config import Settings
from tests.parties import (
    Merchant,
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


@dataclass
class Parties:
    regulator: str
    merchant: Merchant
    other_merchant: Merchant
    consumer: str
    other_consumer: str
    card_id: str
    service_id: str


@pytest.fixture
async def parties(client: httpx.AsyncClient, session: AsyncSession) -> Parties:
    regulator = await regulator_token(session)
    bank = await onboard_bank(client, regulator, "CMPL")
    merchant = await onboard_merchant(client, regulator, "晨光健身")
    other_merchant = await onboard_merchant(client, regulator, "Other Gym")
    await open_escrow_account(client, merchant, bank)
    await open_escrow_account(client, other_merchant, bank)
    plan = await create_plan(client, merchant, kind="sessions", price=100_000, sessions=10)
    other_plan = await create_plan(client, other_merchant, kind="sessions", price=100_000, sessions=10)
    consumer_id, consumer = await consumer_token(client, merchant, "13900000071")
    other_id, other_consumer = await consumer_token(client, other_merchant, "13900000072")
    card_id = await sell_and_pay(client, merchant, bank, plan["id"], consumer_id)
    await sell_and_pay(client, other_merchant, bank, other_plan["id"], other_id)
    recorded = await client.post(
        f"/v1/cards/{card_id}/consumptions", json={"sessions": 1}, headers={**bearer(merchant.token), **key()}
    )
    assert recorded.status_code == 201, recorded.text
    return Parties(regulator, merchant, other_merchant, consumer, other_consumer, card_id, recorded.json()["id"])


async def file(client: httpx.AsyncClient, token: str, **body) -> httpx.Response:
    return await client.post("/v1/complaints", json=body, headers={**bearer(token), **key()})


async def filed(client: httpx.AsyncClient, p: Parties, **extra) -> dict:
    body = {"merchant_id": p.merchant.id, "category": "service_not_delivered", "text": "课程被取消", **extra}
    response = await file(client, p.consumer, **body)
    assert response.status_code == 201, response.text
    return response.json()


async def answer(client: httpx.AsyncClient, token: str, complaint_id: str, text_: str = "已安排补课") -> httpx.Response:
    return await client.post(
        f"/v1/complaints/{complaint_id}/answer", json={"answer": text_}, headers={**bearer(token), **key()}
    )


async def mediate(client: httpx.AsyncClient, token: str, complaint_id: str, outcome: str) -> httpx.Response:
    return await client.post(
        f"/v1/complaints/{complaint_id}/mediate",
        json={"outcome": outcome, "note": "调解结果"},
        headers={**bearer(token), **key()},
    )


async def move_deadline_into_the_past(session: AsyncSession, complaint_id: str, hours: float = 1) -> None:
    """The test-only clock: as if ``hours`` past the complaint's answer deadline had elapsed."""
    await session.execute(
        text(
            "UPDATE complaints SET filed_at = filed_at - make_interval(secs => :s),"
            " answer_due_at = answer_due_at - make_interval(secs => :s) WHERE id = :id"
        ),
        {"s": (24 + hours) * 3600, "id": complaint_id},
    )
    await session.commit()


async def overdue_ids(client: httpx.AsyncClient, token: str) -> set[str]:
    response = await client.get("/v1/complaints", params={"overdue": "true"}, headers=bearer(token))
    assert response.status_code == 200, response.text
    return {c["id"] for c in response.json()["items"]}


class TestFiling:
    async def test_a_complaint_is_due_an_answer_within_24_hours(self, client: httpx.AsyncClient, parties) -> None:
        before = datetime.now(UTC)
        complaint = await filed(client, parties, card_id=parties.card_id)
        filed_at = datetime.fromisoformat(complaint["filed_at"])
        assert before <= filed_at <= datetime.now(UTC)
        assert datetime.fromisoformat(complaint["answer_due_at"]) - filed_at == timedelta(hours=24)
        assert complaint["state"] == "filed" and complaint["overdue"] is False and complaint["outcome"] is None
        assert complaint["card_id"] == parties.card_id and complaint["consumption_id"] is None

    async def test_about_a_service_the_card_is_taken_from_it(self, client: httpx.AsyncClient, parties) -> None:
        complaint = await filed(client, parties, consumption_id=parties.service_id, category="other")
        assert complaint["card_id"] == parties.card_id and complaint["consumption_id"] == parties.service_id

    async def test_only_about_a_merchant_the_consumer_has_a_card_with(self, client: httpx.AsyncClient, parties) -> None:
        response = await file(
            client, parties.consumer, merchant_id=parties.other_merchant.id, category="other", text="never a customer"
        )
        assert response.status_code == 422 and response.json()["errors"][0]["rule"] == "card_holder", response.text

    async def test_another_consumers_card_or_service_cannot_be_named(self, client: httpx.AsyncClient, parties) -> None:
        base = {"merchant_id": parties.merchant.id, "category": "other", "text": "x"}
        # the other consumer has no card at this merchant at all
        assert (await file(client, parties.other_consumer, **base)).status_code == 422
        wrong_card = await file(client, parties.consumer, **base, card_id="card_01JX0000000000000000000000")
        assert wrong_card.json()["errors"][0]["rule"] == "own_card", wrong_card.text
        wrong_service = await file(client, parties.consumer, **base, consumption_id="csm_01JX000000000000000000000")
        assert wrong_service.json()["errors"][0]["rule"] == "own_service", wrong_service.text

    @pytest.mark.parametrize(
        "body",
        [
            {"category": "bad_service", "text": "x"},
            {"category": "other", "text": ""},
            {"category": "other", "text": "x" * 2001},
            {"category": "other", "text": "a\u0000b"},
            {"category": "other", "text": "x", "merchant_id": "../etc"},
        ],
    )
    async def test_bad_bodies_are_refused(self, client: httpx.AsyncClient, parties, body: dict) -> None:
        response = await file(client, parties.consumer, **{"merchant_id": parties.merchant.id, **body})
        assert response.status_code == 422 and response.json()["errors"][0]["rule"], response.text

    async def test_the_answer_hours_are_a_setting(self, settings: Settings, client: httpx.AsyncClient, parties) -> None:
        from tests.parties import app_of

        app_of(client).state.settings = settings.model_copy(update={"complaint_answer_hours": 48})
        complaint = await filed(client, parties)
        due = datetime.fromisoformat(complaint["answer_due_at"]) - datetime.fromisoformat(complaint["filed_at"])
        assert due == timedelta(hours=48)


class TestTheAnswerClock:
    async def test_answered_in_time_is_never_overdue(
        self, client: httpx.AsyncClient, session: AsyncSession, parties
    ) -> None:
        complaint = await filed(client, parties)
        answered = await answer(client, parties.merchant.token, complaint["id"])
        assert answered.status_code == 200, answered.text
        body = answered.json()
        assert body["state"] == "answered" and body["answer"] == "已安排补课" and body["answered_late"] is False
        await move_deadline_into_the_past(session, complaint["id"])
        assert complaint["id"] not in await overdue_ids(client, parties.regulator)

    async def test_unanswered_past_the_deadline_is_listed_and_flagged(
        self, client: httpx.AsyncClient, session: AsyncSession, parties
    ) -> None:
        late, fresh = await filed(client, parties), await filed(client, parties)
        assert await overdue_ids(client, parties.regulator) == set()
        await move_deadline_into_the_past(session, late["id"], hours=0.01)
        assert await overdue_ids(client, parties.regulator) == {late["id"]}
        assert await overdue_ids(client, parties.merchant.token) == {late["id"]}  # the merchant sees it, too
        assert await overdue_ids(client, parties.consumer) == {late["id"]}
        assert await overdue_ids(client, parties.other_merchant.token) == set()
        shown = await client.get(f"/v1/complaints/{late['id']}", headers=bearer(parties.consumer))
        assert shown.json()["overdue"] is True
        assert (await client.get(f"/v1/complaints/{fresh['id']}", headers=bearer(parties.consumer))).json()[
            "overdue"
        ] is False
        # answered late: off the overdue list, and shown as late
        answered = await answer(client, parties.merchant.token, late["id"])
        assert answered.json()["answered_late"] is True and answered.json()["overdue"] is False
        assert await overdue_ids(client, parties.regulator) == set()

    async def test_mediated_without_an_answer_is_no_longer_overdue(
        self, client: httpx.AsyncClient, session: AsyncSession, parties
    ) -> None:
        complaint = await filed(client, parties)
        await move_deadline_into_the_past(session, complaint["id"])
        assert (await mediate(client, parties.regulator, complaint["id"], "upheld")).status_code == 200
        assert await overdue_ids(client, parties.regulator) == set()


class TestMediation:
    @pytest.mark.parametrize("outcome", ["upheld", "partly_upheld", "rejected"])
    async def test_each_outcome_after_the_answer(self, client: httpx.AsyncClient, parties, outcome: str) -> None:
        complaint = await filed(client, parties)
        assert (await answer(client, parties.merchant.token, complaint["id"])).status_code == 200
        mediated = await mediate(client, parties.regulator, complaint["id"], outcome)
        assert mediated.status_code == 200, mediated.text
        body = mediated.json()
        assert body["state"] == "mediated" and body["outcome"] == outcome and body["mediation_note"] == "调解结果"
        # the consumer sees every step
        seen = (await client.get(f"/v1/complaints/{complaint['id']}", headers=bearer(parties.consumer))).json()
        assert seen["answer"] == "已安排补课" and seen["outcome"] == outcome and seen["mediated_at"]

    async def test_mediated_directly_then_no_answer_and_no_second_mediation(
        self, client: httpx.AsyncClient, parties
    ) -> None:
        complaint = await filed(client, parties)
        assert (await mediate(client, parties.regulator, complaint["id"], "partly_upheld")).status_code == 200
        again = await mediate(client, parties.regulator, complaint["id"], "rejected")
        assert again.status_code == 409 and again.json()["code"] == "invalid_state"
        late_answer = await answer(client, parties.merchant.token, complaint["id"])
        assert late_answer.status_code == 409 and late_answer.json()["code"] == "invalid_state"

    async def test_a_second_answer_is_refused(self, client: httpx.AsyncClient, parties) -> None:
        complaint = await filed(client, parties)
        assert (await answer(client, parties.merchant.token, complaint["id"])).status_code == 200
        assert (await answer(client, parties.merchant.token, complaint["id"], "again")).status_code == 409

    async def test_a_bad_outcome_is_refused(self, client: httpx.AsyncClient, parties) -> None:
        complaint = await filed(client, parties)
        response = await mediate(client, parties.regulator, complaint["id"], "dismissed")
        assert response.status_code == 422, response.text


class TestAccess:
    async def test_each_party_sees_only_its_own(self, client: httpx.AsyncClient, session: AsyncSession, parties):
        mine = await filed(client, parties)
        # the other consumer complains about the other merchant
        theirs = await file(
            client,
            parties.other_consumer,
            merchant_id=parties.other_merchant.id,
            category="refund_refused",
            text="退款被拒",
        )
        assert theirs.status_code == 201, theirs.text
        theirs_id = theirs.json()["id"]

        async def listed(token: str) -> set[str]:
            response = await client.get("/v1/complaints", headers=bearer(token))
            assert response.status_code == 200, response.text
            return {c["id"] for c in response.json()["items"]}

        assert await listed(parties.consumer) == {mine["id"]}
        assert await listed(parties.other_consumer) == {theirs_id}
        assert await listed(parties.merchant.token) == {mine["id"]}
        assert await listed(parties.other_merchant.token) == {theirs_id}
        assert await listed(parties.regulator) == {mine["id"], theirs_id}
        for token in (parties.other_consumer, parties.other_merchant.token):
            response = await client.get(f"/v1/complaints/{mine['id']}", headers=bearer(token))
            assert response.status_code == 404 and "课程被取消" not in response.text
        # another merchant can't answer it
        assert (await answer(client, parties.other_merchant.token, mine["id"])).status_code == 404
        # roles that don't take part
        assert (await answer(client, parties.consumer, mine["id"])).status_code == 403
        assert (await mediate(client, parties.merchant.token, mine["id"], "rejected")).status_code == 403
        assert (
            await file(client, parties.regulator, merchant_id=parties.merchant.id, category="other", text="x")
        ).status_code == 403

    async def test_the_list_pages_and_filters(self, client: httpx.AsyncClient, parties) -> None:
        ids = [(await filed(client, parties))["id"] for _ in range(3)]
        await mediate(client, parties.regulator, ids[1], "rejected")
        first = await client.get("/v1/complaints", params={"limit": 2}, headers=bearer(parties.regulator))
        assert [c["id"] for c in first.json()["items"]] == ids[:2] and first.json()["next_cursor"]
        rest = await client.get(
            "/v1/complaints",
            params={"limit": 2, "cursor": first.json()["next_cursor"]},
            headers=bearer(parties.regulator),
        )
        assert [c["id"] for c in rest.json()["items"]] == ids[2:] and rest.json()["next_cursor"] is None
        by_state = await client.get("/v1/complaints", params={"state": "mediated"}, headers=bearer(parties.consumer))
        assert [c["id"] for c in by_state.json()["items"]] == [ids[1]]
        by_merchant = await client.get(
            "/v1/complaints", params={"merchant_id": parties.other_merchant.id}, headers=bearer(parties.regulator)
        )
        assert by_merchant.json()["items"] == []
