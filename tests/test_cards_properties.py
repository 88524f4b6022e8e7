"""Random card lives conserve every fen: the pure splitting rules, and the services end to end through the API.

- ``TestSplittingRules``: random prices, unit counts and custody ratios, random sequences of consumptions and
  voids on ``escrow.cards.pricing`` (counters undone the way ``consumptions.service.resolve`` undoes them),
  then what is left released as delivered value and refunded. Every fen of the price ends in exactly one
  custodied or unprotected part, no part is negative, and the custodied share follows the module's rounding
  rule wherever its clamps don't bind.
- ``TestCardLivesThroughTheApi``: random plans, custody ratios and sequences of services, confirmations,
  disputes, the jobs (auto-confirmation, membership days), payouts and bank reports, then a refund or the
  card's expiry, checking after every step invariant 3 (``verify_database``, and custody = what the bank
  holds by a model of the bank) and invariant 4 (per card, custodied and unprotected parts alike: paid =
  released + refunded + remaining, from the journal, the card's counters and the API).

Profiles (chosen with ``HYPOTHESIS_PROFILE``, as in tests/test_ledger_properties.py): ``ci`` (default) and
``long``, e.g. ``HYPOTHESIS_PROFILE=long pytest tests/test_cards_properties.py``.
"""

import itertools
import math
import os
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from fractions import Fraction
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, note
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from escrow.cards.pricing import BP, CardMoney, day_value, protected_part_of_price, split, unit_value
from escrow.config import Settings
from escrow.jobs import run_jobs_once
from escrow.kit.clock import business_date, utcnow
from escrow.ledger.integrity import verify_database
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
    onboard_ratio_merchant,
    open_escrow_account,
    regulator_token,
)

_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
_COMMON: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}
# Built here rather than registered, so the ledger tests' profiles of the same names are left alone.
PURE = hypothesis_settings(max_examples={"long": 20_000}.get(_PROFILE, 300), **_COMMON)
THROUGH_THE_API = hypothesis_settings(
    max_examples={"long": 200}.get(_PROFILE, 20),
    suppress_health_check=[*_COMMON["suppress_health_check"], HealthCheck.function_scoped_fixture],
    deadline=None,
)


def rule_share(out: int, ratio_bp: int) -> int:
    """The module docstring's custodied share of ``out`` fen: ⌈out·r/10000⌉, computed without its helpers."""
    return math.ceil(Fraction(out * ratio_bp, BP))


# --- the pure rules ---------------------------------------------------------------------------------------


@dataclass
class Taken:
    units: int
    amount: int
    protected: int

    @property
    def unprotected(self) -> int:
        return self.amount - self.protected


@dataclass
class Counters:
    """The counters of a card row the splitting rules read (as escrow.cards.service keeps them)."""

    price: int
    units_total: int
    ratio_bp: int
    units_used: int = 0
    consumed: int = 0
    refunded: int = 0
    protected_out: int = 0

    @property
    def protected_paid(self) -> int:
        return protected_part_of_price(self.price, self.ratio_bp)

    def money(self) -> CardMoney:
        return CardMoney(
            price=self.price,
            ratio_bp=self.ratio_bp,
            protected_paid=self.protected_paid,
            out=self.consumed + self.refunded,
            protected_out=self.protected_out,
        )


def checked_split(card: Counters, amount: int, *, exact: bool) -> tuple[int, int]:
    """``split`` of ``amount``, checked against the rule; ``exact``: no void happened, so no clamp may bind."""
    before = card.money()
    protected, unprotected = split(before, amount)
    assert protected >= 0 and unprotected >= 0 and protected + unprotected == amount, (protected, unprotected)
    assert protected <= before.protected_remaining and unprotected <= before.unprotected_remaining
    target = rule_share(before.out + amount, card.ratio_bp)
    assert target <= before.protected_paid  # the cap by what was paid into custody never binds
    wanted = target - before.protected_out
    low = max(0, amount - before.unprotected_remaining)
    high = min(amount, before.protected_remaining)
    if low <= wanted <= high:
        event("split: rule exact")
        assert before.protected_out + protected == target, "the clamps don't bind, so the rule holds exactly"
    else:
        # kept within what each part still holds: the nearest allowed value to the rule's
        event("split: clamped")
        assert not exact, f"no void happened, yet the rule's {wanted} fen is outside [{low}, {high}]"
        assert protected == (low if wanted < low else high)
    return protected, unprotected


@st.composite
def priced_cards(draw: st.DrawFn) -> tuple[int, int, int]:
    units = draw(st.one_of(st.integers(1, 12), st.integers(1, 1000)), label="units")
    price = draw(
        st.one_of(st.integers(units, units + 50), st.integers(units, 10**6), st.integers(units, 10**9)), label="price"
    )
    ratio = draw(st.one_of(st.sampled_from([1, 3333, 4000, 6000, 9999, 10_000]), st.integers(1, BP)), label="ratio")
    return price, units, ratio


class TestSplittingRules:
    @PURE
    @given(card=priced_cards(), data=st.data())
    def test_consumptions_voids_and_a_final_refund_conserve_every_fen(
        self, card: tuple[int, int, int], data: st.DataObject
    ) -> None:
        price, units_total, ratio = card
        c = Counters(price, units_total, ratio)
        live: list[Taken] = []
        voids = 0
        for _ in range(data.draw(st.integers(0, 30), label="steps")):
            ops = (["consume"] if c.units_used < units_total else []) + (["void"] if live else [])
            op = data.draw(st.sampled_from(ops), label="op")
            if op == "consume":
                left = units_total - c.units_used
                units = data.draw(st.one_of(st.integers(1, min(left, 3)), st.integers(1, left)), label="units")
                value = unit_value(price, units_total, c.units_used, units, c.consumed)
                if voids == 0:  # the k-th unit is worth ⌊P·k/N⌋ - ⌊P·(k-1)/N⌋ (domain.md §4)
                    assert value == price * (c.units_used + units) // units_total - price * c.units_used // units_total
                assert 0 <= value <= price - c.consumed
                protected, _ = checked_split(c, value, exact=voids == 0)
                c.protected_out += protected
                c.units_used += units
                c.consumed += value
                live.append(Taken(units, value, protected))
                if c.units_used == units_total:
                    assert c.consumed == price, "the last unit closes the card exactly"
            else:
                # resolve(void) undoes the counters; the hold's legs went back to their accounts
                undone = live.pop(data.draw(st.integers(0, len(live) - 1), label="which"))
                c.units_used -= undone.units
                c.consumed -= undone.amount
                c.protected_out -= undone.protected
                voids += 1
                event("voided")
            m = c.money()
            assert m.protected_remaining >= 0 and m.unprotected_remaining >= 0 and m.remaining >= 0
            assert c.consumed == sum(t.amount for t in live) and c.protected_out == sum(t.protected for t in live)
            if voids == 0:
                assert c.protected_out == rule_share(c.consumed, ratio)

        # the end of the card, as refunds._approve does it: what the list price keeps back is released, the rest
        # is refunded, both split by the same rule
        remaining = c.money().remaining
        retained = data.draw(st.one_of(st.just(0), st.integers(0, remaining)), label="retained")
        kept_protected, _ = checked_split(c, retained, exact=voids == 0)
        c.protected_out += kept_protected
        c.consumed += retained
        last = c.money()
        refund_protected, refund_unprotected = checked_split(c, last.remaining, exact=voids == 0)
        assert (refund_protected, refund_unprotected) == (last.protected_remaining, last.unprotected_remaining)
        c.protected_out += refund_protected
        c.refunded += last.remaining

        protected_paid = protected_part_of_price(price, ratio)
        assert protected_paid == rule_share(price, ratio) and 0 < protected_paid <= price
        parts = [*live, Taken(0, retained, kept_protected), Taken(0, last.remaining, refund_protected)]
        assert sum(p.protected for p in parts) == protected_paid
        assert sum(p.unprotected for p in parts) == price - protected_paid
        assert all(p.protected >= 0 and p.unprotected >= 0 for p in parts)
        assert c.money().remaining == 0 and c.money().protected_remaining == 0

    @PURE
    @given(days=st.integers(1, 3650), data=st.data())
    def test_membership_days_add_up_to_the_price(self, days: int, data: st.DataObject) -> None:
        price = data.draw(st.one_of(st.integers(days, days + 50), st.integers(days, 10**9)), label="price")
        values = [day_value(price, days, day) for day in range(1, days + 1)]
        assert sum(values) == price
        assert set(values) <= {price // days, -(-price // days)}
        k = data.draw(st.integers(0, days), label="k")
        assert sum(values[:k]) == price * k // days


# --- through the API --------------------------------------------------------------------------------------

RATIOS = {"A": 4000, "B": 6000, "C": 3333, "D": 1}  # C and D moved off their 100 % default to odd ratios
OLD, YOUNG = "2015-01-01", "young"
_examples = itertools.count(1)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"payout_hour": None, "custody_ratio_bp_by_rating": RATIOS})


@st.composite
def plans(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["sessions", "stored_value", "period"]), label="kind")
    if kind == "sessions":
        sessions = draw(st.integers(1, 60), label="sessions")
        price = draw(st.one_of(st.integers(sessions, sessions * 3), st.integers(sessions, 2_000_000)), label="price")
        plan: dict[str, Any] = {"kind": kind, "sessions": sessions, "price": price}
        if draw(st.booleans(), label="list price"):
            own = -(-price // sessions)
            plan["list_price_per_session"] = draw(st.integers(own, own * 2 + 100), label="list price per session")
        return plan
    if kind == "stored_value":
        price = draw(st.one_of(st.integers(1, 50), st.integers(1, 500_000)), label="price")
        face = draw(st.one_of(st.just(price), st.integers(price, 500_000)), label="face value")
        return {"kind": kind, "price": price, "face_value": face}
    days = draw(st.integers(1, 40), label="days")
    price = draw(st.one_of(st.integers(days, days * 3), st.integers(days, 500_000)), label="price")
    return {"kind": kind, "price": price, "days": days, "validity_days": days + draw(st.integers(0, 5))}


@st.composite
def custody(draw: st.DrawFn) -> tuple[str, str, str]:
    """(custody model, credit rating, opened on)."""
    model = draw(st.sampled_from(["ratio", "ratio", "full"]), label="model")
    rating = draw(st.sampled_from("ABCD"), label="rating")
    opened = draw(st.sampled_from([OLD, OLD, YOUNG]), label="opened")
    return model, rating, opened


@dataclass
class Service:
    id: str
    units: int
    value: int
    protected: int
    status: str  # pending_confirmation, disputed, confirmed, voided
    confirm_by: datetime


@dataclass
class CardModel:
    """What the card should show, kept from the API's answers and domain.md's rules alone."""

    id: str
    plan: dict[str, Any]
    ratio_bp: int
    units_total: int
    starts_on: date
    status: str = "active"
    units_used: int = 0  # pending services included
    consumed: int = 0  # value of services not voided (days released included)
    released: int = 0
    refunded: int = 0
    services: list[Service] = field(default_factory=list)
    refunds: list[dict[str, Any]] = field(default_factory=list)
    voids: int = 0

    @property
    def kind(self) -> str:
        return self.plan["kind"]

    @property
    def price(self) -> int:
        return self.plan["price"]

    def open_services(self, status: str | None = None) -> list[Service]:
        wanted = (status,) if status else ("pending_confirmation", "disputed")
        return [s for s in self.services if s.status in wanted]

    @property
    def pending(self) -> int:
        return sum(s.value for s in self.open_services())

    def settle_exhausted(self) -> None:
        if self.status == "active" and self.consumed + self.refunded == self.price and self.released == self.consumed:
            self.status = "exhausted"


@dataclass
class Instruction:
    id: str
    kind: str
    amount: int
    refund_id: str | None


class CardLives:
    """One example: a bank, a merchant with its escrow account, a consumer and a card or two, driven at random."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        engine: AsyncEngine,
        settings: Settings,
        data: st.DataObject,
    ) -> None:
        self.client, self.engine, self.settings, self.data = client, engine, settings, data
        self.jobs = async_sessionmaker(engine, expire_on_commit=False)
        self.number = next(_examples)
        self.cards: list[CardModel] = []
        self.instructions: dict[str, Instruction] = {}  # pending at the bank
        self.bank_balance = 0  # what the bank holds in the escrow account: deposits less instructions executed
        self.refund_payable = 0  # refunds approved and not yet paid by the bank
        self.base = utcnow()
        self.offset = timedelta(0)  # how far the jobs' clock has been moved ahead

    def draw(self, strategy: st.SearchStrategy, label: str) -> Any:
        return self.data.draw(strategy, label=label)

    # -- set-up ------------------------------------------------------------------------------------------------

    async def open(self, regulator: str, custody_choice: tuple[str, str, str]) -> None:
        self.regulator = regulator
        self.bank: Bank = await onboard_bank(self.client, regulator, f"CP{self.number}")
        model, rating, opened = custody_choice
        opened_on = (date.today() - timedelta(days=30)).isoformat() if opened == YOUNG else opened
        self.merchant: Merchant = await onboard_ratio_merchant(
            self.client, regulator, f"Merchant {self.number}", rating, opened_on=opened_on, model=model
        )
        self.expected_ratio = RATIOS[rating] if model == "ratio" and opened == OLD else BP
        self.account = await open_escrow_account(self.client, self.merchant, self.bank)
        self.consumer_id, self.consumer = await consumer_token(self.client, self.merchant, f"139{self.number:08d}")

    async def sell(self, plan: dict[str, Any]) -> None:
        made = await create_plan(self.client, self.merchant, **plan)
        sold = await self.client.post(
            "/v1/cards",
            json={"plan_id": made["id"], "consumer_id": self.consumer_id},
            headers={**bearer(self.merchant.token), **key()},
        )
        assert sold.status_code == 201, sold.text
        card, payment = sold.json()["card"], sold.json()["payment"]
        assert card["status"] == "awaiting_payment" and card["custody_ratio_bp"] == self.expected_ratio
        assert payment["amount"]["amount"] == plan["price"]
        paid = await self.client.post(
            "/v1/deposits",
            json={
                "payment_reference": payment["payment_reference"],
                "amount": payment["amount"],
                "bank_transaction_id": bank_transaction_id(),
            },
            headers=key(),
            auth=self.bank.auth,
        )
        assert paid.status_code == 200 and paid.json()["status"] == "active", paid.text
        units = {"sessions": "sessions", "stored_value": "face_value", "period": "days"}[plan["kind"]]
        self.cards.append(
            CardModel(
                card["id"],
                plan,
                self.expected_ratio,
                units_total=plan[units],
                starts_on=date.fromisoformat(paid.json()["starts_on"]),
            )
        )
        self.bank_balance += protected_part_of_price(plan["price"], self.expected_ratio)
        note(f"sold {card['id']}: {plan}, ratio {self.expected_ratio} bp")

    # -- steps -------------------------------------------------------------------------------------------------

    async def record(self, card: CardModel) -> None:
        left = card.units_total - card.units_used
        units = self.draw(
            st.one_of(st.integers(1, max(1, min(left, 3))), st.integers(1, max(1, left)), st.just(left + 1)),
            label="units",
        )
        body: dict[str, Any] = (
            {"sessions": units} if card.kind != "stored_value" else {"face_value": {"amount": units, "currency": "CNY"}}
        )
        in_roll = self.draw(st.booleans(), label="in a class roll")  # the same checks either way
        if in_roll:
            response = await self.client.post(
                "/v1/consumptions",
                json={"services": [{"card_id": card.id, **body}]},
                headers={**bearer(self.merchant.token), **key()},
            )
        else:
            response = await self.client.post(
                f"/v1/cards/{card.id}/consumptions", json=body, headers={**bearer(self.merchant.token), **key()}
            )
        if card.status != "active":
            assert response.status_code == 409 and response.json()["code"] == "card_not_active", response.text
            return
        if card.kind == "period":
            assert response.status_code == 409 and response.json()["code"] == "invalid_state", response.text
            return
        if units > left:
            assert response.status_code == 409 and response.json()["code"] == "exceeds_remaining", response.text
            return
        assert response.status_code == 201, response.text
        got = response.json()["consumptions"][0] if in_roll else response.json()
        # units k+1 … k+u are worth ⌊P·(k+u)/N⌋ less what was already taken, within what is left (pricing.py)
        expected = max(0, min(card.price * (card.units_used + units) // card.units_total, card.price) - card.consumed)
        assert got["value"]["amount"] == expected, (got, card)
        assert 0 <= got["protected"]["amount"] <= expected
        assert got["status"] == "pending_confirmation" and got["units"] == units
        card.units_used += units
        card.consumed += expected
        card.services.append(
            Service(
                got["id"],
                units,
                expected,
                got["protected"]["amount"],
                got["status"],
                datetime.fromisoformat(got["confirm_by"]),
            )
        )

    async def confirm(self, card: CardModel, service: Service) -> None:
        response = await self.client.post(
            f"/v1/consumptions/{service.id}/confirm", headers={**bearer(self.consumer), **key()}
        )
        assert response.status_code == 200 and response.json()["status"] == "confirmed", response.text
        service.status = "confirmed"
        card.released += service.value
        card.settle_exhausted()

    async def dispute(self, service: Service) -> None:
        response = await self.client.post(
            f"/v1/consumptions/{service.id}/dispute",
            json={"reason": "not delivered"},
            headers={**bearer(self.consumer), **key()},
        )
        assert response.status_code == 200 and response.json()["status"] == "disputed", response.text
        service.status = "disputed"

    async def resolve(self, card: CardModel, service: Service) -> None:
        outcome = self.draw(st.sampled_from(["void", "confirm"]), label="outcome")
        by = self.draw(st.sampled_from([self.merchant.token, self.regulator]), label="resolved by")
        response = await self.client.post(
            f"/v1/consumptions/{service.id}/resolve", json={"outcome": outcome}, headers={**bearer(by), **key()}
        )
        assert response.status_code == 200, response.text
        if outcome == "void":
            assert response.json()["status"] == "voided"
            service.status = "voided"
            card.voids += 1
            card.units_used -= service.units
            card.consumed -= service.value
        else:
            assert response.json()["status"] == "confirmed"
            service.status = "confirmed"
            card.released += service.value
            card.settle_exhausted()

    async def run_jobs(self, hours: int) -> None:
        self.offset += timedelta(hours=hours)
        now = self.base + self.offset
        await run_jobs_once(self.jobs, self.settings, now=now)
        today = business_date(now, self.settings.business_timezone)
        for card in self.cards:
            if card.status != "active":
                continue
            for service in card.open_services("pending_confirmation"):
                if service.confirm_by <= now:  # the window passed unanswered
                    service.status = "confirmed"
                    card.released += service.value
            if card.kind == "period":
                days = max(0, min((today - card.starts_on).days, card.units_total))
                card.units_used = days
                card.consumed = card.released = card.price * days // card.units_total  # ⌊P·k/D⌋, day by day
            card.settle_exhausted()
            if card.status == "active" and (today - card.starts_on).days >= card.plan.get("validity_days", 365):
                await self._expired(card)
        await self._collect_instructions()

    async def _expired(self, card: CardModel) -> None:
        """The expiry job refunds what is left (never forfeits it) of a card past its validity."""
        if card.open_services():
            return  # it waits for the services to be settled
        remaining = card.price - card.consumed - card.refunded
        card.refunded += remaining
        card.status = "expired_refunded"
        refunds = await self.client.get("/v1/refunds", headers=bearer(self.consumer))
        [refund] = [r for r in refunds.json() if r["card_id"] == card.id]
        assert refund["cause"] == "expiry" and refund["amount"]["amount"] == remaining, refund
        await self._refunded(card, refund)

    async def refund_blocked(self, card: CardModel) -> None:
        """With services open a refund is refused, and nothing moves."""
        quote = await self.client.get(f"/v1/cards/{card.id}/refund-quote", headers=bearer(self.consumer))
        assert quote.status_code == 200, quote.text
        response = await self.client.post(
            f"/v1/cards/{card.id}/refunds",
            json={"cause": "consumer", "expected_amount": quote.json()["amount"]},
            headers={**bearer(self.consumer), **key()},
        )
        assert response.status_code == 409 and response.json()["code"] == "services_pending", response.text

    async def payout(self) -> None:
        before = await account_totals(self.client, self.regulator, self.account)
        due = before["merchant_payable"] - before["payouts_in_flight"]
        run = await self.client.post("/v1/payout-runs", json={}, headers={**bearer(self.merchant.token), **key()})
        assert run.status_code == 201, run.text
        made = run.json()["instructions"]
        if due == 0:
            assert made == []
            return
        [instruction] = made
        assert instruction["kind"] == "payout" and instruction["amount"]["amount"] == due
        self.instructions[instruction["id"]] = Instruction(instruction["id"], "payout", due, None)

    async def bank_reports(self, instruction: Instruction, executed: bool | None = None) -> None:
        if executed is None:
            executed = self.draw(st.booleans(), label="executed")
        if executed:
            response = await self.client.post(
                f"/v1/instructions/{instruction.id}/executed",
                json={"bank_transaction_id": bank_transaction_id()},
                headers=key(),
                auth=self.bank.auth,
            )
            assert response.status_code == 200 and response.json()["status"] == "executed", response.text
            self.bank_balance -= instruction.amount
            if instruction.kind == "refund":
                self.refund_payable -= instruction.amount
        else:
            response = await self.client.post(
                f"/v1/instructions/{instruction.id}/failed",
                json={"reason": "beneficiary account closed"},
                headers=key(),
                auth=self.bank.auth,
            )
            assert response.status_code == 200 and response.json()["status"] == "failed", response.text
        del self.instructions[instruction.id]

    async def _collect_instructions(self) -> None:
        """Refund instructions made by the service itself (a refund, the expiry job, a re-instruction)."""
        response = await self.client.get("/v1/instructions?status=pending", auth=self.bank.auth)
        assert response.status_code == 200, response.text
        for i in response.json()["items"]:
            if i["escrow_account_id"] == self.account and i["id"] not in self.instructions:
                assert i["kind"] == "refund", i
                self.instructions[i["id"]] = Instruction(i["id"], i["kind"], i["amount"]["amount"], i["refund_id"])

    async def refund(self, card: CardModel, cause: str | None = None) -> None:
        cause = cause or self.draw(st.sampled_from(["consumer", "merchant"]), label="cause")
        quote = await self.client.get(f"/v1/cards/{card.id}/refund-quote?cause={cause}", headers=bearer(self.consumer))
        assert quote.status_code == 200, quote.text
        q = quote.json()
        expected, rule_cause = self.expected_refund(card, cause)
        assert q["cause"] == rule_cause and q["amount"]["amount"] == expected, (q, card)
        response = await self.client.post(
            f"/v1/cards/{card.id}/refunds",
            json={"cause": cause, "expected_amount": q["amount"]},
            headers={**bearer(self.consumer), **key()},
        )
        assert response.status_code == 201, response.text
        refund = response.json()
        if refund["status"] == "requested":
            assert rule_cause == "merchant"
            if self.draw(st.booleans(), label="approved"):
                by = self.draw(st.sampled_from([self.merchant.token, self.regulator]), label="approved by")
                approved = await self.client.post(
                    f"/v1/refunds/{refund['id']}/approve", headers={**bearer(by), **key()}
                )
                assert approved.status_code == 200, approved.text
                refund = approved.json()
            else:
                rejected = await self.client.post(
                    f"/v1/refunds/{refund['id']}/reject",
                    json={"reason": "the service was delivered as agreed"},
                    headers={**bearer(self.merchant.token), **key()},
                )
                assert rejected.status_code == 200 and rejected.json()["status"] == "rejected", rejected.text
                await self.check()
                await self.refund(card, "consumer")  # the consumer may still end the card on their own
                return
        assert refund["status"] in ("instructed", "paid"), refund
        remaining = card.price - card.consumed - card.refunded
        assert refund["amount"]["amount"] == expected and refund["retained"]["amount"] == remaining - expected
        card.released += remaining - expected  # what the list price keeps back is released as delivered
        card.consumed += remaining - expected
        card.refunded += expected
        card.status = "refunded"
        await self._refunded(card, refund)

    async def _refunded(self, card: CardModel, refund: dict[str, Any]) -> None:
        parts = refund["from_custody"]["amount"], refund["set_off"]["amount"], refund["merchant_owes"]["amount"]
        assert sum(parts) == refund["amount"]["amount"] and min(parts) >= 0, refund
        card.refunds.append(refund)
        self.refund_payable += parts[0] + parts[1]
        await self._collect_instructions()
        ours = [i for i in self.instructions.values() if i.refund_id == refund["id"]]
        if parts[0] + parts[1]:
            assert [i.amount for i in ours] == [parts[0] + parts[1]]
        else:
            assert ours == [] and refund["status"] == "paid"

    def expected_refund(self, card: CardModel, cause: str) -> tuple[int, str]:
        """The refund domain.md §5 gives now: (amount, cause as the quote names it)."""
        remaining = card.price - card.consumed - card.refunded
        if card.units_used == 0 and cause in ("consumer", "merchant"):
            return card.price, "cooling_off"  # paid today: within the cooling-off days
        if cause == "merchant" or card.kind == "period":
            return remaining, cause
        if card.kind == "sessions":
            list_price = card.plan.get("list_price_per_session")
            charged = card.units_used * list_price if list_price else card.consumed
        else:
            charged = card.units_used  # face value spent; gifted credit is not money
        return max(0, min(remaining, card.price - charged)), cause

    # -- invariants --------------------------------------------------------------------------------------------

    async def check(self) -> None:
        report = await verify_database(self.engine)
        assert report.ok, [c for c in report.checks if not c.ok]
        async with self.engine.connect() as connection:
            journal = (
                await connection.execute(
                    text(
                        "SELECT a.code, e.kind, p.side, p.kind, sum(p.amount)"
                        " FROM ledger_accounts a JOIN ledger_postings p ON p.account_id = a.id"
                        " JOIN ledger_entries e ON e.id = p.entry_id"
                        " WHERE a.escrow_account_id = :book"
                        "   AND (a.code LIKE 'card:%' OR a.code LIKE 'card_unprotected:%')"
                        " GROUP BY 1, 2, 3, 4"
                    ),
                    {"book": self.account},
                )
            ).all()
            rows = {
                r.id: r
                for r in (
                    await connection.execute(
                        text("SELECT * FROM cards WHERE escrow_account_id = :book"), {"book": self.account}
                    )
                ).all()
            }
        sums: dict[tuple[str, str, str, str], int] = {(c, k, s, pk): int(v) for c, k, s, pk, v in journal}
        details = {}
        for card in self.cards:
            d = await card_detail(self.client, self.consumer, card.id)
            details[card.id] = d
            money = {k: d[k]["amount"] for k in ("value_remaining", "protected", "unprotected", "pending")}
            money |= {k: d[k]["amount"] for k in ("released", "refunded")}
            row = rows[card.id]
            context = (card, d)
            # the model
            assert d["status"] == card.status, context
            assert d["custody_ratio_bp"] == card.ratio_bp
            assert d["units_remaining"] == card.units_total - card.units_used >= 0, context
            assert money["released"] == card.released and money["refunded"] == card.refunded, context
            assert money["pending"] == card.pending, context
            assert money["value_remaining"] == card.price - card.released - card.refunded, context
            assert money["protected"] + money["unprotected"] == money["value_remaining"]
            assert money["protected"] >= 0 and money["unprotected"] >= 0
            assert {s["consumption_id"] for s in d["pending_services"]} == {s.id for s in card.open_services()}
            assert 0 <= row.units_used <= row.units_total
            assert row.released == card.released and row.refunded == card.refunded
            # invariant 4, custodied and unprotected parts alike, from the journal
            parts = {}
            for part, code in (("custodied", f"card:{card.id}"), ("unprotected", f"card_unprotected:{card.id}")):
                kinds = {(k, s, pk): v for (c, k, s, pk), v in sums.items() if c == code}
                paid = kinds.pop(("card_paid", "C", "posted"), 0)
                released = kinds.pop(("consumption", "D", "posted"), 0) + kinds.pop(("release", "D", "posted"), 0)
                refunded = kinds.pop(("refund", "D", "posted"), 0)
                held = kinds.pop(("consumption", "D", "pending"), 0) - kinds.pop(("consumption", "D", "release"), 0)
                assert kinds == {}, f"{code}: unexpected postings {kinds}"
                parts[part] = (paid, released, refunded, paid - released - refunded, held)
            (c_paid, c_released, c_refunded, c_left, c_held) = parts["custodied"]
            (u_paid, u_released, u_refunded, u_left, u_held) = parts["unprotected"]
            protected_paid = rule_share(card.price, card.ratio_bp)
            assert (c_paid, u_paid) == (protected_paid, card.price - protected_paid), context
            assert (c_left, u_left) == (money["protected"], money["unprotected"]), (parts, context)
            assert c_paid == c_released + c_refunded + c_left and u_paid == u_released + u_refunded + u_left
            assert c_released + u_released == card.released and c_refunded + u_refunded == card.refunded, parts
            assert c_held + u_held == card.pending and 0 <= c_held <= c_left and 0 <= u_held <= u_left, parts
            assert row.protected_out == c_released + c_refunded + c_held, (row, parts)
            if card.refunds:
                last = card.refunds[-1]
                assert c_refunded == last["from_custody"]["amount"]
                assert u_refunded == last["set_off"]["amount"] + last["merchant_owes"]["amount"]
            if not card.voids and not card.refunds:
                # custody's share of what left the card is ⌈out·r⌉, rounded up (pricing.py), when nothing was voided
                assert c_released + c_held == rule_share(card.consumed, card.ratio_bp), (parts, context)
            if card.kind != "period" and not card.refunds:
                confirmed = [s for s in card.services if s.status == "confirmed"]
                assert c_released == sum(s.protected for s in confirmed), (parts, confirmed)
                assert c_held == sum(s.protected for s in card.open_services())
        # invariant 3 for the account, against the bank's side of the story
        totals = await account_totals(self.client, self.regulator, self.account)
        assert totals["custody_cash"] == self.bank_balance, (totals, self.bank_balance)
        assert (
            totals["custody_cash"] == totals["cards_protected"] + totals["merchant_payable"] + totals["refund_payable"]
        )
        assert totals["refund_payable"] == self.refund_payable, totals
        assert totals["cards_protected"] == sum(d["protected"]["amount"] for d in details.values())
        assert totals["cards_unprotected"] == sum(d["unprotected"]["amount"] for d in details.values())
        in_flight = sum(i.amount for i in self.instructions.values() if i.kind == "payout")
        assert totals["payouts_in_flight"] == in_flight <= totals["merchant_payable"], totals
        assert totals["cards_active"] == sum(c.status == "active" for c in self.cards)

    # -- the driver --------------------------------------------------------------------------------------------

    def possible(self) -> list[tuple[str, Any]]:
        steps: list[tuple[str, Any]] = [("time passes", None), ("payout", None)]
        for card in self.cards:
            steps += [("record", card)] * 3
            for service in card.open_services("pending_confirmation"):
                steps += [("confirm", (card, service)), ("dispute", (card, service))]
            steps += [("resolve", (card, s)) for s in card.open_services("disputed")]
            if card.status == "active" and card.open_services():
                steps.append(("refund blocked", card))
        steps += [("bank reports", i) for i in self.instructions.values()]
        return steps

    async def step(self) -> None:
        name, target = self.draw(st.sampled_from(self.possible()), label="step")
        note(f"step: {name} {getattr(target, 'id', target)}")
        if name == "record":
            await self.record(target)
        elif name == "confirm":
            await self.confirm(*target)
        elif name == "dispute":
            await self.dispute(target[1])
        elif name == "resolve":
            await self.resolve(*target)
        elif name == "refund blocked":
            await self.refund_blocked(target)
        elif name == "time passes":
            await self.run_jobs(self.draw(st.sampled_from([25, 24, 49, 24 * 7]), label="hours"))
        elif name == "payout":
            await self.payout()
        else:
            await self.bank_reports(target)
        await self.check()

    async def finish(self) -> None:
        """Settle every open service, end each card (a refund, or nothing), maybe let the cards expire, and have
        the bank carry out (or fail and later carry out) every instruction."""
        for card in self.cards:
            for service in card.open_services():
                if service.status == "pending_confirmation" and self.draw(st.booleans(), label="confirm it"):
                    await self.confirm(card, service)
                else:
                    if service.status == "pending_confirmation":
                        await self.dispute(service)
                    await self.resolve(card, service)
                await self.check()
        for card in self.cards:
            if card.status == "active" and self.draw(st.sampled_from([True, True, False]), label="refund"):
                await self.refund(card)
                await self.check()
            elif card.status != "active":
                quote = await self.client.get(f"/v1/cards/{card.id}/refund-quote", headers=bearer(self.consumer))
                assert quote.status_code == 409 and quote.json()["code"] == "card_not_active", quote.text
        if self.draw(st.booleans(), label="expire what is left"):
            longest = max(c.plan.get("validity_days", 365) for c in self.cards)
            await self.run_jobs((longest + 2) * 24)
            assert all(c.status != "active" for c in self.cards)
            await self.check()
        await self.payout()
        await self.check()
        for attempt in itertools.count():
            if not self.instructions:
                break
            # at first the bank may fail some (a failed refund is instructed again by the jobs), then it pays
            await self.bank_reports(next(iter(self.instructions.values())), executed=True if attempt > 3 else None)
            await self.run_jobs(1)
            await self.check()
        if all(c.status != "active" for c in self.cards):
            totals = await account_totals(self.client, self.regulator, self.account)
            assert totals["cards_protected"] == totals["refund_payable"] == 0, totals
            assert totals["custody_cash"] == totals["merchant_payable"], totals


class TestCardLivesThroughTheApi:
    @pytest.mark.slow
    @THROUGH_THE_API
    @given(
        plan_list=st.lists(plans(), min_size=1, max_size=2),
        custody_choice=custody(),
        data=st.data(),
    )
    async def test_every_step_keeps_paid_equal_released_refunded_and_remaining(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        engine: AsyncEngine,
        settings: Settings,
        plan_list: list[dict[str, Any]],
        custody_choice: tuple[str, str, str],
        data: st.DataObject,
    ) -> None:
        world = CardLives(client, engine, settings, data)
        await world.open(await regulator_token(session), custody_choice)
        for plan in plan_list:
            await world.sell(plan)
        await world.check()
        for _ in range(data.draw(st.integers(0, 14), label="steps")):
            await world.step()
        await world.finish()
        event(f"ratio {world.expected_ratio} bp")
        for card in world.cards:
            event(f"{card.kind} card ends {card.status}")
