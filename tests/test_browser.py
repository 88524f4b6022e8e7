"""The consumer's and the merchant's pages in a real Chromium, against `escrow serve`: a consumer signs in with the
code from the development SMS sink, sees what of the card is protected and what is not, confirms one service and
disputes another, shows the presence code the counter page then accepts, asks for a refund and sees it paid once
the bank reports it. Screenshots of each consumer page go to docs/screenshots/."""

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.pages import yuan
from tests.browser import needs_chromium, phone_browser, screenshot
from tests.live import serve
from tests.parties import (
    TEST_SECRET_KEY,
    Bank,
    Merchant,
    bearer,
    create_plan,
    key,
    onboard_bank,
    onboard_ratio_merchant,
    open_escrow_account,
    regulator_token,
    sell_and_pay,
    sms_code_for,
)

pytestmark = needs_chromium
PHONE = "13700001234"


@dataclass
class Shop:
    url: str
    db_url: str
    regulator: str
    bank: Bank
    merchant: Merchant
    card_id: str
    services: list[str]


@pytest.fixture
async def shop(db_url: str, session: AsyncSession) -> AsyncIterator[Shop]:
    with serve(db_url, secret_key=TEST_SECRET_KEY, auth_failure_limit="100000") as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            regulator = await regulator_token(session)
            bank = await onboard_bank(client, regulator, "BRWS")
            # a ratio merchant: 40 % of each card in custody, so the page has an unprotected part to explain
            merchant = await onboard_ratio_merchant(client, regulator, "悦动健身房", rating="A")
            await open_escrow_account(client, merchant, bank)
            plan = await create_plan(client, merchant, kind="sessions", price=200_000, sessions=20, name="私教课 20 次")
            registered = await client.post(
                "/v1/consumers", json={"phone": PHONE}, headers={**bearer(merchant.token), **key()}
            )
            assert registered.status_code == 201, registered.text
            card_id = await sell_and_pay(client, merchant, bank, plan["id"], registered.json()["id"])
            services = []
            for _ in range(2):  # two services recorded without the consumer's presence: both await confirmation
                recorded = await client.post(
                    f"/v1/cards/{card_id}/consumptions",
                    json={"sessions": 1},
                    headers={**bearer(merchant.token), **key()},
                )
                assert recorded.status_code == 201, recorded.text
                services.append(recorded.json()["id"])
        yield Shop(url, db_url, regulator, bank, merchant, card_id, services)


async def sign_in(page, shop: Shop) -> None:
    await page.goto("/app/cards")
    assert page.url.endswith("/app/sign-in")
    await screenshot(page, "consumer-sign-in")
    await page.fill("input[name=phone]", PHONE)
    await page.click("text=发送验证码")
    await page.wait_for_selector("input[name=code]")
    code = await sms_code_for(shop.db_url, PHONE)
    await page.fill("input[name=code]", code)
    await page.click("form >> text=登录")
    await page.wait_for_url("**/app/cards")


@pytest.mark.slow
async def test_a_consumer_on_a_phone_from_sign_in_to_a_paid_refund(shop: Shop) -> None:
    csp_violations: list[str] = []
    async with phone_browser(shop.url) as page:
        page.on("console", lambda m: csp_violations.append(m.text) if "Content Security Policy" in m.text else None)
        await sign_in(page, shop)

        # my cards: the protected part (40 % in custody) and the unprotected part, each explained
        card = page.locator(f"[data-card='{shop.card_id}']")
        await card.wait_for()
        assert await card.locator("[data-protected]").inner_text() == "¥800.00"
        assert await card.locator("[data-unprotected]").inner_text() == "¥1,200.00"
        await screenshot(page, "consumer-cards")

        await card.click()
        await page.wait_for_url(f"**/app/cards/{shop.card_id}")
        assert "这部分钱存放在银行托管账户中" in await page.content()
        assert "这部分钱不在托管账户中" in await page.content()
        await page.wait_for_selector("[data-presence-code]")
        await screenshot(page, "consumer-card")

        # confirm one service, dispute the other
        first, second = shop.services
        await page.click(f"#service-{first} button.primary")
        await page.wait_for_selector(f"#service-{first}[data-service-status='confirmed']")
        await page.fill(f"#service-{second} input[name=reason]", "当天没有上课")
        await page.click(f"#service-{second} >> button:has-text('有异议')")
        await page.wait_for_selector(f"#service-{second}[data-service-status='disputed']")

        # the counter: the merchant records a service with the code the consumer's page shows
        code = (await page.inner_text("[data-presence-code]")).strip()
        async with phone_browser(shop.url) as counter:
            await counter.goto("/counter")
            assert counter.url.endswith("/counter/sign-in")
            await counter.fill("input[name=token]", shop.merchant.token)
            await counter.click("form >> text=登录")
            await counter.wait_for_url("**/counter")
            await counter.fill("form[hx-post='/counter/services'] input[name=card_id]", shop.card_id)
            await counter.fill("form[hx-post='/counter/services'] input[name=presence_code]", code)
            await counter.click("form[hx-post='/counter/services'] >> button")
            await counter.wait_for_selector("[data-recorded][data-service-status='confirmed']")
            await screenshot(counter, "merchant-counter")

        # the regulator settles the dispute (voided), then the consumer asks for a refund on the page
        async with httpx.AsyncClient(base_url=shop.url, timeout=30) as client:
            resolved = await client.post(
                f"/v1/consumptions/{second}/resolve",
                json={"outcome": "void", "note": "no class that day"},
                headers={**bearer(shop.regulator), **key()},
            )
            assert resolved.status_code == 200, resolved.text
        await page.goto(f"/app/cards/{shop.card_id}/refund")
        quote = await page.inner_text("[data-quote]")
        await screenshot(page, "consumer-refund-quote")
        await page.click("text=确认申请退款")
        await page.wait_for_url(f"**/app/cards/{shop.card_id}")
        assert await page.get_attribute("[data-refund-status]", "data-refund-status") == "instructed"

        # the bank pays the refund and reports it: the page shows it paid
        async with httpx.AsyncClient(base_url=shop.url, timeout=30) as client:
            instructions = await client.get("/v1/instructions?status=pending", auth=shop.bank.auth)
            refund = next(i for i in instructions.json()["items"] if i["kind"] == "refund")
            refunds = await client.get("/v1/refunds", headers=bearer(shop.regulator))
            asked = next(r for r in refunds.json() if r["card_id"] == shop.card_id)
            assert quote == yuan(asked["amount"]["amount"])  # the page's quote is the refund made
            # the bank pays, out of the escrow account, the custodied part and what is set off against the payable
            assert refund["amount"]["amount"] == asked["from_custody"]["amount"] + asked["set_off"]["amount"]
            executed = await client.post(
                f"/v1/instructions/{refund['id']}/executed",
                json={"bank_transaction_id": "BRWS-REFUND-1"},
                headers=key(),
                auth=shop.bank.auth,
            )
            assert executed.status_code == 200, executed.text
        await page.reload()
        assert await page.get_attribute("[data-refund-status]", "data-refund-status") == "paid"
        await screenshot(page, "consumer-card-refunded")

        await page.goto("/app/closures")
        await screenshot(page, "consumer-closures")
        await page.goto("/app/cards?lang=en")
        assert "Protected by bank custody" in await page.content()
    assert csp_violations == []


def test_the_screenshots_are_named_in_the_docs() -> None:
    from tests.browser import SCREENSHOTS

    index = (SCREENSHOTS.parent / "pages.md").read_text()
    for name in re.findall(r"\(screenshots/([\w-]+)\.png\)", index):
        assert (SCREENSHOTS / f"{name}.png").exists(), name


@pytest.mark.slow
async def test_the_regulators_desk_overview_warnings_and_a_merchants_charts(db_url: str, session: AsyncSession) -> None:
    """The regulator signs in at /desk with its API token, reads the overview, acknowledges a warning with the
    queue's button, and opens the merchant's page with its SVG charts; no CSP violation on the way."""
    with serve(db_url, secret_key=TEST_SECRET_KEY, auth_failure_limit="100000") as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            regulator = await regulator_token(session)
            bank = await onboard_bank(client, regulator, "DESKB")
            merchant = await onboard_ratio_merchant(client, regulator, "悦动健身房", rating="A", category="gym")
            region = await client.post(
                f"/v1/merchants/{merchant.id}/region",
                json={"region": "440306", "reason": "test"},
                headers={**bearer(regulator), **key()},
            )
            assert region.status_code == 200, region.text
            await open_escrow_account(client, merchant, bank)
            plan = await create_plan(
                client, merchant, kind="sessions", price=90_000, sessions=10, list_price_per_session=20_000, name="私教"
            )
            for n in range(3):
                registered = await client.post(
                    "/v1/consumers", json={"phone": f"1370000990{n}"}, headers={**bearer(merchant.token), **key()}
                )
                card_id = await sell_and_pay(client, merchant, bank, plan["id"], registered.json()["id"])
                recorded = await client.post(
                    f"/v1/cards/{card_id}/consumptions",
                    json={"sessions": 1},
                    headers={**bearer(merchant.token), **key()},
                )
                assert recorded.status_code == 201, recorded.text
            ran = await client.post("/v1/warnings/runs", headers={**bearer(regulator), **key()})
            assert ran.json()["opened"]["deep_discount"] == 1, ran.text
        csp_violations: list[str] = []
        async with phone_browser(url, viewport={"width": 1280, "height": 900}) as page:
            page.on("console", lambda m: csp_violations.append(m.text) if "Content Security Policy" in m.text else None)
            await page.goto("/desk")
            assert page.url.endswith("/desk/sign-in")
            await page.fill("input[name=token]", regulator)
            await page.click("form >> text=登录")
            await page.wait_for_url("**/desk")
            # 3 cards of 900 yuan, 40 % in custody: 1,080 protected and 1,620 not (pending services are the consumer's)
            assert await page.inner_text("[data-figure=protected] .money") == yuan(108_000)
            assert await page.inner_text("[data-figure=unprotected] .money") == yuan(162_000)
            await screenshot(page, "desk-overview")

            await page.click("nav >> text=预警队列")
            await page.wait_for_url("**/desk/warnings")
            row = page.locator("[data-warning][data-state=open]").filter(has_text="deep_discount")
            await row.locator("input[name=note]").fill("已约谈商户")
            await row.locator("button:has-text('确认知悉')").click()
            await page.wait_for_selector("[data-warning][data-state=acknowledged]")

            await page.click(f"a[href='/desk/merchants/{merchant.id}']")
            await page.wait_for_url(f"**/desk/merchants/{merchant.id}")
            for chart in ("sales", "services", "refunds", "disputes", "custody"):
                assert await page.locator(f"[data-chart={chart}] svg").count() == 1, chart
            assert await page.locator("[data-chart=sales] rect.bar").count() == 12
            assert await page.get_attribute("[data-chart=sales] rect.bar >> nth=-1", "data-value") == "270000"
            await screenshot(page, "desk-merchant")
        assert csp_violations == []
