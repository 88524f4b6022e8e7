"""The edge: hostile input anywhere (paths, queries, bodies, media types) is a 4xx problem+json naming the field,
never a 500 and never a partial change. The walk covers every route of the app's own route table, as each role
that may call it."""

import base64
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.config import Settings
from escrow.openapi import schema_dict
from tests.parties import (
    Bank,
    bank_transaction_id,
    bearer,
    consumer_token,
    create_plan,
    key,
    onboard_bank,
    onboard_merchant,
    open_escrow_account,
    regulator_token,
)


@pytest.fixture
def settings(db_url: str) -> Settings:
    # the walk makes many refused requests from one address: keep the abuse limiter out of its way
    return Settings(
        database_url=db_url,
        log_format="json",
        seal_interval_seconds=0,
        jobs_interval_seconds=0,
        secret_key="test-secret-key-0123456789abcdef",
        auth_failure_limit=100_000,
    )


def cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def assert_refused(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    assert response.status_code < 500, (response.request.method, response.request.url, response.text)
    if statuses:
        assert response.status_code in statuses, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    return response.json()


@dataclass
class World:
    regulator: str
    bank: Bank
    merchant: str
    merchant_id: str
    consumer: str
    account_id: str
    plan_id: str

    def as_role(self, role: str) -> dict[str, Any]:
        if role == "bank":
            return {"auth": self.bank.auth}
        token = {"regulator": self.regulator, "merchant": self.merchant, "consumer": self.consumer}[role]
        return {"headers": bearer(token)}


@pytest.fixture
async def world(client: httpx.AsyncClient, session: AsyncSession) -> World:
    regulator = await regulator_token(session)
    bank = await onboard_bank(client, regulator, "EDGE")
    merchant = await onboard_merchant(client, regulator, "Edge Gym")
    account_id = await open_escrow_account(client, merchant, bank)
    plan = await create_plan(client, merchant, kind="sessions", price=100_000, sessions=10)
    _, consumer = await consumer_token(client, merchant, "13800000001")
    return World(regulator, bank, merchant.token, merchant.id, consumer, account_id, plan["id"])


async def audit_rows(session: AsyncSession) -> int:
    return (await session.execute(text("SELECT count(*) FROM audit_records"))).scalar_one()


class TestParameters:
    async def test_a_nul_in_a_path_id_is_refused_naming_it(self, client: httpx.AsyncClient, world: World) -> None:
        body = assert_refused(await client.get("/v1/cards/%00", **world.as_role("merchant")), 422)
        assert body["errors"][0]["field"] == "card_id" and body["errors"][0]["rule"] == "pattern"

    async def test_a_nul_in_a_query_filter_is_refused(self, client: httpx.AsyncClient, world: World) -> None:
        body = assert_refused(await client.get("/v1/cards?merchant_id=%00", **world.as_role("regulator")), 422)
        assert body["errors"][0]["field"] == "merchant_id"

    async def test_dates_at_the_edge_of_the_range(self, client: httpx.AsyncClient, world: World) -> None:
        regulator = world.as_role("regulator")
        since = quote("9999-12-31T23:59:59-14:00")
        body = assert_refused(await client.get(f"/v1/audit?since={since}", **regulator), 422)
        assert body["errors"][0]["field"] == "since"
        assert_refused(await client.get("/v1/audit?since=2026-12-06T08:00:00", **regulator), 422)  # no offset
        for suffix in ("", ".csv"):
            path = f"/v1/escrow-accounts/{world.account_id}/reconciliation{suffix}?to=0001-01-01"
            body = assert_refused(await client.get(path, **regulator), 422)
            assert body["errors"][0]["field"] == "to"
        ok = await client.get(f"/v1/audit?since={quote('2026-12-06T08:00:00+08:00')}", **regulator)
        assert ok.status_code == 200, ok.text

    async def test_cursors_beyond_their_columns_are_refused(self, client: httpx.AsyncClient, world: World) -> None:
        regulator = world.as_role("regulator")
        for path, forged in (
            ("/v1/audit", cursor("9223372036854775808")),
            ("/v1/reconciliation/breaks", cursor("0001-01-01|0001-01-01T00:00:00+14:00|brk_1")),
            ("/v1/reconciliation/breaks", cursor("2026-01-01|2026-01-01T00:00:00+00:00")),
            ("/v1/reconciliation/overview", cursor("not-a-date|esc_1")),
        ):
            body = assert_refused(await client.get(f"{path}?cursor={forged}", **regulator), 422)
            assert body["errors"][0] == {
                "field": "cursor",
                "rule": "cursor",
                "message": "is not a cursor this service issued",
            }
        body = assert_refused(await client.get("/v1/audit?cursor=" + "A" * 500, **regulator), 422)
        assert body["errors"][0]["rule"] == "max_length"

    async def test_a_closure_items_cursor_beyond_int4(self, client: httpx.AsyncClient, world: World) -> None:
        closure = await client.post(
            "/v1/closures",
            json={"merchant_id": world.merchant_id, "reason": "edge"},
            headers={**bearer(world.regulator), **key()},
        )
        assert closure.status_code == 201, closure.text
        path = f"/v1/closures/{closure.json()['id']}/items?cursor={cursor('2147483648')}"
        assert_refused(await client.get(path, **world.as_role("regulator")), 422)

    async def test_limit_out_of_range(self, client: httpx.AsyncClient, world: World) -> None:
        for limit in ("0", "201", "-1", "abc", "99999999999999999999"):
            body = assert_refused(await client.get(f"/v1/audit?limit={limit}", **world.as_role("regulator")), 422)
            assert body["errors"][0]["field"] == "limit"

    async def test_a_long_path_id_on_a_post_is_refused_and_audited(
        self, client: httpx.AsyncClient, world: World, session: AsyncSession
    ) -> None:
        before = await audit_rows(session)
        long_id = "tok_" + "x" * 200
        response = await client.post(f"/v1/tokens/{long_id}/revoke", headers={**bearer(world.regulator), **key()})
        body = assert_refused(response, 422)
        assert body["errors"][0]["field"] == "token_id"
        assert await audit_rows(session) == before + 1
        kept = (
            await session.execute(text("SELECT object_id, status FROM audit_records ORDER BY id DESC LIMIT 1"))
        ).one()
        assert kept.status == 422 and kept.object_id == long_id[:80]

    async def test_a_stream_validates_before_its_first_byte(self, client: httpx.AsyncClient, world: World) -> None:
        response = await client.get("/v1/reconciliation/breaks.csv?escrow_account_id=%00", **world.as_role("regulator"))
        assert_refused(response, 422)


class TestBodies:
    async def post_plan(self, client: httpx.AsyncClient, world: World, content: bytes, **headers: str):
        return await client.post(
            "/v1/plans",
            content=content,
            headers={**bearer(world.merchant), **key(), "content-type": "application/json", **headers},
        )

    def plan(self, **changes: Any) -> dict[str, Any]:
        return {
            "name": "10 sessions",
            "kind": "sessions",
            "price": {"amount": 50000, "currency": "CNY"},
            "sessions": 5,
            "validity_days": 365,
            **changes,
        }

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"price": {"amount": "50000"}}, "price.amount"),
            ({"price": {"amount": " 50000 "}}, "price.amount"),
            ({"price": {"amount": "50_000"}}, "price.amount"),
            ({"price": {"amount": "50000.0"}}, "price.amount"),
            ({"price": {"amount": 50000.0}}, "price.amount"),
            ({"price": {"amount": True}}, "price.amount"),
            ({"sessions": "5"}, "sessions"),
            ({"validity_days": 365.0}, "validity_days"),
        ],
    )
    async def test_numbers_are_json_integers_only(
        self, client: httpx.AsyncClient, world: World, changes: dict[str, Any], field: str
    ) -> None:
        response = await self.post_plan(client, world, json.dumps(self.plan(**changes)).encode())
        body = assert_refused(response, 422)
        assert body["code"] == "validation_failed"
        assert body["errors"][0]["field"] == field and body["errors"][0]["rule"] == "int_type"

    async def test_unknown_fields_are_refused(self, client: httpx.AsyncClient, world: World) -> None:
        response = await self.post_plan(client, world, json.dumps(self.plan(discount_pct=50)).encode())
        body = assert_refused(response, 422)
        assert body["errors"] == [
            {"field": "discount_pct", "rule": "extra_forbidden", "message": "Extra inputs are not permitted"}
        ]
        nested = self.plan(price={"amount": 50000, "currency": "CNY", "fee": 1})
        body = assert_refused(await self.post_plan(client, world, json.dumps(nested).encode()), 422)
        assert body["errors"][0]["field"] == "price.fee"

    async def test_a_nul_in_a_string_is_refused_naming_the_field(self, client: httpx.AsyncClient, world: World) -> None:
        body = assert_refused(await self.post_plan(client, world, json.dumps(self.plan(name="a\x00b")).encode()), 422)
        assert body["errors"][0]["field"] == "name" and body["errors"][0]["rule"] == "no_nul"

    async def test_duplicate_keys_are_refused(self, client: httpx.AsyncClient, world: World) -> None:
        content = b'{"name": "a", "name": "b", "kind": "sessions"}'
        body = assert_refused(await self.post_plan(client, world, content), 400)
        assert body["code"] == "malformed_json" and "'name'" in body["detail"]

    @pytest.mark.parametrize("depth", [33, 900, 1000, 100_000])
    async def test_deep_nesting_is_refused(self, client: httpx.AsyncClient, world: World, depth: int) -> None:
        content = b"[" * depth + b"]" * depth
        body = assert_refused(await self.post_plan(client, world, content), 400)
        assert body["code"] == "malformed_json"

    @pytest.mark.parametrize("content_type", ["application/xml", "text/plain", "application/x-www-form-urlencoded", ""])
    async def test_a_body_that_is_not_json_by_its_media_type_is_415(
        self, client: httpx.AsyncClient, world: World, content_type: str
    ) -> None:
        response = await client.post(
            "/v1/plans",
            content=json.dumps(self.plan()).encode(),
            headers={**bearer(world.merchant), **key(), "content-type": content_type},
        )
        body = assert_refused(response, 415)
        assert body["code"] == "unsupported_media_type"

    async def test_a_json_body_with_charset_is_accepted(self, client: httpx.AsyncClient, world: World) -> None:
        response = await self.post_plan(
            client, world, json.dumps(self.plan()).encode(), **{"content-type": "application/json; charset=utf-8"}
        )
        assert response.status_code == 201, response.text

    async def test_a_signed_deposit_with_a_string_amount_moves_nothing(
        self, client: httpx.AsyncClient, world: World, session: AsyncSession
    ) -> None:
        consumer_id = (await client.get("/v1/me", headers=bearer(world.consumer))).json()["principal_id"]
        sold = await client.post(
            "/v1/cards",
            json={"plan_id": world.plan_id, "consumer_id": consumer_id},
            headers={**bearer(world.merchant), **key()},
        )
        assert sold.status_code == 201, sold.text
        payment = sold.json()["payment"]
        for amount in ({"amount": str(payment["amount"]["amount"]), "currency": "CNY"},):
            response = await client.post(
                "/v1/deposits",
                json={
                    "payment_reference": payment["payment_reference"],
                    "amount": amount,
                    "bank_transaction_id": bank_transaction_id(),
                },
                headers=key(),
                auth=world.bank.auth,
            )
            body = assert_refused(response, 422)
            assert body["errors"][0]["field"] == "amount.amount"
        fee = await client.post(
            "/v1/deposits",
            json={
                "payment_reference": payment["payment_reference"],
                "amount": payment["amount"],
                "bank_transaction_id": bank_transaction_id(),
                "fee": {"amount": 100, "currency": "CNY"},
            },
            headers=key(),
            auth=world.bank.auth,
        )
        assert assert_refused(fee, 422)["errors"][0]["field"] == "fee"
        card = await client.get(f"/v1/cards/{sold.json()['card']['id']}", headers=bearer(world.merchant))
        assert card.json()["status"] == "awaiting_payment"
        moved = await session.execute(text("SELECT count(*) FROM ledger_entries"))
        assert moved.scalar_one() == 0


# --- the walk over every route ----------------------------------------------------------------------------------

HOSTILE_STRINGS = [
    "\x00",
    "card_\x00",
    "x" * 1000,
    "9999-12-31T23:59:59-14:00",
    "0001-01-01",
    "-1",
    "99999999999999999999999",
    "ü\u202e",
    cursor("2147483648"),
    cursor("0001-01-01|0001-01-01T00:00:00+14:00|x"),
]


def _resolve(schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _plausible(schema: dict[str, Any], document: dict[str, Any]) -> Any:
    schema = _resolve(schema, document)
    for union in ("oneOf", "anyOf"):
        if union in schema:
            return _plausible(next(s for s in schema[union] if s.get("type") != "null"), document)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: _plausible(props[name], document) for name in schema.get("required", [])}
    if kind == "array":
        return [_plausible(schema.get("items", {}), document)]
    if kind == "integer":
        return 1
    if kind == "boolean":
        return True
    if schema.get("format") == "date":
        return "2026-12-06"
    return "x"


def _body_variants(schema: dict[str, Any], document: dict[str, Any]) -> list[bytes]:
    """Hostile bodies: each property given a NUL, an overlong string, a numeric string, a float, a huge number, an
    object; an unknown field; then whole-document ones."""
    base = _plausible(schema, document)
    variants: list[Any] = []
    if isinstance(base, dict):
        properties = _resolve(schema, document).get("properties", {})
        for name in properties:
            for value in ("\x00", "y" * 100_000, "1", 1.5, 10**30, -(10**30), {"amount": "1"}, [None], None):
                variants.append({**base, name: value})
        variants.append({**base, "unexpected": 1})
    raw = [json.dumps(v).encode() for v in variants]
    raw += [b"[" * 5000 + b"]" * 5000, b'{"a": 1, "a": 2}', b"{", b"null", b"[]", b'"\\u0000"', b"\xff\xfe", b"1e999"]
    return raw


def _operations(app: Litestar) -> list[tuple[str, str, dict[str, Any]]]:
    document = schema_dict(app)
    found = [
        (path, method.upper(), operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]
    # the contract lists every operation of the route table (those marked out of the schema are pages and assets)
    served = {
        (route.path_format, method)
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for method, (handler, _) in route.route_handler_map.items()
        if method not in {"OPTIONS", "HEAD"} and handler.resolve_include_in_schema()
    }
    documented = {(path, method) for path, method, _ in found}
    assert served == documented, served ^ documented
    return found


def _roles_of(operation: dict[str, Any]) -> list[str]:
    roles = operation.get("x-roles") or ["anonymous"]
    return [r for r in roles if r != "anonymous"] or ["anonymous"]


async def test_no_input_gives_a_5xx_on_any_route(client: httpx.AsyncClient, world: World, app: Litestar) -> None:
    document = schema_dict(app)
    sent = 0
    for path, method, operation in _operations(app):
        params = [p for p in operation.get("parameters", []) if p["in"] in {"path", "query"}]
        fill = {p["name"]: "card_0000000000000000000000000X" for p in params if p["in"] == "path"}
        body_schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        for role in _roles_of(operation):
            auth = world.as_role(role) if role != "anonymous" else {}
            headers = {**auth.pop("headers", {}), **key()}

            async def call(
                url: str,
                content: bytes | None = None,
                content_type: str = "application/json",
                method: str = method,
                headers: dict[str, str] = headers,
                auth: dict[str, Any] = auth,
            ) -> None:
                nonlocal sent
                extra = {"content-type": content_type} if content is not None else {}
                response = await client.request(
                    method, url, content=content, headers={**headers, **key(), **extra}, **auth
                )
                sent += 1
                assert response.status_code < 500, (method, url, content and content[:200], response.text)
                if response.status_code >= 400:
                    assert response.headers["content-type"].startswith("application/problem+json"), (url, response)

            for param in params:
                for value in HOSTILE_STRINGS:
                    values = {**fill}
                    query = ""
                    if param["in"] == "path":
                        values[param["name"]] = value
                    else:
                        query = f"?{param['name']}={quote(value, safe='')}"
                    url = path.format(**{k: quote(v, safe="") for k, v in values.items()}) + query
                    await call(url, b"{}" if body_schema else None)
            url = path.format(**fill)
            if body_schema is not None:
                for content in _body_variants(body_schema, document):
                    await call(url, content)
                await call(url, b"{}", "text/plain")
    assert sent > 1000
