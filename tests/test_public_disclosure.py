"""Public disclosure (issue #14 §4): anonymous search and a merchant's public facts, exactly those fields and no
personal data; and the anonymous /public page."""

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from tests.closing import order_closure
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

FIELDS = {
    "id",
    "name",
    "category",
    "uscc",
    "status",
    "custody",
    "credit_rating",
    "white_list",
    "closing",
    "closure",
    "complaints_upheld",
}
PHONE = "13900000081"


async def a_shop_with_complaints(client: httpx.AsyncClient, session: AsyncSession) -> dict:
    regulator = await regulator_token(session)
    bank = await onboard_bank(client, regulator, "PUBL")
    merchant = await onboard_merchant(client, regulator, "晨光健身 Yoga_100%", rating="A")
    await open_escrow_account(client, merchant, bank)
    plan = await create_plan(client, merchant, kind="sessions", price=100_000, sessions=10)
    consumer_id, consumer = await consumer_token(client, merchant, PHONE)
    card_id = await sell_and_pay(client, merchant, bank, plan["id"], consumer_id)
    complaints = []
    for category, outcome in (
        ("refund_refused", "upheld"),
        ("refund_refused", "partly_upheld"),
        ("service_not_delivered", "upheld"),
        ("other", "rejected"),
        ("contract_terms", None),
    ):
        filed = await client.post(
            "/v1/complaints",
            json={"merchant_id": merchant.id, "card_id": card_id, "category": category, "text": "私密的投诉内容"},
            headers={**bearer(consumer), **key()},
        )
        assert filed.status_code == 201, filed.text
        complaints.append(filed.json()["id"])
        if outcome:
            mediated = await client.post(
                f"/v1/complaints/{filed.json()['id']}/mediate",
                json={"outcome": outcome, "note": "调解备注"},
                headers={**bearer(regulator), **key()},
            )
            assert mediated.status_code == 200, mediated.text
    shown = await client.get(f"/v1/merchants/{merchant.id}", headers=bearer(regulator))
    return {
        "regulator": regulator,
        "merchant": merchant,
        "uscc": shown.json()["uscc"],
        "consumer_id": consumer_id,
        "card_id": card_id,
        "bank": bank,
    }


async def test_a_merchant_s_public_facts_and_nothing_more(client: httpx.AsyncClient, session: AsyncSession) -> None:
    shop = await a_shop_with_complaints(client, session)
    response = await client.get(f"/v1/public/merchants/{shop['merchant'].id}")  # anonymous
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == FIELDS
    assert body["name"] == "晨光健身 Yoga_100%" and body["uscc"] == shop["uscc"] and body["status"] == "active"
    assert body["custody"] == {
        "in_bank_custody": True,
        "custodian_banks": ["Bank PUBL"],
        "model": "full",
        "ratio_bp": 10_000,
    }
    assert body["credit_rating"] == "A" and body["white_list"] is False  # not graded yet
    assert body["closing"] is False and body["closure"] is None
    upheld = body["complaints_upheld"]
    assert upheld["upheld"] == 2 and upheld["partly_upheld"] == 1
    assert upheld["by_category"] == {"refund_refused": 2, "service_not_delivered": 1}
    # the merchant's own credit code is public and may contain any four digits: look for private data elsewhere
    text = response.text.replace(shop["uscc"], "")
    for private in (shop["consumer_id"], shop["card_id"], PHONE, PHONE[-4:], "私密的投诉内容", "调解备注", "6222"):
        assert private not in text, private


async def test_search_by_name_part_or_exact_code(client: httpx.AsyncClient, session: AsyncSession) -> None:
    shop = await a_shop_with_complaints(client, session)
    other = await onboard_merchant(client, shop["regulator"], "Lemon Salon", "salon")
    for q in ("晨光", "yoga", "Yoga_100%", shop["uscc"], shop["uscc"].lower()):
        found = await client.get("/v1/public/merchants", params={"q": q})
        assert found.status_code == 200, found.text
        assert [m["id"] for m in found.json()["items"]] == [shop["merchant"].id], q
    # the LIKE wildcards are literal: "%" and "_" match only themselves
    for q in ("%", "_", shop["uscc"][:10], "nobody"):
        found = await client.get("/v1/public/merchants", params={"q": q})
        ids = [m["id"] for m in found.json()["items"]]
        assert other.id not in ids and (q in ("%", "_") or ids == []), (q, ids)
    assert set(found.json()["items"] or [{}][0]) <= FIELDS


async def test_pages_of_at_most_50(client: httpx.AsyncClient, session: AsyncSession) -> None:
    regulator = await regulator_token(session)
    made = [(await onboard_merchant(client, regulator, f"Gym {n}")).id for n in range(3)]
    first = await client.get("/v1/public/merchants", params={"q": "Gym", "limit": 2})
    assert [m["id"] for m in first.json()["items"]] == made[:2] and first.json()["next_cursor"]
    rest = await client.get(
        "/v1/public/merchants", params={"q": "Gym", "limit": 2, "cursor": first.json()["next_cursor"]}
    )
    assert [m["id"] for m in rest.json()["items"]] == made[2:] and rest.json()["next_cursor"] is None
    assert (await client.get("/v1/public/merchants", params={"q": "Gym", "limit": 51})).status_code == 422


async def test_the_query_is_bounded(client: httpx.AsyncClient) -> None:
    for q in ("", "x" * 101, "a\x00b", "   "):
        response = await client.get("/v1/public/merchants", params={"q": q})
        assert response.status_code == 422 and response.json()["errors"][0]["rule"], (q, response.text)
    assert (await client.get("/v1/public/merchants")).status_code in (400, 422)  # q is required
    assert (await client.get("/v1/public/merchants/mer_01JX0000000000000000000000")).status_code == 404


async def test_a_closing_merchant_shows_it(client: httpx.AsyncClient, session: AsyncSession) -> None:
    regulator = await regulator_token(session)
    merchant = await onboard_merchant(client, regulator, "Vanishing Gym")
    await order_closure(client, regulator, merchant.id)
    body = (await client.get(f"/v1/public/merchants/{merchant.id}")).json()
    assert body["closing"] is True and body["closure"]["mode"] == "ordered"
    assert body["custody"]["in_bank_custody"] is False


class TestPublicPage:
    async def test_the_search_page_renders_in_chinese_without_a_session(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        shop = await a_shop_with_complaints(client, session)
        empty = await client.get("/public")
        assert empty.status_code == 200 and "商家信息公示查询" in empty.text, empty.text
        page = await client.get("/public", params={"q": "晨光"})
        assert page.status_code == 200, page.text
        assert (
            f'data-merchant="{shop["merchant"].id}"' in page.text
            and "data-white-list" in page.text
            and "尚未评定" not in page.text
        )
        assert 'data-upheld="2"' in page.text and 'data-partly-upheld="1"' in page.text and "已托管" in page.text
        assert "私密的投诉内容" not in page.text and PHONE not in page.text
        assert "content-security-policy" in page.headers
        one = await client.get(f"/public/merchants/{shop['merchant'].id}?lang=en")
        assert one.status_code == 200 and "Not assessed" not in one.text
        none = await client.get("/public", params={"q": "nobody"})
        assert "没有找到" in none.text

    async def test_a_stale_session_cookie_does_not_matter(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/public", headers={"cookie": "escrow_session=v1:AAAA"})
        assert response.status_code == 200

    async def test_hostile_queries_are_refused(self, client: httpx.AsyncClient) -> None:
        for q in ("a\x00b", "x" * 101):
            response = await client.get("/public", params={"q": q})
            assert 400 <= response.status_code < 500, response.text
