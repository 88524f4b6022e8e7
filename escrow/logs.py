"""Structured logs, one line per request, with secrets and personal data redacted before anything is written."""

import logging
import re
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

import structlog
from litestar.types import ASGIApp, Message, Receive, Scope, Send

REDACTED = "[REDACTED]"

# Keys whose values are never logged, whatever they look like.
_SECRET_KEY = re.compile(
    r"token|secret|password|passwd|authorization|signature|api[_-]?key|cookie|phone|mobile"
    r"|account[_-]?(no|number)|bank[_-]?account|card[_-]?number|otp|one[_-]?time[_-]?code",
    re.IGNORECASE,
)
# Values that look like what we issue or protect, wherever they appear in a string.
_ISSUED_SECRET = re.compile(r"\bes[ks]_[A-Za-z0-9_-]{16,}")  # esk_… tokens, ess_… signing secrets
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+")
_CN_MOBILE = re.compile(r"(?<!\d)(?:\+?86[- ]?)?(1[3-9]\d)[- ]?\d{4}[- ]?(\d{4})(?!\d)")
_LONG_DIGITS = re.compile(r"(?<!\d)\d{8,28}(\d{4})(?!\d)")  # bank account and card numbers


def redact_text(text: str) -> str:
    text = _ISSUED_SECRET.sub(REDACTED, text)
    text = _BEARER.sub("Bearer " + REDACTED, text)
    text = _CN_MOBILE.sub(lambda m: f"{m.group(1)}****{m.group(2)}", text)
    return _LONG_DIGITS.sub(lambda m: "****" + m.group(1), text)


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: REDACTED if _SECRET_KEY.search(str(k)) else _redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact(v) for v in value)
    return value


def redact_processor(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: drop secret-named keys and mask secrets, phone and account numbers in values."""
    return _redact(event_dict)


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    use_console = sys.stderr.isatty() if fmt == "auto" else fmt == "console"
    renderer: Any = structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_processor,  # last before rendering, so nothing added earlier escapes it
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # sys.stderr is looked up per logger, so a redirected stderr (tests, daemons) is honoured.
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
access_log = structlog.get_logger("escrow.access")


class RequestLogMiddleware:
    """Outermost ASGI wrapper: request id in and out, one access line per request (404s and 405s included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            access_log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            structlog.contextvars.unbind_contextvars("request_id")
