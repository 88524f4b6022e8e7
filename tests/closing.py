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


# --- added for the closure worked examples and rules ---------------------------------------------------------


async def setup_fund(client: httpx.AsyncClient, regulator: str, bank: Bank, amount: int, transaction: str) -> None:
    """The fund's own account at ``bank``, and a first contribution of ``amount`` fen (none when 0)."""
    response = await client.put(
        "/v1/fund/bank-account",
        json={"bank_id": bank.id, "bank_account_number": "6222 1111 2222 3333"},
        headers={**bearer(regulator), **key()},
    )
    assert response.status_code == 200, response.text
    if amount:
        await contribute(client, regulator, amount, transaction)


async def contribute(
    client: httpx.AsyncClient, regulator: str, amount: int, transaction: str, source_kind: str = "insurer"
) -> dict:
    response = await client.post(
        "/v1/fund/contributions",
        json={
            "source_kind": source_kind,
            "source_name": f"{source_kind} {transaction}",
            "amount": {"amount": amount, "currency": "CNY"},
            "bank_transaction_id": transaction,
        },
        headers={**bearer(regulator), **key()},
    )
    assert response.status_code == 201, response.text
    return flat(response.json())


async def fund_overview(client: httpx.AsyncClient, regulator: str) -> dict:
    """GET /v1/fund in fen, without the bank account."""
    response = await client.get("/v1/fund", headers=bearer(regulator))
    assert response.status_code == 200, response.text
    return {k: v for k, v in flat(response.json()).items() if k != "bank_account"}


async def fund_claims(client: httpx.AsyncClient, regulator: str) -> list[dict]:
    response = await client.get("/v1/fund/claims", headers=bearer(regulator))
    assert response.status_code == 200, response.text
    return [flat(c) for c in response.json()]


async def statements(client: httpx.AsyncClient, consumer: str) -> list[dict]:
    response = await client.get("/v1/me/closure-statements", headers=bearer(consumer))
    assert response.status_code == 200, response.text
    return response.json()


async def closure_totals(client: httpx.AsyncClient, token: str, closure_id: str) -> dict:
    """GET /v1/closures/{id}: status, progress and the totals in fen."""
    response = await client.get(f"/v1/closures/{closure_id}", headers=bearer(token))
    assert response.status_code == 200, response.text
    body = response.json()
    return {"status": body["status"], "progress": body["progress"], **flat(body["totals"])}


async def instructions(client: httpx.AsyncClient, bank: Bank, status: str = "pending") -> list[dict]:
    """The bank's instructions in that status, amounts in fen."""
    response = await client.get("/v1/instructions", params={"status": status, "limit": 200}, auth=bank.auth)
    assert response.status_code == 200, response.text
    return [flat(i) for i in response.json()["items"]]


async def record_service(client: httpx.AsyncClient, merchant, card_id: str, sessions: int) -> dict:
    response = await client.post(
        f"/v1/cards/{card_id}/consumptions", json={"sessions": sessions}, headers={**bearer(merchant.token), **key()}
    )
    assert response.status_code == 201, response.text
    return response.json()


async def confirm_service(client: httpx.AsyncClient, consumer: str, consumption: dict) -> None:
    response = await client.post(f"/v1/consumptions/{consumption['id']}/confirm", headers={**bearer(consumer), **key()})
    assert response.status_code == 200, response.text


def card_amounts(detail: dict) -> dict:
    """A card's detail reduced to its status, units left and money (fen)."""
    return {
        "status": detail["status"],
        "units_remaining": detail["units_remaining"],
        **{
            k: detail[k]["amount"]
            for k in ("value_remaining", "protected", "unprotected", "pending", "released", "refunded")
        },
    }


def money_of_item(item: dict) -> dict:
    """An item (flattened) reduced to its decision and money columns."""
    return {
        k: item[k]
        for k in (
            "kind",
            "decision",
            "status",
            "unused",
            "from_custody",
            "set_off",
            "fund_paid",
            "fund_owed",
            "fund_owed_paid",
            "unpaid",
            "transferred",
            "assumed",
        )
    }
