"""Credit grades and the 无事不扰 white list (issue #14 §2).

- the scoring function: adding an upheld complaint, an overdue refund or a penalty never improves a grade
  (hypothesis), and the same through the database (a run, a penalty, a run);
- an override holds, then lapses (the lapse job puts the computed grade back);
- white-list entry, exit as soon as a condition breaks, and re-entry only after the credit-repair period;
- a new grade moves the custody ratio of a new sale on the ratio model while an old card keeps its ratio;
- access: a merchant reads only its own credit and penalties (others: 404); consumers and banks 403.

The clock is moved by passing ``now`` to the service (``run``, ``standings``, ``apply_lapses``), as the jobs do.
"""

from datetime import date, timedelta

import httpx
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from escrow.config import Settings
from escrow.credit import scoring, service
from escrow.kit.clock import utcnow
from escrow.models import Merchant as MerchantRow
from tests.parties import (
    Merchant,
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

DEFAULTS = Settings(database_url="postgresql://unused@localhost/unused")
BAD = [f for f in scoring.FACTORS if f != scoring.BONUS]
_phones = iter(range(1, 10_000))
_decisions = iter(range(1, 100_000))


def grade_with(counts: dict[str, int]) -> scoring.Grading:
    return service.grading(DEFAULTS, counts)


# --- the scoring function --------------------------------------------------------------------------------------

counts_strategy = st.fixed_dictionaries({f: st.integers(0, 12) for f in scoring.FACTORS})


@hsettings(max_examples=300, deadline=None)
@given(
    counts=counts_strategy,
    added=st.sampled_from(
        [
            "complaints_upheld",
            "complaints_partly_upheld",
            "refunds_overdue_unpaid",
            "refunds_paid_late",
            "penalties_major",
            "penalties_minor",
        ]
    ),
    more=st.integers(1, 5),
)
def test_adding_a_complaint_an_overdue_refund_or_a_penalty_never_improves_a_grade(
    counts: dict[str, int], added: str, more: int
) -> None:
    before = grade_with(counts)
    after = grade_with({**counts, added: counts[added] + more})
    assert after.score <= before.score
    assert scoring.worse_or_equal(after.grade, before.grade)


@hsettings(max_examples=200, deadline=None)
@given(
    counts=counts_strategy,
    added=st.sampled_from(BAD),
    weights=st.fixed_dictionaries({f: st.integers(0, 50) for f in scoring.FACTORS}),
)
def test_no_bad_factor_improves_a_grade_whatever_the_weights(
    counts: dict[str, int], added: str, weights: dict[str, int]
) -> None:
    cutoffs = DEFAULTS.credit_grade_cutoffs
    before = scoring.score(counts, weights, cutoffs)
    after = scoring.score({**counts, added: counts[added] + 1}, weights, cutoffs)
    assert scoring.worse_or_equal(after.grade, before.grade) and after.score <= before.score


def test_every_factor_is_shown_with_count_weight_and_points() -> None:
    graded = grade_with({"penalties_major": 1, "complaints_upheld": 2, "age_years": 11})
    shown = {f.factor: f for f in graded.factors}
    assert list(shown) == list(scoring.FACTORS)
    assert (shown["penalties_major"].count, shown["penalties_major"].weight, shown["penalties_major"].points) == (
        1,
        40,
        -40,
    )
    assert shown["complaints_upheld"].points == -12
    assert shown["age_years"].points == 10  # counted up to 5 years, 2 points each
    assert graded.score == 100 - 40 - 12 + 10 == 58 and graded.grade == "D"


def test_weights_and_cutoffs_are_validated_settings() -> None:
    with pytest.raises(ValueError):
        Settings(credit_weights={**DEFAULTS.credit_weights, "penalties_major": -1})
    with pytest.raises(ValueError):
        Settings(credit_weights={"penalties_major": 1})
    with pytest.raises(ValueError):
        Settings(credit_grade_cutoffs={"A": 70, "B": 80, "C": 60})
    with pytest.raises(ValueError):
        Settings(white_list_money_complaint_categories=["money"])


def test_white_list_function_repair_period() -> None:
    today = date(2027, 1, 10)
    clear = dict.fromkeys(("grade_not_a", "major_penalty", "overdue_refund", "money_complaint", "closure"))
    assert scoring.white_list("A", clear, today, 365).on_list
    assert scoring.white_list("B", clear, today, 365).reasons == ("grade_not_a",)
    broke = {**clear, "grade_not_a": today - timedelta(days=364)}
    status = scoring.white_list("A", broke, today, 365)
    assert not status.on_list and status.reasons == ("credit_repair",) and status.repair_until == today + timedelta(1)
    assert scoring.white_list("A", broke, today + timedelta(days=1), 365).on_list


# --- through the database --------------------------------------------------------------------------------------


class World:
    def __init__(self, client: httpx.AsyncClient, session: AsyncSession, sessionmaker: async_sessionmaker) -> None:
        self.client, self.session, self.sessionmaker = client, session, sessionmaker

    async def start(self) -> "World":
        self.regulator = await regulator_token(self.session)
        self.bank = await onboard_bank(self.client, self.regulator, "CRED")
        return self

    async def shop(self, name: str, *, ratio: bool = False, rating: str = "B") -> Merchant:
        if ratio:
            merchant = await onboard_ratio_merchant(self.client, self.regulator, name, rating)
        else:
            merchant = await onboard_merchant(self.client, self.regulator, name, rating=rating, opened_on="2015-01-01")
        await open_escrow_account(self.client, merchant, self.bank)
        merchant.plan = (
            await create_plan(self.client, merchant, kind="sessions", sessions=10, price=100_000)  # type: ignore[attr-defined]
        )["id"]
        return merchant

    async def sell(self, merchant: Merchant) -> tuple[str, str]:
        consumer_id, token = await consumer_token(self.client, merchant, f"1381234{next(_phones):04d}")
        return await sell_and_pay(self.client, merchant, self.bank, merchant.plan, consumer_id), token  # type: ignore[attr-defined]

    async def run(self, now=None) -> dict:
        if now is None:
            ran = await self.client.post("/v1/credit/runs", headers={**bearer(self.regulator), **key()})
            assert ran.status_code == 200, ran.text
            return ran.json()
        async with self.sessionmaker() as session:
            outcome = await service.run(session, DEFAULTS_FOR_DB[0], now)
            await session.commit()
        return {"merchants": outcome.merchants}

    async def credit(self, merchant: Merchant, token: str | None = None) -> dict:
        got = await self.client.get(f"/v1/merchants/{merchant.id}/credit", headers=bearer(token or self.regulator))
        assert got.status_code == 200, got.text
        return got.json()

    async def penalty(self, merchant: Merchant, major: bool, decided_on: date | None = None) -> httpx.Response:
        return await self.client.post(
            f"/v1/merchants/{merchant.id}/penalties",
            json={
                "kind": "fine",
                "decided_on": (decided_on or date.today()).isoformat(),
                "decision_number": f"TEST-{next(_decisions)}",
                "major": major,
                "note": "test",
            },
            headers={**bearer(self.regulator), **key()},
        )

    async def upheld_complaint(self, merchant: Merchant, category: str = "refund_refused") -> None:
        _, consumer = await self.sell(merchant)
        filed = await self.client.post(
            "/v1/complaints",
            json={"merchant_id": merchant.id, "category": category, "text": "no refund"},
            headers={**bearer(consumer), **key()},
        )
        assert filed.status_code == 201, filed.text
        mediated = await self.client.post(
            f"/v1/complaints/{filed.json()['id']}/mediate",
            json={"outcome": "upheld", "note": "upheld"},
            headers={**bearer(self.regulator), **key()},
        )
        assert mediated.status_code == 200, mediated.text

    async def override(self, merchant: Merchant, grade: str, lapses_on: date) -> httpx.Response:
        return await self.client.post(
            f"/v1/merchants/{merchant.id}/credit/override",
            json={"grade": grade, "reason": "on-site inspection", "lapses_on": lapses_on.isoformat()},
            headers={**bearer(self.regulator), **key()},
        )


DEFAULTS_FOR_DB: list[Settings] = []


@pytest.fixture
def settings(settings: Settings) -> Settings:
    configured = settings.model_copy(update={"payout_hour": None})
    DEFAULTS_FOR_DB[:] = [configured]
    return configured


@pytest.fixture
async def world(client: httpx.AsyncClient, session: AsyncSession, sessionmaker: async_sessionmaker) -> World:
    return await World(client, session, sessionmaker).start()


def factor(credit: dict, name: str) -> dict:
    return next(f for f in credit["computed"]["factors"] if f["factor"] == name)


async def test_grades_fall_with_penalties_and_upheld_complaints_through_the_database(world: World) -> None:
    shop = await world.shop("Clean Gym")
    ran = await world.run()
    assert ran["merchants"] >= 1
    first = await world.credit(shop)
    assert first["grade"] == "A" and first["computed"]["score"] == 100
    assert factor(first, "age_years") == {"factor": "age_years", "count": factor(first, "age_years")["count"],
                                          "weight": 2, "points": 10}  # fmt: skip
    grades = [first["computed"]["score"]]
    for step in ("minor", "complaint", "major"):
        if step == "complaint":
            await world.upheld_complaint(shop)
        else:
            assert (await world.penalty(shop, major=step == "major")).status_code == 201
        await world.run()
        now = await world.credit(shop)
        grades.append(now["computed"]["score"])
        assert scoring.worse_or_equal(now["grade"], first["grade"])
    assert grades == [100, 100, 94, 54]  # 100 + 10 for age, kept to 100, then -10, -6, -40
    credit = await world.credit(shop)
    assert credit["grade"] == "D" and factor(credit, "penalties_major")["points"] == -40
    assert factor(credit, "complaints_upheld") == {"factor": "complaints_upheld", "count": 1, "weight": 6, "points": -6}
    listed = await world.client.get(f"/v1/merchants/{shop.id}/penalties", headers=bearer(shop.token))
    assert listed.status_code == 200 and sorted(p["major"] for p in listed.json()) == [False, True]
    merchant = await world.session.get(MerchantRow, shop.id)
    await world.session.refresh(merchant)
    assert merchant.credit_rating == "D"  # the effective grade is on the merchant
    history = (
        await world.session.execute(text("SELECT count(*) FROM credit_grades WHERE merchant_id = :m"), {"m": shop.id})
    ).scalar()
    assert history == 4


async def test_penalty_rules(world: World) -> None:
    shop = await world.shop("Rules Gym")
    future = await world.penalty(shop, major=False, decided_on=date.today() + timedelta(days=3))
    assert future.status_code == 422 and future.json()["errors"][0]["rule"] == "not_future"
    body = {"kind": "fine", "decided_on": "2026-01-05", "decision_number": "D-1", "major": False}
    first = await world.client.post(
        f"/v1/merchants/{shop.id}/penalties", json=body, headers={**bearer(world.regulator), **key()}
    )
    assert first.status_code == 201, first.text
    again = await world.client.post(
        f"/v1/merchants/{shop.id}/penalties", json=body, headers={**bearer(world.regulator), **key()}
    )
    assert again.status_code == 409 and again.json()["code"] == "penalty_already_recorded"


async def test_override_holds_then_lapses(world: World) -> None:
    shop = await world.shop("Override Gym")
    await world.run()
    assert (await world.credit(shop))["grade"] == "A"
    past = await world.override(shop, "C", date.today())
    assert past.status_code == 422 and past.json()["errors"][0]["rule"] == "after_today"
    lapses_on = date.today() + timedelta(days=10)
    overridden = await world.override(shop, "C", lapses_on)
    assert overridden.status_code == 200, overridden.text
    body = overridden.json()
    assert body["grade"] == "C" and body["computed"]["grade"] == "A"
    assert body["override"]["reason"] == "on-site inspection" and body["override"]["lapses_on"] == lapses_on.isoformat()
    audit = (
        (
            await world.session.execute(
                text("SELECT detail FROM audit_records WHERE action LIKE '%/credit/override' AND status = 200")
            )
        )
        .scalars()
        .all()
    )
    assert {"grade": "C", "reason": "on-site inspection", "lapses_on": lapses_on.isoformat()} in [
        {k: d.get(k) for k in ("grade", "reason", "lapses_on")} for d in audit
    ]
    # a run while it holds keeps the override's grade as the effective one
    await world.run()
    assert (await world.credit(shop))["grade"] == "C"
    merchant = await world.session.get(MerchantRow, shop.id)
    await world.session.refresh(merchant)
    assert merchant.credit_rating == "C"
    # on lapses_on the lapse job puts the computed grade back; reads by the date agree
    later = utcnow() + timedelta(days=11)
    async with world.sessionmaker() as session:
        assert await service.apply_lapses(session, DEFAULTS_FOR_DB[0], later) == 1
        await session.commit()
    await world.session.refresh(merchant)
    assert merchant.credit_rating == "A"
    async with world.sessionmaker() as session:
        row = await session.get(MerchantRow, shop.id)
        read = (await service.standings(session, DEFAULTS_FOR_DB[0], [row], later))[shop.id]
    assert read.effective_grade == "A" and read.override is None


async def test_white_list_entry_exit_and_repair(world: World) -> None:
    shop = await world.shop("Listed Gym")
    other = await world.shop("Money Gym")
    await world.run()
    assert (await world.credit(shop))["white_list"] == {
        "on_list": True,
        "reasons": [],
        "last_break_on": None,
        "repair_until": None,
    }
    listed = await world.client.get("/v1/credit/white-list", headers=bearer(world.regulator))
    assert {shop.id, other.id} <= {m["merchant_id"] for m in listed.json()}
    public = await world.client.get(f"/v1/public/merchants/{shop.id}")
    assert public.json()["white_list"] is True
    # an upheld complaint about money: off at once, without a run (the grade stays A until the next run)
    await world.upheld_complaint(other, "refund_refused")
    credit = await world.credit(other)
    assert credit["grade"] == "A" and not credit["white_list"]["on_list"]
    assert [r["reason"] for r in credit["white_list"]["reasons"]] == ["money_complaint"]
    # a major penalty: off at once
    assert (await world.penalty(shop, major=True)).status_code == 201
    credit = await world.credit(shop)
    assert [r["reason"] for r in credit["white_list"]["reasons"]] == ["major_penalty"]
    listed = await world.client.get("/v1/credit/white-list", headers=bearer(world.regulator))
    assert not {shop.id, other.id} & {m["merchant_id"] for m in listed.json()}
    assert (await world.client.get(f"/v1/public/merchants/{shop.id}")).json()["white_list"] is False


async def test_white_list_reentry_only_after_the_repair_period(world: World) -> None:
    shop = await world.shop("Repair Gym")
    await world.run()
    assert (await world.credit(shop))["white_list"]["on_list"]
    # an override to B breaks the grade condition; the run while it holds records a grade below A
    assert (await world.override(shop, "B", date.today() + timedelta(days=2))).status_code == 200
    credit = await world.credit(shop)
    assert [r["reason"] for r in credit["white_list"]["reasons"]] == ["grade_not_a"]
    await world.run()
    later = utcnow() + timedelta(days=3)  # the override lapsed: A again, but within the repair period
    await world.run(later)
    async with world.sessionmaker() as session:
        row = await session.get(MerchantRow, shop.id)
        read = (await service.standings(session, DEFAULTS_FOR_DB[0], [row], later))[shop.id]
        assert read.effective_grade == "A"
        assert read.white_list.reasons == ("credit_repair",)
        assert read.white_list.last_break_on is not None and read.white_list.repair_until is not None
        day_after = read.white_list.repair_until - read.white_list.last_break_on
        assert day_after == timedelta(days=DEFAULTS_FOR_DB[0].white_list_repair_days)
        back = later + timedelta(days=DEFAULTS_FOR_DB[0].white_list_repair_days)
        again = (await service.standings(session, DEFAULTS_FOR_DB[0], [row], back))[shop.id]
        assert again.white_list.on_list, again.white_list


async def test_a_new_grade_moves_the_custody_ratio_of_new_sales_only(world: World) -> None:
    shop = await world.shop("Ratio Gym", ratio=True, rating="B")
    old_card, consumer = await world.sell(shop)
    assert (await card_detail(world.client, consumer, old_card))["custody_ratio_bp"] == 6000
    await world.run()  # clean and old: A
    assert (await world.credit(shop))["grade"] == "A"
    new_card, new_consumer = await world.sell(shop)
    assert (await card_detail(world.client, new_consumer, new_card))["custody_ratio_bp"] == 4000
    assert (await world.penalty(shop, major=True)).status_code == 201
    await world.run()  # 100 + 10 (age) - 40: C
    assert (await world.credit(shop))["grade"] == "C"
    third, third_consumer = await world.sell(shop)
    assert (await card_detail(world.client, third_consumer, third))["custody_ratio_bp"] == 10_000
    assert (await card_detail(world.client, consumer, old_card))["custody_ratio_bp"] == 6000
    assert (await card_detail(world.client, new_consumer, new_card))["custody_ratio_bp"] == 4000


async def test_access_merchant_only_its_own(world: World) -> None:
    shop = await world.shop("Own Gym")
    other = await world.shop("Other Gym")
    await world.run()
    assert (await world.credit(shop, shop.token))["merchant_id"] == shop.id
    for path in (f"/v1/merchants/{other.id}/credit", f"/v1/merchants/{other.id}/penalties"):
        assert (await world.client.get(path, headers=bearer(shop.token))).status_code == 404
    refused = await world.client.post(
        f"/v1/merchants/{shop.id}/credit/override",
        json={"grade": "A", "reason": "me", "lapses_on": (date.today() + timedelta(days=5)).isoformat()},
        headers={**bearer(shop.token), **key()},
    )
    assert refused.status_code == 403
    assert (await world.client.get("/v1/credit/white-list", headers=bearer(shop.token))).status_code == 403
    assert (await world.client.post("/v1/credit/runs", headers={**bearer(shop.token), **key()})).status_code == 403
