"""Presence codes (核销): the consumer's short-lived code confirms a service at the counter, in the same request.

The clock of the codes is fixed by each test (``presence.now``), in the middle of a time step, so crossing a step
is something a test does on purpose, never by chance.
"""

import itertools
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.cards import presence
from escrow.config import Settings
from escrow.kit.clock import utcnow
from escrow.kit.crypto import Keyring
from escrow.ledger.integrity import verify_database
from tests.parties import (
    Bank,
    Merchant,
    account_totals,
    bearer,
    card_detail,
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
STEP = 60


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"payout_hour": None})


class Clock:
    """The codes' clock, moved by hand: it starts 30 s into a step."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        start = presence.step_of(utcnow(), STEP) * STEP + STEP // 2
        self.instant = datetime.fromtimestamp(start, UTC)
        monkeypatch.setattr(presence, "now", lambda: self.instant)

    @property
    def step(self) -> int:
        return presence.step_of(self.instant, STEP)

    def move(self, seconds: int) -> None:
        self.instant += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


@pytest.fixture
def keyring(settings: Settings) -> Keyring:
    assert settings.secret_key is not None
    return Keyring(settings.secret_key.get_secret_value().encode())


class Gym:
    regulator: str
    bank: Bank
    merchant: Merchant
    account: str
    plan_id: str
    cards: list[str]
    consumers: list[str]  # tokens, one per card


async def gym(client: httpx.AsyncClient, session: AsyncSession, members: int = 2) -> Gym:
    """A gym with a plan of 20 sessions for 2,000 yuan (100 yuan a session) and ``members`` paid cards."""
    g = Gym()
    g.regulator = await regulator_token(session)
    g.bank = await onboard_bank(client, g.regulator, "PRSB")
    g.merchant = await onboard_merchant(client, g.regulator, "Iron Temple")
    g.account = await open_escrow_account(client, g.merchant, g.bank)
    g.plan_id = (await create_plan(client, g.merchant, kind="sessions", sessions=20, price=2000 * YUAN))["id"]
    g.cards, g.consumers = [], []
    for n in range(members):
        consumer_id, token = await consumer_token(client, g.merchant, f"1370000{n:04d}")
        g.cards.append(await sell_and_pay(client, g.merchant, g.bank, g.plan_id, consumer_id))
        g.consumers.append(token)
    return g


async def code_of(client: httpx.AsyncClient, consumer: str, card_id: str) -> dict:
    response = await client.get(f"/v1/cards/{card_id}/presence-code", headers=bearer(consumer))
    assert response.status_code == 200, response.text
    return response.json()


async def record(client: httpx.AsyncClient, g: Gym, card_id: str, **body) -> httpx.Response:
    return await client.post(
        f"/v1/cards/{card_id}/consumptions",
        json={"sessions": 1, **body},
        headers={**bearer(g.merchant.token), **key()},
    )


async def counts(session: AsyncSession, card_id: str) -> tuple[int, int, int, int]:
    """(service records, units used, consumed, released) of a card, as the database has them."""
    row = (
        await session.execute(
            text(
                "SELECT (SELECT count(*) FROM consumptions c WHERE c.card_id = k.id), units_used, consumed, released"
                " FROM cards k WHERE id = :id"
            ),
            {"id": card_id},
        )
    ).one()
    return row[0], row[1], row[2], row[3]


def refused(response: httpx.Response, field: str, rule: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "validation_failed"
    assert [(e["field"], e["rule"]) for e in body["errors"]] == [(field, rule)]


def another_code(keyring: Keyring, card_id: str, step: int) -> str:
    """Six digits that are none of the card's codes around ``step``."""
    taken = {presence.code_for(keyring.presence_key, card_id, s, 6) for s in range(step - 2, step + 3)}
    return next(c for c in (f"{n:06d}" for n in range(123456, 10**6)) if c not in taken)


class TestTheCode:
    async def test_the_consumer_gets_six_digits_a_deadline_and_a_qr_code(
        self, client: httpx.AsyncClient, session: AsyncSession, clock: Clock, keyring: Keyring
    ) -> None:
        g = await gym(client, session, members=1)
        shown = await code_of(client, g.consumers[0], g.cards[0])
        assert shown["code"] == presence.code_for(keyring.presence_key, g.cards[0], clock.step, 6)
        assert len(shown["code"]) == 6 and shown["code"].isdigit()
        step_start = clock.step * STEP
        assert datetime.fromisoformat(shown["rotates_at"]).timestamp() == step_start + STEP
        assert datetime.fromisoformat(shown["valid_until"]).timestamp() == step_start + 2 * STEP
        assert shown["qr_svg"].startswith('<svg xmlns="http://www.w3.org/2000/svg"') and shown["qr_svg"].endswith(
            "</svg>"
        )
        # the same step, the same code; the next step, the next code
        assert (await code_of(client, g.consumers[0], g.cards[0]))["code"] == shown["code"]
        clock.move(STEP)
        assert (await code_of(client, g.consumers[0], g.cards[0]))["code"] == presence.code_for(
            keyring.presence_key, g.cards[0], clock.step, 6
        )

    async def test_only_the_cards_consumer_gets_it(
        self, client: httpx.AsyncClient, session: AsyncSession, clock: Clock
    ) -> None:
        g = await gym(client, session, members=2)
        others = await client.get(f"/v1/cards/{g.cards[1]}/presence-code", headers=bearer(g.consumers[0]))
        assert others.status_code == 404, others.text
        merchant = await client.get(f"/v1/cards/{g.cards[0]}/presence-code", headers=bearer(g.merchant.token))
        assert merchant.status_code == 403, merchant.text
        regulator = await client.get(f"/v1/cards/{g.cards[0]}/presence-code", headers=bearer(g.regulator))
        assert regulator.status_code == 403, regulator.text

    async def test_step_and_digits_are_settings(
        self, client: httpx.AsyncClient, session: AsyncSession, app, keyring: Keyring, monkeypatch
    ) -> None:
        app.state.settings = app.state.settings.model_copy(
            update={"presence_code_step_seconds": 30, "presence_code_digits": 8}
        )
        at = datetime(2026, 12, 6, 14, 0, 10, tzinfo=UTC)
        monkeypatch.setattr(presence, "now", lambda: at)
        g = await gym(client, session, members=1)
        shown = await code_of(client, g.consumers[0], g.cards[0])
        assert shown["code"] == presence.code_for(keyring.presence_key, g.cards[0], int(at.timestamp()) // 30, 8)
        assert shown["rotates_at"] == "2026-12-06T14:00:30Z" and shown["valid_until"] == "2026-12-06T14:01:00Z"


class TestConfirmedAtTheCounter:
    async def test_a_code_confirms_the_service_and_the_payable_grows_at_once(
        self, client: httpx.AsyncClient, session: AsyncSession, engine, clock: Clock
    ) -> None:
        g = await gym(client, session, members=1)
        card = g.cards[0]
        shown = await code_of(client, g.consumers[0], card)
        assert (await account_totals(client, g.regulator, g.account))["merchant_payable"] == 0

        recorded = await record(client, g, card, presence_code=shown["code"])
        assert recorded.status_code == 201, recorded.text
        service = recorded.json()
        assert service["status"] == "confirmed" and service["resolved_by"] == "presence"
        assert service["value"]["amount"] == 10000 and service["protected"]["amount"] == 10000
        assert service["resolved_at"] is not None
        totals = await account_totals(client, g.regulator, g.account)
        assert totals["merchant_payable"] == 10000
        assert totals["custody_cash"] == 200000 and totals["cards_protected"] == 190000
        detail = await card_detail(client, g.consumers[0], card)
        assert detail["units_remaining"] == 19 and detail["pending_services"] == []
        assert detail["pending"]["amount"] == 0 and detail["released"]["amount"] == 10000
        assert detail["value_remaining"]["amount"] == 190000
        # the history shows it held and released, as a consumer's confirmation does
        history = await client.get(f"/v1/cards/{card}/history", headers=bearer(g.consumers[0]))
        events = [line["event"] for line in history.json()["items"]]
        assert events == ["consumption_released", "consumption_held", "card_paid"], events
        # already confirmed: the consumer's confirmation changes nothing, a dispute is refused
        again = await client.post(
            f"/v1/consumptions/{service['id']}/confirm", headers={**bearer(g.consumers[0]), **key()}
        )
        assert again.status_code == 200 and again.json()["resolved_by"] == "presence"
        disputed = await client.post(
            f"/v1/consumptions/{service['id']}/dispute",
            json={"reason": "I was not there"},
            headers={**bearer(g.consumers[0]), **key()},
        )
        assert disputed.status_code == 409, disputed.text
        assert (await counts(session, card)) == (1, 1, 10000, 10000)
        assert (await verify_database(engine)).ok

    async def test_without_a_code_the_service_awaits_the_consumer(
        self, client: httpx.AsyncClient, session: AsyncSession, clock: Clock
    ) -> None:
        g = await gym(client, session, members=1)
        recorded = await record(client, g, g.cards[0])
        assert recorded.status_code == 201, recorded.text
        assert recorded.json()["status"] == "pending_confirmation" and recorded.json()["resolved_by"] is None
        assert (await account_totals(client, g.regulator, g.account))["merchant_payable"] == 0
        assert (await card_detail(client, g.consumers[0], g.cards[0]))["pending"]["amount"] == 10000

    async def test_the_previous_steps_code_is_still_accepted(
        self, client: httpx.AsyncClient, session: AsyncSession, clock: Clock
    ) -> None:
        g = await gym(client, session, members=1)
        shown = await code_of(client, g.consumers[0], g.cards[0])
        clock.move(STEP)  # typed a minute later: the next step has begun
        recorded = await record(client, g, g.cards[0], presence_code=shown["code"])
        assert recorded.status_code == 201 and recorded.json()["status"] == "confirmed", recorded.text


class TestRefused:
    async def test_guessing_a_cards_code_is_bounded(
        self, client: httpx.AsyncClient, session: AsyncSession, clock: Clock, keyring: Keyring, settings: Settings
    ) -> None:
        g = await gym(client, session, members=2)
        wrong = another_code(keyring, g.cards[0], clock.step)
        for _ in range(settings.presence_code_failures_per_hour):
            refused(await record(client, g, g.cards[0], presence_code=wrong), "presence_code", "presence_code")
        # each wrong code was kept though its request was refused: now the card takes no code for the hour,
        # not even its right one
        right = await code_of(client, g.consumers[0], g.cards[0])
        refused(
            await record(client, g, g.cards[0], presence_code=right["code"]), "presence_code", "presence_code_locked"
        )
        assert (await counts(session, g.cards[0])) == (0, 0, 0, 0)
        # the other card, and the same card without a code, are untouched
        other = await code_of(client, g.consumers[1], g.cards[1])
        assert (await record(client, g, g.cards[1], presence_code=other["code"])).status_code == 201
        pending = await record(client, g, g.cards[0])
        assert pending.status_code == 201 and pending.json()["status"] == "pending_confirmation"
        failures = await session.execute(
            text("SELECT count(*) FROM presence_failures WHERE card_id = :c"), {"c": g.cards[0]}
        )
        assert failures.scalar_one() == settings.presence_code_failures_per_hour

    async def test_a_wrong_code_records_nothing(
        self, client: httpx.AsyncClient, session: AsyncSession, clock: Clock, keyring: Keyring
    ) -> None:
        g = await gym(client, session, members=1)
        wrong = another_code(keyring, g.cards[0], clock.step)
        refused(await record(client, g, g.cards[0], presence_code=wrong), "presence_code", "presence_code")
        assert (await counts(session, g.cards[0])) == (0, 0, 0, 0)
        assert (await account_totals(client, g.regulator, g.account))["merchant_payable"] == 0

    async def test_another_cards_code_records_nothing(
        self, client: httpx.AsyncClient, session: AsyncSession, clock: Clock
    ) -> None:
        g = await gym(client, session, members=2)
        theirs = await code_of(client, g.consumers[1], g.cards[1])
        refused(await record(client, g, g.cards[0], presence_code=theirs["code"]), "presence_code", "presence_code")
        assert (await counts(session, g.cards[0])) == (0, 0, 0, 0)
        assert (await counts(session, g.cards[1])) == (0, 0, 0, 0)

    async def test_an_expired_code_records_nothing(
        self, client: httpx.AsyncClient, session: AsyncSession, clock: Clock
    ) -> None:
        g = await gym(client, session, members=1)
        shown = await code_of(client, g.consumers[0], g.cards[0])
        clock.move(2 * STEP)  # two steps on: neither the current nor the previous step's code
        refused(await record(client, g, g.cards[0], presence_code=shown["code"]), "presence_code", "presence_code")
        assert (await counts(session, g.cards[0])) == (0, 0, 0, 0)
        # the code of now is accepted
        fresh = await code_of(client, g.consumers[0], g.cards[0])
        assert (await record(client, g, g.cards[0], presence_code=fresh["code"])).status_code == 201

    async def test_a_malformed_code_is_refused_by_its_shape(
        self, client: httpx.AsyncClient, session: AsyncSession, clock: Clock
    ) -> None:
        g = await gym(client, session, members=1)
        refused(await record(client, g, g.cards[0], presence_code="48291a"), "presence_code", "string_pattern_mismatch")
        wrong_type = await record(client, g, g.cards[0], presence_code=482913)
        assert wrong_type.status_code == 422 and wrong_type.json()["errors"][0]["field"] == "presence_code"
        assert (await counts(session, g.cards[0])) == (0, 0, 0, 0)

    async def test_a_used_code_is_not_accepted_again(
        self, client: httpx.AsyncClient, session: AsyncSession, clock: Clock, keyring: Keyring
    ) -> None:
        """The rule: a step's code confirms the services of one request; a code whose step is not later than the
        last step accepted for the card is refused, even within its minute."""
        g = await gym(client, session, members=1)
        card = g.cards[0]
        shown = await code_of(client, g.consumers[0], card)
        assert (await record(client, g, card, presence_code=shown["code"])).status_code == 201
        # the same code again, at once or in the next step
        refused(await record(client, g, card, presence_code=shown["code"]), "presence_code", "presence_code_used")
        clock.move(STEP)
        refused(await record(client, g, card, presence_code=shown["code"]), "presence_code", "presence_code_used")
        assert (await counts(session, card)) == (1, 1, 10000, 10000)
        # the next code is accepted; then the code of the step before it is not, though still in its window
        fresh = await code_of(client, g.consumers[0], card)
        assert fresh["code"] != shown["code"]
        assert (await record(client, g, card, presence_code=fresh["code"])).status_code == 201
        assert (await counts(session, card)) == (2, 2, 20000, 20000)
        # a replay of a request (same Idempotency-Key) is answered as before and moves nothing
        headers = {**bearer(g.merchant.token), "Idempotency-Key": "presence-replay"}
        clock.move(STEP)
        newest = await code_of(client, g.consumers[0], card)
        body = {"sessions": 1, "presence_code": newest["code"]}
        first = await client.post(f"/v1/cards/{card}/consumptions", json=body, headers=headers)
        second = await client.post(f"/v1/cards/{card}/consumptions", json=body, headers=headers)
        assert first.status_code == second.status_code == 201
        assert second.headers.get("Idempotency-Replayed") == "true" and second.json() == first.json()
        assert (await counts(session, card)) == (3, 3, 30000, 30000)
        assert (await account_totals(client, g.regulator, g.account))["merchant_payable"] == 30000

    async def test_an_earlier_step_after_a_later_one_is_refused(
        self, client: httpx.AsyncClient, session: AsyncSession, clock: Clock, keyring: Keyring
    ) -> None:
        g = await gym(client, session, members=1)
        card = g.cards[0]
        earlier = presence.code_for(keyring.presence_key, card, clock.step - 1, 6)  # still in its window
        current = (await code_of(client, g.consumers[0], card))["code"]
        assert (await record(client, g, card, presence_code=current)).status_code == 201
        refused(await record(client, g, card, presence_code=earlier), "presence_code", "presence_code_used")


async def roll(client: httpx.AsyncClient, g: Gym, services: list[dict]) -> httpx.Response:
    return await client.post(
        "/v1/consumptions",
        json={"services": services, "note": "Spin class 19:00"},
        headers={**bearer(g.merchant.token), **key()},
    )


class TestClassRoll:
    async def test_mixed_codes_confirm_those_with_a_code_and_hold_the_rest(
        self, client: httpx.AsyncClient, session: AsyncSession, engine, clock: Clock
    ) -> None:
        g = await gym(client, session, members=3)
        codes = [(await code_of(client, token, card))["code"] for card, token in zip(g.cards, g.consumers, strict=True)]
        recorded = await roll(
            client,
            g,
            [
                {"card_id": g.cards[0], "sessions": 1, "presence_code": codes[0]},
                {"card_id": g.cards[1], "sessions": 1},
                {"card_id": g.cards[2], "sessions": 2, "presence_code": codes[2]},
            ],
        )
        assert recorded.status_code == 201, recorded.text
        services = recorded.json()["consumptions"]
        assert [(s["status"], s["resolved_by"], s["value"]["amount"]) for s in services] == [
            ("confirmed", "presence", 10000),
            ("pending_confirmation", None, 10000),
            ("confirmed", "presence", 20000),
        ]
        totals = await account_totals(client, g.regulator, g.account)
        assert totals["merchant_payable"] == 30000 and totals["cards_protected"] == 600000 - 30000
        assert (await card_detail(client, g.consumers[1], g.cards[1]))["pending"]["amount"] == 10000
        assert (await verify_database(engine)).ok

    async def test_one_code_covers_every_service_of_its_card_in_the_roll(
        self, client: httpx.AsyncClient, session: AsyncSession, clock: Clock
    ) -> None:
        g = await gym(client, session, members=1)
        code = (await code_of(client, g.consumers[0], g.cards[0]))["code"]
        item = {"card_id": g.cards[0], "sessions": 1, "presence_code": code}
        recorded = await roll(client, g, [item, item])  # two sessions back to back
        assert recorded.status_code == 201, recorded.text
        assert [s["status"] for s in recorded.json()["consumptions"]] == ["confirmed", "confirmed"]
        assert (await counts(session, g.cards[0])) == (2, 2, 20000, 20000)
        # … and not a later roll's
        refused(await roll(client, g, [item]), "services[0].presence_code", "presence_code_used")

    async def test_one_wrong_code_refuses_the_whole_roll(
        self, client: httpx.AsyncClient, session: AsyncSession, clock: Clock, keyring: Keyring
    ) -> None:
        g = await gym(client, session, members=3)
        good = (await code_of(client, g.consumers[0], g.cards[0]))["code"]
        stale = presence.code_for(keyring.presence_key, g.cards[2], clock.step - 2, 6)
        refused(
            await roll(
                client,
                g,
                [
                    {"card_id": g.cards[0], "sessions": 1, "presence_code": good},
                    {"card_id": g.cards[1], "sessions": 1},
                    {"card_id": g.cards[2], "sessions": 1, "presence_code": stale},
                ],
            ),
            "services[2].presence_code",
            "presence_code",
        )
        for card in g.cards:
            assert (await counts(session, card)) == (0, 0, 0, 0)
        # nothing was used: the good code still confirms
        assert (await record(client, g, g.cards[0], presence_code=good)).status_code == 201


class TestConfirmationChannel:
    async def test_services_are_listed_by_how_they_were_confirmed(
        self, client: httpx.AsyncClient, session: AsyncSession, clock: Clock
    ) -> None:
        g = await gym(client, session, members=2)
        code = (await code_of(client, g.consumers[0], g.cards[0]))["code"]
        by_code = (await record(client, g, g.cards[0], presence_code=code)).json()
        by_consumer = (await record(client, g, g.cards[1])).json()
        confirmed = await client.post(
            f"/v1/consumptions/{by_consumer['id']}/confirm", headers={**bearer(g.consumers[1]), **key()}
        )
        assert confirmed.status_code == 200
        pending = (await record(client, g, g.cards[1])).json()

        async def listed(**query) -> list[str]:
            response = await client.get("/v1/consumptions", params=query, headers=bearer(g.merchant.token))
            assert response.status_code == 200, response.text
            return [c["id"] for c in response.json()]

        assert await listed(confirmed_via="presence") == [by_code["id"]]
        assert await listed(confirmed_via="consumer") == [by_consumer["id"]]
        assert await listed(confirmed_via="auto") == []
        assert await listed(confirmed_via="resolution") == []
        assert sorted(await listed()) == sorted([by_code["id"], by_consumer["id"], pending["id"]])
        bad = await client.get("/v1/consumptions", params={"confirmed_via": "fax"}, headers=bearer(g.merchant.token))
        assert bad.status_code == 422


KEY = Keyring(b"test-secret-key-0123456789abcdef")
card_ids = st.from_regex(r"card_[0-9A-HJKMNP-TV-Z]{26}", fullmatch=True)


class TestCodeProperties:
    @given(card=card_ids, other=card_ids, seconds=st.integers(10**9, 4 * 10**9), step=st.sampled_from([30, 60, 300]))
    def test_a_code_verifies_only_for_its_card_and_its_step_window(
        self, card: str, other: str, seconds: int, step: int
    ) -> None:
        issued_at = datetime.fromtimestamp(seconds, UTC)
        issued = presence.current(KEY.presence_key, card, issued_at, step, 6)
        issued_step = presence.step_of(issued_at, step)
        assert len(issued.code) == 6 and issued.code.isdigit()

        def verifies(for_card: str, at_step: int) -> int | None:
            at = datetime.fromtimestamp(at_step * step, UTC)
            return presence.accepted_step(KEY.presence_key, for_card, issued.code, at, step, 6)

        # accepted in its own step and the next, as that step
        assert verifies(card, issued_step) == issued_step
        assert verifies(card, issued_step + 1) == issued_step
        # before it, and from two steps on, only if the card's code happens to repeat (one chance in a million)
        for later in (issued_step - 1, issued_step + 2, issued_step + 3):
            found = verifies(card, later)
            assert found is None or presence.code_for(KEY.presence_key, card, found, 6) == issued.code
        # another card: only by the same chance collision, never because the code is shared
        if other != card:
            found = verifies(other, issued_step)
            assert found is None or presence.code_for(KEY.presence_key, other, found, 6) == issued.code
        # another key (another service's secret): the same
        stranger = Keyring(b"another-secret-key-0123456789abcdef").presence_key
        found = presence.accepted_step(stranger, card, issued.code, issued_at, step, 6)
        assert found is None or presence.code_for(stranger, card, found, 6) == issued.code

    def test_codes_spread_over_the_digits(self) -> None:
        """Over many steps a card's codes differ from step to step and use every leading digit."""
        codes = [presence.code_for(KEY.presence_key, "card_X", s, 6) for s in range(2000)]
        assert sum(a != b for a, b in itertools.pairwise(codes)) >= 1995
        assert {c[0] for c in codes} == set("0123456789")
