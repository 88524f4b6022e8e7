"""Helpers for closure tests: close a merchant, plan, settle, and let the bank carry out what it was told."""

import httpx
from sqlalchemy.ext.asyncio import async_sessionmaker

from escrow.closures import service as closures
from escrow.config import Settings
from tests.parties import Bank, bank_transaction_id, bearer, key


def flat(body: dict) -> dict:
    """Money fields flattened to fen."""
    return {k: (v["amount"] if isinstance(v, dict) and "amount" in v else v) for k, v in body.items()}


async def order_closure(client: httpx.AsyncClient, regulator: str, merchant_id: str, reason: str = "vanished") -> dict:
    response = await client.post(
        "/v1/closures", json={"merchant_id": merchant_id, "reason": reason}, headers={**bearer(regulator), **key()}
    )
    assert response.status_code == 201, response.text
    return response.json()


async def compute_plan(client: httpx.AsyncClient, regulator: str, closure_id: str) -> dict:
    response = await client.post(f"/v1/closures/{closure_id}/plan", headers={**bearer(regulator), **key()})
    assert response.status_code == 200, response.text
    return response.json()


async def items(client: httpx.AsyncClient, token: str, closure_id: str) -> list[dict]:
    out: list[dict] = []
    cursor = None
    while True:
        params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        response = await client.get(f"/v1/closures/{closure_id}/items", params=params, headers=bearer(token))
        assert response.status_code == 200, response.text
        out += [flat(i) for i in response.json()["items"]]
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return out


async def start_and_settle(
    client: httpx.AsyncClient,
    regulator: str,
    closure_id: str,
    sessionmaker: async_sessionmaker,
    settings: Settings,
    **settle_options,
) -> dict:
    response = await client.post(f"/v1/closures/{closure_id}/settlement", headers={**bearer(regulator), **key()})
    assert response.status_code == 200, response.text
    await closures.settle(sessionmaker, settings, closure_id, **settle_options)
    got = await client.get(f"/v1/closures/{closure_id}", headers=bearer(regulator))
    assert got.status_code == 200, got.text
    return got.json()


async def bank_executes_all(client: httpx.AsyncClient, bank: Bank) -> list[dict]:
    """The bank carries out every pending instruction it has; returns them."""
    done = []
    while True:
        listed = await client.get(
            "/v1/instructions", params={"status": "pending", "limit": 200}, headers=key(), auth=bank.auth
        )
        assert listed.status_code == 200, listed.text
        pending = listed.json()["items"]
        if not pending:
            return done
        for instruction in pending:
            executed = await client.post(
                f"/v1/instructions/{instruction['id']}/executed",
                json={"bank_transaction_id": bank_transaction_id()},
                headers=key(),
                auth=bank.auth,
            )
            assert executed.status_code == 200, executed.text
            done.append(instruction)
