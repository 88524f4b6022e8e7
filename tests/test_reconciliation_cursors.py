"""Cursors the service did not issue are a 422 naming the cursor, never a 500."""

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.kit.pagination import encode_cursor
from tests.parties import bearer
from tests.reconciling import desk, fee, send, statement_json


@pytest.mark.parametrize("cursor", ["2026-01-01", "2026-01-01|esc_a|esc_b", "not-a-day|esc_a"])
async def test_a_forged_overview_cursor_is_refused(
    client: httpx.AsyncClient, session: AsyncSession, cursor: str
) -> None:
    shop = await desk(client, session)
    response = await client.get(
        "/v1/reconciliation/overview", params={"cursor": encode_cursor(cursor)}, headers=bearer(shop.regulator)
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "cursor"


@pytest.mark.parametrize("cursor", ["2147483648", "99999999999999999999", "1a"])
async def test_a_forged_lines_cursor_is_refused(client: httpx.AsyncClient, session: AsyncSession, cursor: str) -> None:
    shop = await desk(client, session)
    sent = await send(client, shop.bank, statement_json(shop.account_id, [fee(100)]))
    response = await client.get(
        f"/v1/statements/{sent['statements'][0]['id']}/lines",
        params={"cursor": encode_cursor(cursor)},
        headers=bearer(shop.regulator),
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "cursor"
