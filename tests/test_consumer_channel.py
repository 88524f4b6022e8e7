"""Identity the merchant can't hold (issue #13 §1): each attack is refused.

A merchant can't obtain a consumer's code or token; registering a phone tells a merchant nothing of whether it is
known elsewhere; a merchant that never sold to a consumer sees none of its cards; the regulator can't obtain
another party's new secret; audit records name the token that acted; code requests are limited in PostgreSQL.
"""

import asyncio
import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from litestar import Litestar
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.app import create_app
from escrow.config import Settings
from escrow.models import Consumer, ConsumerCode, SmsOutbox
from tests.parties import (
    bearer,
    consumer_token,
    create_plan,
    key,
    last_sms_id,
    onboard_bank,
    onboard_merchant,
    open_escrow_account,
    regulator_token,
    sell_and_pay,
    send_code,
    sign_in,
    sms_code_for,
)


@pytest.fixture
async def regulator(session: AsyncSession) -> str:
    return await regulator_token(session)


def register(client: httpx.AsyncClient, token: str, phone: str):  # type: ignore[no-untyped-def]
    return client.post("/v1/consumers", json={"phone": phone}, headers={**bearer(token), **key()})


class TestCodesGoOnlyToThePhone:
    async def test_the_merchant_route_that_issued_codes_is_gone(
        self, client: httpx.AsyncClient, regulator: str
    ) -> None:
        gym = await onboard_merchant(client, regulator, "No Code Gym")
        consumer_id = (await register(client, gym.token, "13812340001")).json()["id"]
        for token in (gym.token, regulator):
            issued = await client.post(f"/v1/consumers/{consumer_id}/codes", headers={**bearer(token), **key()})
            assert issued.status_code in (404, 405) and not re.search(r"\b\d{6}\b", issued.text)

    async def test_a_code_asked_by_a_merchant_goes_to_the_phone_not_the_merchant(
        self, client: httpx.AsyncClient, session: AsyncSession, regulator: str
    ) -> None:
        gym = await onboard_merchant(client, regulator, "Curious Gym")
        await register(client, gym.token, "13812340002")
        asked = await send_code(client, "13812340002", headers=bearer(gym.token))
        code = await sms_code_for(session, "13812340002")
        assert asked.json() == {"sent_to": "138****0002", "expires_in_seconds": 600}
        assert code not in asked.text
        # the merchant can only guess, and each guess burns one of the code's attempts
        guessed = await client.post(
            "/v1/consumer-tokens",
            json={"phone": "13812340002", "code": f"{(int(code) + 1) % 10**6:06d}"},
            headers=bearer(gym.token),
        )
        assert guessed.status_code == 401 and guessed.json()["code"] == "invalid_code"
        # the phone's holder signs in with what reached the phone
        signed_in = await client.post("/v1/consumer-tokens", json={"phone": "13812340002", "code": code})
        assert signed_in.status_code == 201

    async def test_the_answer_is_the_same_for_a_known_and_an_unknown_phone(
        self, client: httpx.AsyncClient, session: AsyncSession, regulator: str
    ) -> None:
        gym = await onboard_merchant(client, regulator, "Known Gym")
        await consumer_token(client, gym, "13812340003")
        known = await send_code(client, "13812340003")
        unknown = await send_code(client, "13812340004")
        assert (known.status_code, set(known.json())) == (unknown.status_code, set(unknown.json()))
        assert known.json()["expires_in_seconds"] == unknown.json()["expires_in_seconds"]
        assert set(known.headers) == set(unknown.headers)
        # both phones got a code; the unknown one is no consumer until it signs in
        phones = await session.scalar(select(func.count(func.distinct(SmsOutbox.phone_hash))))
        assert phones == 2
        assert await session.scalar(select(func.count()).select_from(Consumer)) == 1
        await sms_code_for(session, "13812340004")
        consumer_id, _ = await sign_in(client, "13812340004")
        assert await session.scalar(select(func.count()).select_from(Consumer)) == 2
        assert (await session.get(Consumer, consumer_id)) is not None

    async def test_a_replay_sends_nothing_more_and_no_response_or_log_holds_the_code(
        self, client: httpx.AsyncClient, session: AsyncSession, capsys: pytest.CaptureFixture[str]
    ) -> None:
        headers = {"Idempotency-Key": "code-once"}
        first = await client.post("/v1/consumer-codes", json={"phone": "13812340005"}, headers=headers)
        again = await client.post("/v1/consumer-codes", json={"phone": "13812340005"}, headers=headers)
        assert first.status_code == again.status_code == 202 and again.headers["idempotency-replayed"] == "true"
        code = await sms_code_for(session, "13812340005")
        assert await session.scalar(select(func.count()).select_from(SmsOutbox)) == 1
        assert await session.scalar(select(func.count()).select_from(ConsumerCode)) == 1
        token = await client.post("/v1/consumer-tokens", json={"phone": "13812340005", "code": code})
        assert token.status_code == 201
        logged = capsys.readouterr()
        for secret in ("13812340005", token.json()["token"]):
            assert secret not in logged.out + logged.err
        assert f"code is {code}" not in logged.out + logged.err


class TestRegistrationTellsNothing:
    async def test_known_and_unknown_phones_get_the_same_answer(
        self, client: httpx.AsyncClient, regulator: str
    ) -> None:
        first = await onboard_merchant(client, regulator, "First Gym")
        second = await onboard_merchant(client, regulator, "Second Gym")
        await consumer_token(client, first, "13812340010")  # known: registered at another merchant, signed in
        await asyncio.sleep(0.05)
        started = datetime.now(UTC)
        known = await register(client, second.token, "13812340010")
        unknown = await register(client, second.token, "13812340011")
        assert known.status_code == unknown.status_code == 201
        assert set(known.json()) == set(unknown.json()) == {"id", "phone_masked", "created_at"}
        for answer in (known, unknown):
            # the time shown is this merchant's own registration, not the consumer's creation
            assert datetime.fromisoformat(answer.json()["created_at"]) >= started - timedelta(seconds=1)
        shown = await client.get(f"/v1/consumers/{known.json()['id']}", headers=bearer(second.token))
        assert shown.json() == known.json()
        again = await register(client, second.token, "13812340010")
        assert again.status_code == 201 and again.json() == known.json()

    async def test_consumer_ids_carry_no_time(self, client: httpx.AsyncClient, regulator: str) -> None:
        gym = await onboard_merchant(client, regulator, "Ids Gym")
        ids = [(await register(client, gym.token, f"1381234{n:04d}")).json()["id"] for n in range(20, 36)]
        assert len(set(ids)) == len(ids) and ids != sorted(ids)  # time-sortable ids would come out sorted


def items(response: httpx.Response) -> list:
    body = response.json()
    return body["items"] if isinstance(body, dict) else body


class TestOtherMerchantsCards:
    async def test_a_merchant_that_never_sold_to_the_consumer_sees_and_acts_on_none_of_its_cards(
        self, client: httpx.AsyncClient, session: AsyncSession, regulator: str
    ) -> None:
        bank = await onboard_bank(client, regulator, "LEAK")
        seller = await onboard_merchant(client, regulator, "Seller Gym")
        snoop = await onboard_merchant(client, regulator, "Snoop Gym")
        await open_escrow_account(client, seller, bank)
        await open_escrow_account(client, snoop, bank)
        plan = await create_plan(client, seller, kind="sessions", price=10_000, sessions=10)
        consumer_id, consumer = await consumer_token(client, seller, "13812340040")
        card_id = await sell_and_pay(client, seller, bank, plan["id"], consumer_id)
        recorded = await client.post(
            f"/v1/cards/{card_id}/consumptions", json={"sessions": 1}, headers={**bearer(seller.token), **key()}
        )
        assert recorded.status_code == 201, recorded.text
        consumption_id = recorded.json()["id"]

        # the snoop registers the same phone: it may now sell to the consumer, and sees nothing of the seller's
        registered = await register(client, snoop.token, "13812340040")
        assert registered.status_code == 201 and registered.json()["id"] == consumer_id
        snoop_headers = bearer(snoop.token)
        cards = await client.get("/v1/cards", headers=snoop_headers)
        assert cards.status_code == 200 and items(cards) == []
        filtered = await client.get("/v1/cards", params={"merchant_id": seller.id}, headers=snoop_headers)
        assert items(filtered) == []
        for path in (
            f"/v1/cards/{card_id}",
            f"/v1/cards/{card_id}/history",
            f"/v1/consumptions/{consumption_id}",
        ):
            assert (await client.get(path, headers=snoop_headers)).status_code == 404, path
        quote = await client.get(
            f"/v1/cards/{card_id}/refund-quote", params={"cause": "merchant"}, headers=snoop_headers
        )
        assert quote.status_code == 404
        consumptions = await client.get("/v1/consumptions", headers=snoop_headers)
        assert consumptions.status_code == 200 and items(consumptions) == []
        by_card = await client.get("/v1/consumptions", params={"card_id": card_id}, headers=snoop_headers)
        assert by_card.status_code == 404 or items(by_card) == []
        refunds = await client.get("/v1/refunds", headers=snoop_headers)
        assert refunds.status_code == 200 and items(refunds) == []
        # … nor acts on them
        acted = await client.post(
            f"/v1/cards/{card_id}/consumptions", json={"sessions": 1}, headers={**snoop_headers, **key()}
        )
        assert acted.status_code == 404
        resolved = await client.post(
            f"/v1/consumptions/{consumption_id}/resolve",
            json={"outcome": "void", "note": "snoop"},
            headers={**snoop_headers, **key()},
        )
        assert resolved.status_code in (403, 404)
        # the consumer still sees its card
        mine = await client.get("/v1/me/cards", headers=bearer(consumer))
        assert [c["id"] for c in items(mine)] == [card_id]


class TestSecretsStayWithTheirParty:
    async def test_the_regulator_revokes_but_cannot_rotate_another_partys_token(
        self, client: httpx.AsyncClient, regulator: str
    ) -> None:
        gym = await onboard_merchant(client, regulator, "Rotated Gym")
        bank = await onboard_bank(client, regulator, "ROT")
        for token in (gym.token, bank.token):
            token_id = await self._token_id(client, token, bank if token == bank.token else None)
            rotated = await client.post(f"/v1/tokens/{token_id}/rotate", headers={**bearer(regulator), **key()})
            assert rotated.status_code == 404 and "secret" not in rotated.json()
        gym_token_id = await self._token_id(client, gym.token)
        revoked = await client.post(f"/v1/tokens/{gym_token_id}/revoke", headers={**bearer(regulator), **key()})
        assert revoked.status_code == 200
        assert (await client.get("/v1/me", headers=bearer(gym.token))).status_code == 401

        # the explicit, audited issuing call: the secret once, then never again
        headers = {**bearer(regulator), "Idempotency-Key": "reissue-gym"}
        issued = await client.post(f"/v1/merchants/{gym.id}/tokens", json={"name": "after revocation"}, headers=headers)
        assert issued.status_code == 201, issued.text
        me = await client.get("/v1/me", headers=bearer(issued.json()["secret"]))
        assert me.json()["principal_id"] == gym.id and me.json()["role"] == "merchant"
        replayed = await client.post(
            f"/v1/merchants/{gym.id}/tokens", json={"name": "after revocation"}, headers=headers
        )
        assert replayed.status_code == 409 and replayed.json()["code"] == "secret_already_issued"
        bank_token = await client.post(
            f"/v1/banks/{bank.id}/tokens", json={"name": "new"}, headers={**bearer(regulator), **key()}
        )
        assert bank_token.status_code == 201 and bank_token.json()["token"]["principal_id"] == bank.id
        missing = await client.post(
            "/v1/merchants/mer_00000000000000000000000000/tokens",
            json={"name": "x"},
            headers={**bearer(regulator), **key()},
        )
        assert missing.status_code == 404
        for other in (gym.token, issued.json()["secret"]):  # the revoked one, and the merchant itself
            refused = await client.post(
                f"/v1/merchants/{gym.id}/tokens", json={"name": "self"}, headers={**bearer(other), **key()}
            )
            assert refused.status_code in (401, 403)
        trail = await client.get("/v1/audit", params={"object_id": gym.id}, headers=bearer(regulator))
        regulator_token_id = (await client.get("/v1/me", headers=bearer(regulator))).json()["token_id"]
        done = [r for r in trail.json()["items"] if r["outcome"] == "done" and r["action"].endswith("/tokens")]
        assert len(done) == 1 and done[0]["token_id"] == regulator_token_id

    async def test_a_party_rotates_its_own_token(self, client: httpx.AsyncClient, regulator: str) -> None:
        gym = await onboard_merchant(client, regulator, "Own Rotation Gym")
        token_id = await self._token_id(client, gym.token)
        rotated = await client.post(f"/v1/tokens/{token_id}/rotate", headers={**bearer(gym.token), **key()})
        assert rotated.status_code == 201 and rotated.json()["token"]["principal_id"] == gym.id

    @staticmethod
    async def _token_id(client: httpx.AsyncClient, token: str, bank=None) -> str:  # type: ignore[no-untyped-def]
        if bank is not None:
            return (await client.get("/v1/me", auth=bank.auth)).json()["token_id"]
        return (await client.get("/v1/me", headers=bearer(token))).json()["token_id"]


class TestAuditNamesTheToken:
    async def test_every_record_names_the_acting_token(self, client: httpx.AsyncClient, regulator: str) -> None:
        gym = await onboard_merchant(client, regulator, "Audited Gym")
        await register(client, gym.token, "13812340050")
        await client.post("/v1/consumers", json={"phone": "nope"}, headers={**bearer(gym.token), **key()})
        gym_token_id = (await client.get("/v1/me", headers=bearer(gym.token))).json()["token_id"]
        regulator_token_id = (await client.get("/v1/me", headers=bearer(regulator))).json()["token_id"]
        trail = (await client.get("/v1/audit", headers=bearer(regulator))).json()["items"]
        by_action = {(r["action"], r["outcome"]): r for r in trail}
        assert by_action[("POST /v1/merchants", "done")]["token_id"] == regulator_token_id
        assert by_action[("POST /v1/consumers", "done")]["token_id"] == gym_token_id
        assert by_action[("POST /v1/consumers", "refused")]["token_id"] == gym_token_id
        only = await client.get("/v1/audit", params={"token_id": gym_token_id}, headers=bearer(regulator))
        assert {r["token_id"] for r in only.json()["items"]} == {gym_token_id}
        anonymous = await client.post("/v1/consumer-codes", json={"phone": "13812340050"}, headers=key())
        assert anonymous.status_code == 202
        trail = (await client.get("/v1/audit", headers=bearer(regulator))).json()["items"]
        sent = next(r for r in trail if r["action"] == "POST /v1/consumer-codes")
        assert sent["token_id"] is None and sent["principal_id"] is None


class TestCodeLimits:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(
            update={"consumer_codes_per_phone_per_hour": 2, "consumer_codes_per_address_per_hour": 3}
        )

    async def test_per_phone_and_per_address_limits_hold_across_workers(
        self, client: httpx.AsyncClient, settings: Settings, app: Litestar
    ) -> None:
        for _ in range(2):
            await send_code(client, "13812340060")
        refused = await client.post("/v1/consumer-codes", json={"phone": "13812340060"}, headers=key())
        assert refused.status_code == 429 and refused.json()["code"] == "too_many_codes"
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert 0 < int(refused.headers["retry-after"]) <= 3600
        # another worker (or the service after a restart) counts in the same table
        other = create_app(settings)
        async with other.lifespan():
            transport = httpx.ASGITransport(app=other)
            async with httpx.AsyncClient(transport=transport, base_url="http://escrow.test") as second:
                again = await second.post("/v1/consumer-codes", json={"phone": "13812340060"}, headers=key())
                assert again.status_code == 429
                # the address's limit: 3 requests counted (2 sent, 1 refused) and a 4th for another phone
                another = await second.post("/v1/consumer-codes", json={"phone": "13812340061"}, headers=key())
                assert another.status_code == 429 and "address" in another.json()["detail"]

    async def test_a_malformed_phone_is_a_422_naming_the_field(self, client: httpx.AsyncClient) -> None:
        refused = await client.post("/v1/consumer-codes", json={"phone": "12345"}, headers=key())
        assert refused.status_code == 422 and [e["field"] for e in refused.json()["errors"]] == ["phone"]
        missing = await client.post("/v1/consumer-codes", json={}, headers=key())
        assert missing.status_code == 422


async def test_the_sink_helper_reads_by_url_too(client: httpx.AsyncClient, db_url: str) -> None:
    from tests.parties import app_of

    before = await last_sms_id(app_of(client).state.sessionmaker)
    await send_code(client, "13812340070")
    assert len(await sms_code_for(db_url, "13812340070", after=before)) == 6
