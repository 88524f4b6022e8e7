"""Every error is problem+json with a stable code; bad input never reaches the database half-applied."""

from typing import Any

import asyncpg
import pytest
from httpx import AsyncClient
from litestar import Litestar, get, post
from litestar.params import JSONBody
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError

from escrow.app import create_app
from escrow.config import Settings
from escrow.errors import Conflict


class Payment(BaseModel):
    amount: int = Field(gt=0, description="fen")
    payer: str = Field(min_length=1)


@post("/t/payments", sync_to_thread=False)
def create_payment(data: JSONBody[Payment]) -> dict[str, Any]:
    return {"amount": data.amount}


@get("/t/boom", sync_to_thread=False)
def boom() -> None:
    raise RuntimeError("secret internals: password=hunter2 at /srv/escrow/db.py")


@get("/t/conflict", sync_to_thread=False)
def conflict() -> None:
    raise Conflict("card card_1 is already refunded")


@get("/t/deadlock", sync_to_thread=False)
def deadlock() -> None:
    try:
        raise asyncpg.exceptions.DeadlockDetectedError("deadlock detected")
    except asyncpg.PostgresError as exc:  # as the driver's error reaches a service: wrapped by SQLAlchemy
        raise DBAPIError("SELECT …", None, exc) from exc


@pytest.fixture
def app(settings: Settings) -> Litestar:
    return create_app(settings, extra_routes=[create_payment, boom, conflict, deadlock])


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["code"] == code
    assert {"type", "title", "detail"} <= body.keys()
    return body


class TestProblems:
    async def test_unknown_route_is_404(self, client: AsyncClient) -> None:
        assert_problem(await client.get("/nope"), 404, "not_found")

    async def test_wrong_method_is_405(self, client: AsyncClient) -> None:
        assert_problem(await client.delete("/healthz"), 405, "method_not_allowed")

    async def test_validation_lists_each_field(self, client: AsyncClient) -> None:
        response = await client.post("/t/payments", json={"amount": -5, "payer": ""}, headers={"Idempotency-Key": "k1"})
        body = assert_problem(response, 422, "validation_failed")
        fields = {error["field"] for error in body["errors"]}
        assert fields == {"amount", "payer"}
        assert all(error["message"] for error in body["errors"])

    async def test_float_amount_is_refused(self, client: AsyncClient) -> None:
        response = await client.post(
            "/t/payments", json={"amount": 12.5, "payer": "x"}, headers={"Idempotency-Key": "k2"}
        )
        body = assert_problem(response, 422, "validation_failed")
        assert body["errors"][0]["field"] == "amount"

    async def test_malformed_json_is_400(self, client: AsyncClient) -> None:
        response = await client.post(
            "/t/payments",
            content=b'{"amount": 1,',
            headers={"Idempotency-Key": "k3", "Content-Type": "application/json"},
        )
        assert_problem(response, 400, "malformed_json")

    async def test_body_over_limit_is_413(self, client: AsyncClient, settings: Settings) -> None:
        big = b'{"payer": "' + b"x" * settings.max_body_bytes + b'", "amount": 1}'
        response = await client.post(
            "/t/payments", content=big, headers={"Idempotency-Key": "k4", "Content-Type": "application/json"}
        )
        assert_problem(response, 413, "body_too_large")

    async def test_unexpected_exception_is_500_without_internals(self, client: AsyncClient) -> None:
        body = assert_problem(await client.get("/t/boom"), 500, "internal_error")
        text = str(body)
        assert "hunter2" not in text and "Traceback" not in text and "db.py" not in text

    async def test_a_deadlock_the_database_broke_is_a_retryable_503(self, client: AsyncClient) -> None:
        response = await client.get("/t/deadlock")
        body = assert_problem(response, 503, "transient_conflict")
        assert response.headers["Retry-After"] == "1" and "nothing was changed" in body["detail"]

    async def test_domain_error_keeps_its_code(self, client: AsyncClient) -> None:
        body = assert_problem(await client.get("/t/conflict"), 409, "conflict")
        assert body["detail"] == "card card_1 is already refunded"
