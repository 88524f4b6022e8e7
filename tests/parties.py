"""Onboarding through the API, as the four roles do it; shared by the parties and authorization tests."""

import asyncio
import itertools
import re
from dataclasses import dataclass

import asyncpg
import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from escrow.auth.tokens import issue_token
from escrow.kit.crypto import Keyring, normalize_phone
from escrow.kit.signing import BankAuth
from escrow.kit.uscc import _organisation_check_character as organisation_check_character
from escrow.kit.uscc import with_check_character
from escrow.models import SmsSink

_keys = itertools.count()
_codes = itertools.count(1)


def key() -> dict[str, str]:
    return {"Idempotency-Key": f"test-{next(_keys)}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_uscc() -> str:
    """A valid unified social credit code (organisation-code check digit included) that no other test uses."""
    organisation = f"{next(_codes):08d}"
    return with_check_character("91310000" + organisation + organisation_check_character(organisation))


@dataclass
class Bank:
    id: str
    token: str
    secret: str
    algorithm: str

    @property
    def auth(self) -> BankAuth:
        return BankAuth(self.token, self.secret, self.algorithm)


@dataclass
class Merchant:
    id: str
    token: str


async def regulator_token(session: AsyncSession) -> str:
    _, secret = await issue_token(session, "regulator", "test regulator")
    await session.commit()
    return secret


async def onboard_bank(client: httpx.AsyncClient, regulator: str, code: str, algorithm: str = "hmac-sha256") -> Bank:
    response = await client.post(
        "/v1/banks",
        json={"name": f"Bank {code}", "code": code, "signing_algorithm": algorithm},
        headers={**bearer(regulator), **key()},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return Bank(body["bank"]["id"], body["token"], body["signing_secret"], algorithm)


async def onboard_merchant(
    client: httpx.AsyncClient,
    regulator: str,
    name: str,
    category: str = "gym",
    *,
    rating: str = "B",
    opened_on: str | None = None,
) -> Merchant:
    response = await client.post(
        "/v1/merchants",
        json={
            "name": name,
            "category": category,
            "uscc": new_uscc(),
            "credit_rating": rating,
            "settlement_account": "6222 0212 3456 7890 123",
            **({"opened_on": opened_on} if opened_on else {}),
        },
        headers={**bearer(regulator), **key()},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return Merchant(body["merchant"]["id"], body["token"])


async def open_escrow_account(client: httpx.AsyncClient, merchant: Merchant, bank: Bank) -> str:
    response = await client.post(
        "/v1/escrow-accounts", json={"bank_id": bank.id}, headers={**bearer(merchant.token), **key()}
    )
    assert response.status_code == 201, response.text
    account_id = response.json()["id"]
    activated = await client.post(
        f"/v1/escrow-accounts/{account_id}/activate",
        json={"bank_account_number": "3301 0400 0123 4567 89"},
        headers=key(),
        auth=bank.auth,
    )
    assert activated.status_code == 200, activated.text
    return account_id


TEST_SECRET_KEY = "test-secret-key-0123456789abcdef"  # the settings fixture's (tests/conftest.py)


def app_of(client: httpx.AsyncClient):
    """The application behind a test client (tests/conftest.py: an ASGI transport)."""
    return client._transport.app  # type: ignore[attr-defined]


async def sms_code_for(
    source: AsyncSession | async_sessionmaker | str,
    phone: str,
    *,
    keyring: Keyring | None = None,
    after: int = 0,
    wait: float = 10,
) -> str:
    """The newest sign-in code the development SMS sink received for ``phone`` (what its holder reads on the phone),
    among messages after sink row ``after``. ``source`` is a session, a sessionmaker or a database URL; waits up to
    ``wait`` seconds for the delivery that follows the request's commit."""
    keyring = keyring or Keyring(TEST_SECRET_KEY.encode())
    phone_hash = keyring.lookup_hash(normalize_phone(phone))
    sql = "SELECT text FROM sms_sink WHERE phone_hash = $1 AND id > $2 ORDER BY id DESC LIMIT 1"
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        if isinstance(source, str):
            connection = await asyncpg.connect(source.replace("postgresql+asyncpg://", "postgresql://"))
            try:
                message = await connection.fetchval(sql, phone_hash, after)
            finally:
                await connection.close()
        elif isinstance(source, AsyncSession):
            message = await source.scalar(_newest(phone_hash, after))
            await source.rollback()  # a fresh snapshot for the next look
        else:
            async with source() as session:
                message = await session.scalar(_newest(phone_hash, after))
        if message is not None:
            found = re.search(r"\b(\d{6})\b", message)
            assert found, "a sign-in message holds a six-digit code"
            return found.group(1)
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("no text message reached the phone")
        await asyncio.sleep(0.02)


def _newest(phone_hash: str, after: int):
    return (
        select(SmsSink.text)
        .where(SmsSink.phone_hash == phone_hash, SmsSink.id > after)
        .order_by(SmsSink.id.desc())
        .limit(1)
    )


async def last_sms_id(sessionmaker: async_sessionmaker) -> int:
    """The id of the development sink's newest message (0 without any)."""
    async with sessionmaker() as session:
        return await session.scalar(select(func.coalesce(func.max(SmsSink.id), 0))) or 0


async def send_code(client: httpx.AsyncClient, phone: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """Ask for a sign-in code for the phone, anonymously, as its holder does."""
    response = await client.post("/v1/consumer-codes", json={"phone": phone}, headers={**key(), **(headers or {})})
    assert response.status_code == 202, response.text
    return response


async def sign_in(client: httpx.AsyncClient, phone: str, *, database_url: str | None = None) -> tuple[str, str]:
    """The phone's holder signs in by SMS: asks for a code, reads it on the phone, exchanges it. (consumer id, token)

    ``database_url``: for a client of a service running elsewhere (tests/live.py, with the tests' secret key),
    whose development sink is read there."""
    if database_url is None:
        app = app_of(client)
        before = await last_sms_id(app.state.sessionmaker)
        await send_code(client, phone)
        code = await sms_code_for(app.state.sessionmaker, phone, keyring=app.state.keyring, after=before)
    else:
        connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            before = await connection.fetchval("SELECT coalesce(max(id), 0) FROM sms_sink")
        finally:
            await connection.close()
        await send_code(client, phone)
        code = await sms_code_for(database_url, phone, after=before)
    token = await client.post("/v1/consumer-tokens", json={"phone": phone, "code": code}, headers=key())
    assert token.status_code == 201, token.text
    return token.json()["consumer"]["id"], token.json()["token"]


async def consumer_token(
    client: httpx.AsyncClient, merchant: Merchant, phone: str, *, database_url: str | None = None
) -> tuple[str, str]:
    """The merchant registers the consumer at its point of sale; the consumer signs in with the code sent to its
    phone. Returns (consumer id, consumer token)."""
    registered = await client.post("/v1/consumers", json={"phone": phone}, headers={**bearer(merchant.token), **key()})
    assert registered.status_code == 201, registered.text
    consumer_id, token = await sign_in(client, phone, database_url=database_url)
    assert consumer_id == registered.json()["id"]
    return consumer_id, token


# --- cards -------------------------------------------------------------------------------------------------

_bank_transactions = itertools.count(1)


def bank_transaction_id() -> str:
    return f"BTX{next(_bank_transactions):08d}"


async def create_plan(client: httpx.AsyncClient, merchant: Merchant, **plan) -> dict:
    body = {"name": "plan", "validity_days": 365, **plan}
    for money_field in ("price", "face_value", "list_price_per_session"):
        if isinstance(body.get(money_field), int):
            body[money_field] = {"amount": body[money_field], "currency": "CNY"}
    response = await client.post("/v1/plans", json=body, headers={**bearer(merchant.token), **key()})
    assert response.status_code == 201, response.text
    return response.json()


async def sell_and_pay(
    client: httpx.AsyncClient, merchant: Merchant, bank: Bank, plan_id: str, consumer_id: str
) -> str:
    """Sell a card and have the bank report its deposit; returns the card id."""
    sold = await client.post(
        "/v1/cards", json={"plan_id": plan_id, "consumer_id": consumer_id}, headers={**bearer(merchant.token), **key()}
    )
    assert sold.status_code == 201, sold.text
    payment = sold.json()["payment"]
    paid = await client.post(
        "/v1/deposits",
        json={
            "payment_reference": payment["payment_reference"],
            "amount": payment["amount"],
            "bank_transaction_id": bank_transaction_id(),
        },
        headers=key(),
        auth=bank.auth,
    )
    assert paid.status_code == 200, paid.text
    return sold.json()["card"]["id"]


# --- cards under the ratio model, and balances as the API shows them ------------------------------------------


async def onboard_ratio_merchant(
    client: httpx.AsyncClient,
    regulator: str,
    name: str,
    rating: str = "A",
    *,
    category: str = "other",
    opened_on: str = "2015-01-01",
    model: str = "ratio",
) -> Merchant:
    """A merchant in business since ``opened_on`` (past the full-custody first year when old enough) that the
    regulator moved to the custody ``model``; ``onboard_merchant`` gives neither."""
    merchant = await onboard_merchant(client, regulator, name, category, rating=rating, opened_on=opened_on)
    if model != "full":
        moved = await client.post(
            f"/v1/merchants/{merchant.id}/custody-model",
            json={"model": model, "reason": "test: custody model under test"},
            headers={**bearer(regulator), **key()},
        )
        assert moved.status_code == 200 and moved.json()["custody_model"] == model, moved.text
    return merchant


async def card_detail(client: httpx.AsyncClient, token: str, card_id: str) -> dict:
    response = await client.get(f"/v1/cards/{card_id}", headers=bearer(token))
    assert response.status_code == 200, response.text
    return response.json()


async def account_totals(client: httpx.AsyncClient, token: str, escrow_account_id: str) -> dict[str, int]:
    """GET /v1/escrow-accounts/{id}/totals with money flattened to fen."""
    response = await client.get(f"/v1/escrow-accounts/{escrow_account_id}/totals", headers=bearer(token))
    assert response.status_code == 200, response.text
    return {
        k: (v["amount"] if isinstance(v, dict) else v) for k, v in response.json().items() if k != "escrow_account_id"
    }
