"""The regulator's desk (issue #14 §5), through the app: the sign-in with the regulator's API token, the overview's
figures for a small world built through the API, the warnings queue's buttons (with CSRF), a merchant's charts, the
complaints queue, who may not open /desk, and hostile ids. The SVG chart helper is tested on its own first."""

import re
from datetime import UTC, datetime

import httpx
import pytest
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.pages import CONTENT_SECURITY_POLICY, charts, yuan
from escrow.pages.session import COOKIE, session_cookie
from tests.parties import (
    bearer,
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

# --- the chart helper ---------------------------------------------------------------------------------------------


def _inert(svg: str) -> None:
    """Nothing the CSP would block or that could run: no script, style attribute or element, event handler, link."""
    assert svg.startswith("<svg ") and svg.endswith("</svg>")
    lowered = svg.lower()
    for forbidden in ("<script", "style=", "<style", " on", "javascript:", "href", "<foreignobject"):
        assert forbidden not in lowered, forbidden


def test_a_bar_chart_draws_one_bar_per_value_to_scale_from_zero() -> None:
    svg = charts.bar_chart("Sales", ["2026-01", "2026-02", "2026-03"], [100, 0, 50])
    _inert(svg)
    bars = re.findall(
        r'<rect class="bar" x="[^"]+" y="([^"]+)" width="[^"]+" height="([^"]+)"[^>]*data-value="(-?\d+)"', svg
    )
    assert [int(v) for _, _, v in bars] == [100, 0, 50]
    heights = [float(h) for _, h, _ in bars]
    assert heights[1] == 0 and heights[0] == pytest.approx(2 * heights[2], abs=0.2)  # to scale, from zero
    assert "<title>Sales</title>" in svg and "2026-02" in svg


def test_a_line_chart_has_a_point_per_value_and_negative_values_stay_below_the_axis() -> None:
    svg = charts.line_chart("Custody", ["a", "b", "c"], [10, -10, 0])
    _inert(svg)
    assert svg.count("<circle ") == 3 and "<polyline " in svg
    ys = [float(y) for y in re.findall(r'<circle class="dot" cx="[^"]+" cy="([^"]+)"', svg)]
    assert ys[0] < ys[2] < ys[1]  # 10 above the zero line, -10 below it


def test_chart_texts_are_escaped_and_labels_must_match_values() -> None:
    svg = charts.bar_chart('<script>alert(1)</script>"', ["<b>&"], [1], fmt=lambda v: f"<{v}>")
    _inert(svg)
    assert "&lt;script&gt;" in svg and "&lt;b&gt;&amp;" in svg and "&lt;1&gt;" in svg
    with pytest.raises(ValueError):
        charts.bar_chart("x", ["a"], [1, 2])
    empty = charts.line_chart("nothing yet", [], [])
    _inert(empty)
    assert "<polyline" not in empty


# --- the world ----------------------------------------------------------------------------------------------------


def signed_in(app: Litestar, token: str) -> dict[str, str]:
    return {"cookie": f"{COOKIE}={session_cookie(app.state.keyring, token, max_age=3600).value}"}


def csrf_headers(app: Litestar, token: str, page: httpx.Response) -> dict[str, str]:
    csrf = re.search(r'"x-csrftoken": "([^"]+)"', page.text).group(1)
    return {
        "x-csrftoken": csrf,
        "cookie": f"{signed_in(app, token)['cookie']}; escrow_csrf={page.cookies['escrow_csrf']}",
    }


async def set_region(client: httpx.AsyncClient, regulator: str, merchant_id: str, region: str) -> None:
    changed = await client.post(
        f"/v1/merchants/{merchant_id}/region",
        json={"region": region, "reason": "test"},
        headers={**bearer(regulator), **key()},
    )
    assert changed.status_code == 200, changed.text


@pytest.fixture
async def world(client: httpx.AsyncClient, session: AsyncSession) -> dict:
    """A gym in 南山区 (full custody) selling a deep-discounted plan: one card of 900 yuan, one service recorded and
    disputed; a salon in 东城区 on the ratio model (A: 40 % in custody): one stored-value card of 500 yuan, so 200 yuan
    protected and 300 unprotected. The warnings run raises the gym's deep discount."""
    regulator = await regulator_token(session)
    bank = await onboard_bank(client, regulator, "DESK")
    gym = await onboard_merchant(client, regulator, "晨光健身", "gym")
    salon = await onboard_ratio_merchant(client, regulator, "柠檬美发", "A", category="salon")
    await set_region(client, regulator, gym.id, "440306")
    await set_region(client, regulator, salon.id, "110101")
    for merchant in (gym, salon):
        await open_escrow_account(client, merchant, bank)
    gym_plan = await create_plan(
        client, gym, kind="sessions", sessions=10, price=90_000, list_price_per_session=20_000, name="私教 10 次"
    )
    salon_plan = await create_plan(client, salon, kind="stored_value", price=50_000, face_value=50_000, name="储值卡")
    gym_consumer_id, gym_consumer = await consumer_token(client, gym, "13900000101")
    gym_card = await sell_and_pay(client, gym, bank, gym_plan["id"], gym_consumer_id)
    salon_consumer_id, salon_consumer = await consumer_token(client, salon, "13900000102")
    await sell_and_pay(client, salon, bank, salon_plan["id"], salon_consumer_id)
    recorded = await client.post(
        f"/v1/cards/{gym_card}/consumptions", json={"sessions": 1}, headers={**bearer(gym.token), **key()}
    )
    assert recorded.status_code == 201, recorded.text
    disputed = await client.post(
        f"/v1/consumptions/{recorded.json()['id']}/dispute",
        json={"reason": "没有上课"},
        headers={**bearer(gym_consumer), **key()},
    )
    assert disputed.status_code == 200, disputed.text
    ran = await client.post("/v1/warnings/runs", headers={**bearer(regulator), **key()})
    assert ran.status_code == 200 and ran.json()["opened"]["deep_discount"] == 1, ran.text
    return {
        "regulator": regulator,
        "gym": gym,
        "salon": salon,
        "gym_consumer": gym_consumer,
        "salon_consumer": salon_consumer,
        "gym_card": gym_card,
    }


# --- signing in and who may enter --------------------------------------------------------------------------------


async def test_the_regulator_signs_in_with_its_api_token_and_out_again(client: httpx.AsyncClient, world: dict) -> None:
    page = await client.get("/desk/sign-in")
    assert page.status_code == 200 and 'name="token"' in page.text
    csrf = re.search(r'"x-csrftoken": "([^"]+)"', page.text).group(1)
    headers = {"x-csrftoken": csrf, "cookie": f"escrow_csrf={page.cookies['escrow_csrf']}"}
    for wrong in ("esk_reg_nope", world["gym"].token):  # a guess, and a merchant's own valid token
        refused = await client.post("/desk/sign-in", data={"token": wrong}, headers=headers)
        assert refused.status_code == 401 and 'role="alert"' in refused.text
        assert COOKIE not in refused.headers.get("set-cookie", "")
    forged = await client.post("/desk/sign-in", data={"token": world["regulator"]})
    assert forged.status_code == 403  # no CSRF token
    signed = await client.post("/desk/sign-in", data={"token": world["regulator"]}, headers=headers)
    assert signed.status_code == 200 and signed.headers["hx-redirect"] == "/desk", signed.text
    set_cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "secure" in set_cookie and "samesite=strict" in set_cookie
    cookie = f"{COOKIE}={signed.cookies[COOKIE]}; escrow_csrf={page.cookies['escrow_csrf']}"
    overview = await client.get("/desk", headers={"cookie": cookie})
    assert overview.status_code == 200 and "监管工作台" in overview.text
    assert world["regulator"] not in overview.text
    out = await client.post("/desk/sign-out", headers={"cookie": cookie, "x-csrftoken": csrf, **key()})
    assert out.status_code == 200 and out.headers["hx-redirect"] == "/desk/sign-in"
    after = await client.get("/desk", headers={"cookie": cookie})
    assert after.status_code in (302, 303) and after.headers["location"] == "/desk/sign-in"  # the desk token revoked
    still = await client.get("/v1/warnings", headers=bearer(world["regulator"]))
    assert still.status_code == 200  # the regulator's own API token is untouched


async def test_without_a_session_the_desk_sends_you_to_its_sign_in(client: httpx.AsyncClient) -> None:
    for path in ("/desk", "/desk/warnings", "/desk/complaints", "/desk/merchants/mer_x"):
        response = await client.get(path)
        assert response.status_code in (302, 303) and response.headers["location"] == "/desk/sign-in", path
    htmx = await client.get("/desk", headers={"hx-request": "true"})
    assert htmx.headers.get("hx-redirect") == "/desk/sign-in"


@pytest.mark.parametrize("who", ["gym", "gym_consumer"])
async def test_a_merchant_or_consumer_session_cannot_open_the_desk(
    client: httpx.AsyncClient, app: Litestar, world: dict, who: str
) -> None:
    token = world[who].token if who == "gym" else world[who]
    for path in ("/desk", "/desk/warnings", "/desk/complaints", f"/desk/merchants/{world['gym'].id}"):
        response = await client.get(path, headers=signed_in(app, token))
        assert response.status_code == 403 and 'role="alert"' in response.text, (path, response.text)
        assert "晨光健身" not in response.text and "¥" not in response.text


# --- the pages and their figures ----------------------------------------------------------------------------------


def _section(page: str, marker: str) -> str:
    start = page.index(marker)
    return page[start : page.index("</div>", page.index("</div>", start) + 1)]


async def test_the_overview_shows_value_outstanding_by_category_and_region_and_the_queues(
    client: httpx.AsyncClient, app: Litestar, world: dict
) -> None:
    response = await client.get("/desk", headers=signed_in(app, world["regulator"]))
    assert response.status_code == 200, response.text
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    page = response.text
    # the gym's pending (disputed) service is still the consumer's: 900 protected; the salon 200 + 300
    assert yuan(140_000) in _section(page, 'data-figure="outstanding"')
    assert yuan(110_000) in _section(page, 'data-figure="protected"')
    assert yuan(30_000) in _section(page, 'data-figure="unprotected"')
    gym_row = re.search(r'<tr data-category="gym">(.*?)</tr>', page).group(1)
    assert re.findall(r'class="money">([^<]+)<', gym_row) == [yuan(90_000), yuan(0), yuan(90_000)]
    salon_row = re.search(r'<tr data-category="salon">(.*?)</tr>', page).group(1)
    assert re.findall(r'class="money">([^<]+)<', salon_row) == [yuan(20_000), yuan(30_000), yuan(50_000)]
    east = re.search(r'<tr data-region="110101">(.*?)</tr>', page).group(1)
    assert yuan(50_000) in east and yuan(30_000) in east
    assert '<tr data-region="440306">' in page
    warnings = _section(page, 'data-figure="warnings"')
    levels = dict(re.findall(r'data-level="(\w+)">[^<]*?(\d+)</span>', warnings))
    summary = (await client.get("/v1/warnings/summary", headers=bearer(world["regulator"]))).json()
    expected = {level: sum(r["warnings"] for r in summary if r["level"] == level) for level in ("alert", "attention")}
    assert {level: int(n) for level, n in levels.items()} == expected and sum(expected.values()) >= 1
    kinds = {r["kind"] for r in summary}
    assert "deep_discount" in kinds and all(f'data-kind="{kind}"' in page for kind in kinds)
    for figure in ("overdue_refunds", "open_breaks", "closures"):
        assert re.search(rf'data-figure="{figure}"><div class="label">[^<]*</div><div class="big">0</div>', page), (
            figure
        )
    assert "<script>" not in page and "style=" not in page
    english = await client.get("/desk?lang=en", headers=signed_in(app, world["regulator"]))
    assert "Prepaid value outstanding" in english.text and "By region" in english.text


async def test_the_warnings_queue_acknowledges_escalates_and_resolves_through_the_api_handlers(
    client: httpx.AsyncClient, app: Litestar, world: dict
) -> None:
    regulator = world["regulator"]
    page = await client.get("/desk/warnings", headers=signed_in(app, regulator))
    assert page.status_code == 200, page.text
    warning_id = re.search(r'data-warning="([^"]+)" data-state="open"', page.text).group(1)
    assert "晨光健身" in page.text and "deep_discount" in page.text and "price_percent_of_list" in page.text
    url = f"/desk/warnings/{warning_id}/acknowledge"
    forged = await client.post(url, data={"note": "看一下"}, headers={**signed_in(app, regulator), **key()})
    assert forged.status_code == 403  # no CSRF token
    headers = csrf_headers(app, regulator, page)
    acknowledged = await client.post(url, data={"note": "已电话询问"}, headers={**headers, **key()})
    assert acknowledged.status_code == 200, acknowledged.text
    assert f'data-warning="{warning_id}" data-state="acknowledged"' in acknowledged.text
    again = await client.post(url, data={"note": "again"}, headers={**headers, **key()})
    assert again.status_code == 409 and 'role="alert"' in again.text  # the API's invalid transition, on the page
    no_note = await client.post(f"/desk/warnings/{warning_id}/escalate", data={}, headers={**headers, **key()})
    assert no_note.status_code == 422 and 'role="alert"' in no_note.text
    escalated = await client.post(
        f"/desk/warnings/{warning_id}/escalate", data={"note": "转执法"}, headers={**headers, **key()}
    )
    assert 'data-state="escalated"' in escalated.text
    resolved = await client.post(
        f"/desk/warnings/{warning_id}/resolve", data={"note": "已整改"}, headers={**headers, **key()}
    )
    assert resolved.status_code == 200 and 'data-state="resolved"' in resolved.text
    api = (await client.get(f"/v1/warnings/{warning_id}", headers=bearer(regulator))).json()
    assert api["state"] == "resolved" and [n["note"] for n in api["notes"]] == ["已电话询问", "转执法", "已整改"]
    queue = await client.get("/desk/warnings", headers=signed_in(app, regulator))
    assert warning_id not in queue.text  # the queue shows what still needs the regulator
    done = await client.get("/desk/warnings?state=resolved", headers=signed_in(app, regulator))
    assert f'data-warning="{warning_id}" data-state="resolved"' in done.text
    bad = await client.get("/desk/warnings?state=nonsense", headers=signed_in(app, regulator))
    assert 400 <= bad.status_code < 500


async def test_a_merchants_page_draws_its_months_as_svg(client: httpx.AsyncClient, app: Litestar, world: dict) -> None:
    gym = world["gym"]
    response = await client.get(f"/desk/merchants/{gym.id}", headers=signed_in(app, world["regulator"]))
    assert response.status_code == 200, response.text
    page = response.text
    assert "晨光健身" in page and "440306" in page
    charts_drawn = dict(re.findall(r'<figure class="panel chart" data-chart="(\w+)">(<svg.*?</svg>)', page, re.S))
    assert set(charts_drawn) == {"sales", "services", "refunds", "disputes", "custody"}
    for svg in charts_drawn.values():
        _inert(svg)
        assert len(re.findall(r'data-value="', svg)) == 12  # twelve months
    month = datetime.now(UTC).astimezone().strftime("%Y-%m")
    values = {k: re.findall(r'data-value="(-?\d+)"', svg)[-1] for k, svg in charts_drawn.items()}
    assert values == {"sales": "90000", "services": "1", "refunds": "0", "disputes": "1", "custody": "90000"}, month
    row = re.search(r"<tr data-month=\"[0-9-]+\">(.*?)</tr>\s*</tbody>", page, re.S).group(1)
    assert yuan(90_000) in row
    assert "deep_discount" in page  # its warnings, with the same buttons


async def test_the_complaints_queue_lists_what_awaits_mediation(
    client: httpx.AsyncClient, app: Litestar, world: dict
) -> None:
    filed = await client.post(
        "/v1/complaints",
        json={"merchant_id": world["salon"].id, "category": "refund_refused", "text": "不给退款"},
        headers={**bearer(world["salon_consumer"]), **key()},
    )
    assert filed.status_code == 201, filed.text
    page = await client.get("/desk/complaints", headers=signed_in(app, world["regulator"]))
    assert page.status_code == 200, page.text
    assert f'data-complaint="{filed.json()["id"]}" data-state="filed"' in page.text
    assert "柠檬美发" in page.text and "不给退款" in page.text
    mediated = await client.post(
        f"/v1/complaints/{filed.json()['id']}/mediate",
        json={"outcome": "rejected", "note": "无依据"},
        headers={**bearer(world["regulator"]), **key()},
    )
    assert mediated.status_code == 200, mediated.text
    after = await client.get("/desk/complaints", headers=signed_in(app, world["regulator"]))
    assert filed.json()["id"] not in after.text


@pytest.mark.parametrize("hostile", ["%00", "x" * 300, "mer_%E2%80%AE", "..%2F..%2Fetc", "mer_nobody"])
async def test_hostile_ids_are_refused(client: httpx.AsyncClient, app: Litestar, world: dict, hostile: str) -> None:
    regulator = world["regulator"]
    response = await client.get(f"/desk/merchants/{hostile}", headers=signed_in(app, regulator))
    assert 400 <= response.status_code < 500, response.text
    page = await client.get("/desk/warnings", headers=signed_in(app, regulator))
    headers = csrf_headers(app, regulator, page)
    for action in ("acknowledge", "resolve", "escalate"):
        posted = await client.post(
            f"/desk/warnings/{hostile.replace('mer_', 'wrn_')}/{action}",
            data={"note": "x"},
            headers={**headers, **key()},
        )
        assert 400 <= posted.status_code < 500, (action, posted.text)
