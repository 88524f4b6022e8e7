"""One access line per request, with a request id; no secret, phone or account number is ever written."""

import json

import pytest
import structlog
from httpx import AsyncClient
from litestar import Litestar, post
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.app import create_app
from escrow.auth.tokens import issue_token
from escrow.config import Settings
from escrow.logs import REDACTED, redact_processor

TOKEN = "esk_regulator_Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0"
SECRET = "ess_6f1c2a9e0b7d4c3f8a5e2d1c0b9a8f7e"
PHONE = "13812345678"
ACCOUNT = "6222021234567890123"


@post("/t/chatty", status_code=201)
async def chatty() -> dict[str, str]:
    structlog.get_logger("test").info(
        "onboarding",
        phone=PHONE,
        signing_secret=SECRET,
        note=f"consumer {PHONE} pays into {ACCOUNT} with {TOKEN}",
        nested={"bank_account": ACCOUNT, "items": [f"+86 {PHONE}"]},
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
        assert "****0123" in err

    def test_processor_masks_keys_and_values(self) -> None:
        event = redact_processor(None, "info", {"event": "x", "authorization": "Bearer abc", "text": TOKEN})
        assert event == {"event": "x", "authorization": REDACTED, "text": REDACTED}

    def test_amounts_are_not_masked(self) -> None:
        event = redact_processor(None, "info", {"event": "paid 200000 fen", "amount": 200000})
        assert event == {"event": "paid 200000 fen", "amount": 200000}
