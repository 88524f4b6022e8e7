"""A retried state-changing request replays its first response and changes nothing a second time."""

import asyncio
from typing import Any

import pytest
from httpx import AsyncClient
from litestar import Litestar, Request, post
from litestar.params import JSONBody
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from escrow import idempotency
from escrow.app import create_app
from escrow.auth.tokens import issue_token
from escrow.config import Settings
from escrow.errors import Conflict
from escrow.unit_of_work import DbSession

release_slow = asyncio.Event()
slow_started = asyncio.Event()


class Deposit(BaseModel):
    amount: int


@post("/t/deposits", status_code=201)
async def make_deposit(data: JSONBody[Deposit], db_session: DbSession) -> dict[str, Any]:
    row_id = await db_session.scalar(
        text("INSERT INTO t_deposits (amount) VALUES (:amount) RETURNING id"), {"amount": data.amount}
    )
    return {"id": row_id, "amount": data.amount}


@post("/t/refused")
async def refused(db_session: DbSession) -> None:
    await db_session.execute(text("INSERT INTO t_deposits (amount) VALUES (1)"))
    raise Conflict("refused after writing: the write must not survive")


@post("/t/slow", status_code=201)
async def slow(db_session: DbSession) -> dict[str, str]:
    await db_session.execute(text("INSERT INTO t_deposits (amount) VALUES (7)"))
    slow_started.set()
    await release_slow.wait()
    return {"status": "done"}


async def _first_request_committed_meanwhile(request: Request) -> None:
    """What a first request with the same key leaves behind when it commits while this one runs: its response,
    stored under the key (on a connection of its own)."""
    fingerprint = idempotency.request_hash(request.method, request.url.path, b"", await request.body())
    async with request.app.state.engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO idempotency_keys (caller, key, request_hash, status, content_type, body, expires_at)"
                " VALUES ('anonymous', :key, :hash, 201, 'application/json', :body, now() + interval '1 hour')"
            ),
            {"key": request.headers["idempotency-key"], "hash": fingerprint, "body": b'{"first": true}'},
        )


@post("/t/raced-refusal")
async def raced_refusal(request: Request, db_session: DbSession) -> None:
    await db_session.execute(text("INSERT INTO t_deposits (amount) VALUES (3)"))
    await _first_request_committed_meanwhile(request)
    raise Conflict("already done: the first request did it")


@post("/t/raced-success", status_code=201)
async def raced_success(request: Request, db_session: DbSession) -> dict[str, bool]:
    await db_session.execute(text("INSERT INTO t_deposits (amount) VALUES (4)"))
    await _first_request_committed_meanwhile(request)
    return {"first": False}


@pytest.fixture
async def app(settings: Settings, engine: AsyncEngine) -> Litestar:
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE t_deposits (id serial PRIMARY KEY, amount bigint NOT NULL)"))
    return create_app(settings, extra_routes=[make_deposit, refused, slow, raced_refusal, raced_success])


async def count_deposits(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return await connection.scalar(text("SELECT count(*) FROM t_deposits"))


class TestARetryThatFinishedMeanwhile:
    """The claim reads the key and takes its lock in one statement: a first request that commits after that
    statement's snapshot, before its lock, is not seen by the claim — but is seen at the end."""

    async def test_a_refusal_gives_the_first_requests_response_instead(
        self, client: AsyncClient, engine: AsyncEngine
    ) -> None:
        response = await client.post("/t/raced-refusal", headers={"Idempotency-Key": "raced-1"})
        assert response.status_code == 201 and response.json() == {"first": True}
        assert response.headers["idempotency-replayed"] == "true"
        assert await count_deposits(engine) == 0

    async def test_a_success_does_not_count_and_gives_the_first_response(
        self, client: AsyncClient, engine: AsyncEngine
    ) -> None:
        response = await client.post("/t/raced-success", headers={"Idempotency-Key": "raced-2"})
        assert response.status_code == 201 and response.json() == {"first": True}
        assert response.headers["idempotency-replayed"] == "true"
        assert await count_deposits(engine) == 0  # this request's own write was rolled back


class TestIdempotency:
    async def test_replay_returns_stored_response_once_applied(self, client: AsyncClient, engine: AsyncEngine) -> None:
        first = await client.post("/t/deposits", json={"amount": 500}, headers={"Idempotency-Key": "dep-1"})
        second = await client.post("/t/deposits", json={"amount": 500}, headers={"Idempotency-Key": "dep-1"})
        assert first.status_code == second.status_code == 201
        assert first.json() == second.json()
        assert "idempotency-replayed" not in first.headers
        assert second.headers["idempotency-replayed"] == "true"
        assert await count_deposits(engine) == 1

    async def test_same_key_different_body_is_422(self, client: AsyncClient, engine: AsyncEngine) -> None:
        await client.post("/t/deposits", json={"amount": 500}, headers={"Idempotency-Key": "dep-2"})
        response = await client.post("/t/deposits", json={"amount": 501}, headers={"Idempotency-Key": "dep-2"})
        assert response.status_code == 422
        assert response.json()["code"] == "idempotency_key_reused"
        assert await count_deposits(engine) == 1

    async def test_keys_are_scoped_to_the_caller(
        self, client: AsyncClient, engine: AsyncEngine, session: AsyncSession
    ) -> None:
        tokens = [(await issue_token(session, "merchant", name))[1] for name in ("alice", "bob")]
        await session.commit()
        for token in tokens:
            response = await client.post(
                "/t/deposits",
                json={"amount": 5},
                headers={"Idempotency-Key": "same", "Authorization": f"Bearer {token}"},
            )
            assert response.status_code == 201
            assert "idempotency-replayed" not in response.headers
        assert await count_deposits(engine) == 2

    async def test_missing_key_is_refused(self, client: AsyncClient, engine: AsyncEngine) -> None:
        response = await client.post("/t/deposits", json={"amount": 5})
        assert response.status_code == 400
        body = response.json()
        assert body["code"] == "idempotency_key_required"
        assert body["errors"] == [{"field": "Idempotency-Key", "rule": "missing", "message": "required"}]
        assert await count_deposits(engine) == 0

    @pytest.mark.parametrize("key", ["", "x" * 256, "naïve", "tab\tkey"])
    async def test_invalid_key_is_refused(self, client: AsyncClient, key: str) -> None:
        response = await client.post("/t/deposits", json={"amount": 5}, headers={"Idempotency-Key": key.encode()})
        assert response.status_code == 400
        assert response.json()["code"] in {"idempotency_key_invalid", "idempotency_key_required"}

    async def test_error_rolls_back_and_is_not_stored(self, client: AsyncClient, engine: AsyncEngine) -> None:
        for _ in range(2):
            response = await client.post("/t/refused", headers={"Idempotency-Key": "ref-1"})
            assert response.status_code == 409
            assert "idempotency-replayed" not in response.headers
        assert await count_deposits(engine) == 0

    async def test_duplicate_in_flight_is_409(self, client: AsyncClient, engine: AsyncEngine) -> None:
        release_slow.clear()
        slow_started.clear()
        first = asyncio.create_task(client.post("/t/slow", headers={"Idempotency-Key": "slow-1"}))
        await asyncio.wait_for(slow_started.wait(), 10)
        duplicate = await client.post("/t/slow", headers={"Idempotency-Key": "slow-1"})
        assert duplicate.status_code == 409
        assert duplicate.json()["code"] == "idempotency_in_flight"
        release_slow.set()
        assert (await first).status_code == 201
        replay = await client.post("/t/slow", headers={"Idempotency-Key": "slow-1"})
        assert replay.status_code == 201 and replay.headers["idempotency-replayed"] == "true"
        assert await count_deposits(engine) == 1

    async def test_expired_key_runs_again(
        self, client: AsyncClient, engine: AsyncEngine, session: AsyncSession
    ) -> None:
        await client.post("/t/deposits", json={"amount": 9}, headers={"Idempotency-Key": "old"})
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'"))
        again = await client.post("/t/deposits", json={"amount": 9}, headers={"Idempotency-Key": "old"})
        assert again.status_code == 201 and "idempotency-replayed" not in again.headers
        assert await count_deposits(engine) == 2
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'"))
        assert await idempotency.purge_expired(session) == 1
        await session.commit()
