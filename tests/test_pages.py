"""The consumer's pages, through the app: the session cookie, CSRF on forms, the CSP, and the figures the API shows."""

import re
from datetime import timedelta

import httpx
import pytest
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.kit.clock import utcnow
from escrow.pages import CONTENT_SECURITY_POLICY, yuan
from escrow.pages.session import COOKIE, session_cookie
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
    sms_code_for,
)


def signed_in(app: Litestar, token: str) -> dict[str, str]:
    cookie = session_cookie(app.state.keyring, token, max_age=3600)
    return {"cookie": f"{COOKIE}={cookie.value}"}


@pytest.fixture
async def shop(client: httpx.AsyncClient, session: AsyncSession) -> dict:
    regulator = await regulator_token(session)
    bank = await onboard_bank(client, regulator, "PAGE")
    merchant = await onboard_merchant(client, regulator, "晨光健身")
    await open_escrow_account(client, merchant, bank)
    plan = await create_plan(client, merchant, kind="sessions", price=100_000, sessions=10, name="私教 10 次")
    consumer_id, consumer = await consumer_token(client, merchant, "13900000011")
    card_id = await sell_and_pay(client, merchant, bank, plan["id"], consumer_id)
    recorded = await client.post(
        f"/v1/cards/{card_id}/consumptions", json={"sessions": 1}, headers={**bearer(merchant.token), **key()}
    )
    assert recorded.status_code == 201, recorded.text
    return {"consumer": consumer, "card_id": card_id, "service_id": recorded.json()["id"], "merchant": merchant.token}


class TestConsumerPages:
    async def test_without_a_session_the_pages_send_you_to_sign_in(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/app/cards")
        assert response.status_code in (302, 303) and response.headers["location"] == "/app/sign-in"

    async def test_a_forged_cookie_is_no_session(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/app/cards", headers={"cookie": f"{COOKIE}=v1:AAAA"})
        assert response.status_code in (302, 303)

    async def test_my_cards_show_the_protected_part_in_chinese(
        self, client: httpx.AsyncClient, app: Litestar, shop: dict
    ) -> None:
        response = await client.get("/app/cards", headers=signed_in(app, shop["consumer"]))
        assert response.status_code == 200, response.text
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        page = response.text
        assert "晨光健身" in page and "私教 10 次" in page
        assert "银行托管保障" in page and yuan(100_000) in page  # the pending service is still the consumer's
        assert '<script src="/static/htmx-2.0.11/htmx.min.js"' in page and "<script>" not in page
        english = await client.get("/app/cards?lang=en", headers=signed_in(app, shop["consumer"]))
        assert "Protected by bank custody" in english.text

    async def test_confirming_a_service_needs_the_csrf_token(
        self, client: httpx.AsyncClient, app: Litestar, shop: dict
    ) -> None:
        session = signed_in(app, shop["consumer"])
        page = await client.get(f"/app/cards/{shop['card_id']}", headers=session)
        assert page.status_code == 200, page.text
        assert yuan(10_000) in page.text  # the pending service
        csrf = re.search(r'"x-csrftoken": "([^"]+)"', page.text).group(1)
        csrf_cookie = page.cookies.get("escrow_csrf")
        url = f"/app/services/{shop['service_id']}/confirm"
        forged = await client.post(url, headers={**session, **key()})
        assert forged.status_code == 403
        confirmed = await client.post(
            url,
            headers={
                **session,
                **key(),
                "x-csrftoken": csrf,
                "cookie": f"{session['cookie']}; escrow_csrf={csrf_cookie}",
            },
        )
        assert confirmed.status_code == 200, confirmed.text
        assert 'data-service-status="confirmed"' in confirmed.text
        card = await client.get(f"/v1/cards/{shop['card_id']}", headers=bearer(shop["consumer"]))
        assert card.json()["released"]["amount"] == 10_000

    async def test_another_consumers_card_is_not_shown(
        self, client: httpx.AsyncClient, app: Litestar, shop: dict, session: AsyncSession
    ) -> None:
        regulator = await regulator_token(session)
        merchant = await onboard_merchant(client, regulator, "Other gym")
        _, stranger = await consumer_token(client, merchant, "13900000012")
        response = await client.get(f"/app/cards/{shop['card_id']}", headers=signed_in(app, stranger))
        assert response.status_code == 404 and 'role="alert"' in response.text
        assert "晨光健身" not in response.text and "¥" not in response.text  # nothing of the card

    @pytest.mark.parametrize("card_id", ["%00", "x" * 300, "card_%E2%80%AE", "..%2F..%2Fetc"])
    async def test_hostile_ids_are_refused_on_the_page(
        self, client: httpx.AsyncClient, app: Litestar, shop: dict, card_id: str
    ) -> None:
        session = signed_in(app, shop["consumer"])
        for path in (f"/app/cards/{card_id}", f"/app/cards/{card_id}/refund"):
            response = await client.get(path, headers=session)
            assert response.status_code < 500, (path, response.text)


def csrf_of(page: httpx.Response) -> tuple[str, str]:
    return re.search(r'"x-csrftoken": "([^"]+)"', page.text).group(1), page.cookies["escrow_csrf"]


class TestCounterPage:
    async def test_a_merchant_signs_in_sells_and_records(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        regulator = await regulator_token(session)
        bank = await onboard_bank(client, regulator, "CNTR")
        merchant = await onboard_merchant(client, regulator, "柠檬美发")
        await open_escrow_account(client, merchant, bank)
        await create_plan(client, merchant, kind="sessions", price=60_000, sessions=6, name="洗剪吹 6 次")
        sign_in_page = await client.get("/counter/sign-in")
        csrf, csrf_cookie = csrf_of(sign_in_page)
        wrong = await client.post(
            "/counter/sign-in",
            data={"token": "esk_mer_nope"},
            headers={"x-csrftoken": csrf, "cookie": f"escrow_csrf={csrf_cookie}"},
        )
        assert (
            wrong.status_code == 401
            and 'role="alert"' in wrong.text
            and COOKIE not in wrong.headers.get("set-cookie", "")
        )
        signed = await client.post(
            "/counter/sign-in",
            data={"token": merchant.token},
            headers={"x-csrftoken": csrf, "cookie": f"escrow_csrf={csrf_cookie}"},
        )
        assert signed.status_code == 200 and signed.headers["hx-redirect"] == "/counter", signed.text
        session_value = signed.cookies[COOKIE]
        assert "httponly" in signed.headers["set-cookie"].lower() and "secure" in signed.headers["set-cookie"].lower()
        cookie = f"{COOKIE}={session_value}; escrow_csrf={csrf_cookie}"
        counter = await client.get("/counter", headers={"cookie": cookie})
        assert counter.status_code == 200 and "洗剪吹 6 次" in counter.text and yuan(0) in counter.text
        plan_id = re.search(r'<option value="([^"]+)"', counter.text).group(1)
        form_headers = {"cookie": cookie, "x-csrftoken": re.search(r'"x-csrftoken": "([^"]+)"', counter.text).group(1)}
        sold = await client.post(
            "/counter/sales", data={"phone": "13900000021", "plan_id": plan_id}, headers={**form_headers, **key()}
        )
        assert sold.status_code == 200 and "data-reference" in sold.text, sold.text
        card_id = re.search(r'data-sold="([^"]+)"', sold.text).group(1)
        card = await client.get(f"/v1/cards/{card_id}", headers=bearer(merchant.token))
        assert card.json()["status"] == "awaiting_payment"
        out = await client.post("/counter/sign-out", headers={**form_headers, **key()})
        assert out.status_code == 200
        after = await client.get("/counter", headers={"cookie": cookie})
        assert after.status_code in (302, 303)  # the counter session's token is revoked
        still = await client.get("/v1/me", headers=bearer(merchant.token))
        assert still.status_code == 200  # the merchant's own API token is untouched


async def test_the_presence_panel_shows_the_code_and_its_qr(
    client: httpx.AsyncClient, app: Litestar, shop: dict
) -> None:
    session = signed_in(app, shop["consumer"])
    page = await client.get(f"/app/cards/{shop['card_id']}", headers=session)
    assert f'hx-get="/app/cards/{shop["card_id"]}/presence"' in page.text
    panel = await client.get(f"/app/cards/{shop['card_id']}/presence", headers=session)
    assert panel.status_code == 200 and "<svg" in panel.text
    code = re.search(r"data-presence-code>(\d{6})<", panel.text).group(1)
    api = await client.get(f"/v1/cards/{shop['card_id']}/presence-code", headers=bearer(shop["consumer"]))
    assert api.json()["code"] == code


async def test_a_consumer_signs_in_on_the_page_with_the_code_sent_to_the_phone(
    client: httpx.AsyncClient, app: Litestar, session: AsyncSession
) -> None:
    page = await client.get("/app/sign-in")
    csrf, csrf_cookie = csrf_of(page)
    headers = {"x-csrftoken": csrf, "cookie": f"escrow_csrf={csrf_cookie}"}
    bad = await client.post("/app/sign-in/code", data={"phone": "12345"}, headers={**headers, **key()})
    assert bad.status_code == 422 and 'role="alert"' in bad.text
    sent = await client.post("/app/sign-in/code", data={"phone": "13900000031"}, headers={**headers, **key()})
    assert sent.status_code == 200 and 'name="code"' in sent.text, sent.text
    code = await sms_code_for(session, "13900000031")
    assert code not in sent.text  # the code goes to the phone only
    wrong = await client.post(
        "/app/sign-in",
        data={"phone": "13900000031", "code": "000000" if code != "000000" else "111111"},
        headers=headers,
    )
    assert wrong.status_code == 422 and COOKIE not in wrong.headers.get("set-cookie", "")
    signed = await client.post("/app/sign-in", data={"phone": "13900000031", "code": code}, headers=headers)
    assert signed.status_code == 200 and signed.headers["hx-redirect"] == "/app/cards", signed.text
    cards = await client.get("/app/cards", headers={"cookie": f"{COOKIE}={signed.cookies[COOKIE]}"})
    assert cards.status_code == 200 and "我的预付卡" in cards.text


async def test_the_counter_records_a_service_with_the_presence_code(
    client: httpx.AsyncClient, app: Litestar, session: AsyncSession, shop: dict
) -> None:
    merchant_token = shop["merchant"]
    code = (await client.get(f"/v1/cards/{shop['card_id']}/presence-code", headers=bearer(shop["consumer"]))).json()
    page = await client.get("/counter", headers=signed_in(app, merchant_token))
    assert page.status_code == 200, page.text
    csrf, csrf_cookie = csrf_of(page)
    headers = {**signed_in(app, merchant_token), "x-csrftoken": csrf}
    headers["cookie"] += f"; escrow_csrf={csrf_cookie}"
    recorded = await client.post(
        "/counter/services",
        data={"card_id": shop["card_id"], "units": "1", "presence_code": code["code"]},
        headers={**headers, **key()},
    )
    assert recorded.status_code == 200, recorded.text
    assert 'data-service-status="confirmed"' in recorded.text


async def test_every_consumer_page_renders_for_a_real_card(
    client: httpx.AsyncClient, app: Litestar, shop: dict
) -> None:
    session = signed_in(app, shop["consumer"])
    for path in (
        "/app/cards",
        f"/app/cards/{shop['card_id']}",
        f"/app/cards/{shop['card_id']}/refund",
        "/app/closures",
    ):
        response = await client.get(path, headers=session)
        assert response.status_code in (200, 409), (path, response.text)
        assert "<html" in response.text, path


async def test_a_takeover_offered_is_answered_on_the_card_page(
    client: httpx.AsyncClient, app: Litestar, session: AsyncSession, shop: dict
) -> None:
    regulator = await regulator_token(session)
    successor = await onboard_merchant(client, regulator, "新晨光健身")
    await open_escrow_account(client, successor, await onboard_bank(client, regulator, "SUCC"))
    card = (await client.get(f"/v1/cards/{shop['card_id']}", headers=bearer(shop["consumer"]))).json()
    closure = await order_closure(client, regulator, card["merchant_id"], "the owner retires")
    proposed = await client.post(
        f"/v1/closures/{closure['id']}/takeover",
        json={"successor_merchant_id": successor.id, "deadline": (utcnow() + timedelta(days=10)).isoformat()},
        headers={**bearer(regulator), **key()},
    )
    assert proposed.status_code == 200, proposed.text
    consumer = signed_in(app, shop["consumer"])
    page = await client.get(f"/app/cards/{shop['card_id']}", headers=consumer)
    assert "data-takeover" in page.text and "新晨光健身" in page.text
    csrf, csrf_cookie = csrf_of(page)
    headers = {"x-csrftoken": csrf, "cookie": f"{consumer['cookie']}; escrow_csrf={csrf_cookie}"}
    answered = await client.post(
        f"/app/cards/{shop['card_id']}/takeover", data={"decision": "accept"}, headers={**headers, **key()}
    )
    assert answered.status_code == 200, answered.text
    again = await client.get(f"/app/cards/{shop['card_id']}", headers=consumer)
    assert 'data-takeover-decision="accept"' in again.text


@pytest.mark.parametrize(
    ("path", "form"),
    [
        ("/counter/services", {"card_id": "card_\x00", "units": "1"}),
        ("/counter/services", {"card_id": "x" * 600, "units": "1"}),
        ("/counter/services", {"card_id": "card_1", "units": "99999999999"}),
        ("/counter/sales", {"phone": "1390000\x00", "plan_id": "pln_1"}),
        ("/counter/sales", {"phone": "13900000041", "plan_id": "../etc"}),
    ],
)
async def test_hostile_form_fields_are_refused(
    client: httpx.AsyncClient, app: Litestar, shop: dict, path: str, form: dict
) -> None:
    page = await client.get("/counter", headers=signed_in(app, shop["merchant"]))
    csrf, csrf_cookie = csrf_of(page)
    headers = {
        "x-csrftoken": csrf,
        "cookie": f"{signed_in(app, shop['merchant'])['cookie']}; escrow_csrf={csrf_cookie}",
    }
    response = await client.post(path, data=form, headers={**headers, **key()})
    assert 400 <= response.status_code < 500 and 'role="alert"' in response.text, response.text


class TestComplaintsPage:
    async def test_a_consumer_files_a_complaint_on_the_page_and_sees_each_step(
        self, client: httpx.AsyncClient, app: Litestar, shop: dict, session: AsyncSession
    ) -> None:
        signed = signed_in(app, shop["consumer"])
        page = await client.get("/app/complaints", headers=signed)
        assert page.status_code == 200, page.text
        assert "晨光健身" in page.text and "data-complaint-form" in page.text and "服务未提供" in page.text
        merchant_id = re.search(r'<select name="merchant_id"><option value="([^"]+)"', page.text).group(1)
        csrf, csrf_cookie = csrf_of(page)
        form = {
            "merchant_id": merchant_id,
            "card_id": shop["card_id"],
            "category": "refund_refused",
            "text": "不给退款",
        }
        forged = await client.post("/app/complaints", data=form, headers={**signed, **key()})
        assert forged.status_code == 403
        headers = {**key(), "x-csrftoken": csrf, "cookie": f"{signed['cookie']}; escrow_csrf={csrf_cookie}"}
        filed = await client.post("/app/complaints", data=form, headers=headers)
        assert filed.status_code == 200 and filed.headers["hx-redirect"] == "/app/complaints", filed.text
        listed = await client.get("/v1/complaints", headers=bearer(shop["consumer"]))
        (complaint,) = listed.json()["items"]
        assert complaint["category"] == "refund_refused" and complaint["card_id"] == shop["card_id"]
        answered = await client.post(
            f"/v1/complaints/{complaint['id']}/answer",
            json={"answer": "已联系顾客"},
            headers={**bearer(shop["merchant"]), **key()},
        )
        assert answered.status_code == 200, answered.text
        regulator = await regulator_token(session)
        mediated = await client.post(
            f"/v1/complaints/{complaint['id']}/mediate",
            json={"outcome": "partly_upheld", "note": "退还一半"},
            headers={**bearer(regulator), **key()},
        )
        assert mediated.status_code == 200, mediated.text
        steps = (await client.get("/app/complaints", headers=signed)).text
        assert f'data-complaint="{complaint["id"]}"' in steps and "不给退款" in steps
        assert "已联系顾客" in steps and 'data-outcome="partly_upheld"' in steps and "部分成立" in steps

    @pytest.mark.parametrize(
        "form",
        [
            {"merchant_id": "../etc", "category": "other", "text": "x"},
            {"merchant_id": "mer_1", "card_id": "card_\x00", "category": "other", "text": "x"},
            {"category": "nonsense", "text": "x"},
            {"category": "other", "text": ""},
            {"category": "other", "text": "x" * 600},
        ],
    )
    async def test_bad_complaint_forms_are_refused(
        self, client: httpx.AsyncClient, app: Litestar, shop: dict, form: dict
    ) -> None:
        signed = signed_in(app, shop["consumer"])
        page = await client.get("/app/complaints", headers=signed)
        merchant_id = re.search(r'<select name="merchant_id"><option value="([^"]+)"', page.text).group(1)
        csrf, csrf_cookie = csrf_of(page)
        headers = {**key(), "x-csrftoken": csrf, "cookie": f"{signed['cookie']}; escrow_csrf={csrf_cookie}"}
        response = await client.post("/app/complaints", data={"merchant_id": merchant_id, **form}, headers=headers)
        assert 400 <= response.status_code < 500 and 'role="alert"' in response.text, response.text
