"""Who sends a text message: an SMS gateway over HTTP, or — in development only — a table the operator reads.

``SmsOperationalError`` is a failure worth retrying (network, timeout, 429, 5xx); ``SmsRefused`` a permanent one
(the gateway refused the message: a retry would be refused again), which dead-letters it.

Gateway requests (:class:`HttpGatewaySmsSender`) are ``POST ESCROW_SMS_GATEWAY_URL`` with the JSON body
``{"phone": "13812345678", "text": "…", "request_id": "<dedup key>"}`` (``request_id`` is the same on every retry
of one message, so a gateway that deduplicates by it never sends twice) and the headers

- ``X-Sms-Key-Id``: ``ESCROW_SMS_GATEWAY_KEY_ID``;
- ``X-Sms-Timestamp``: unix seconds;
- ``X-Sms-Signature``: lowercase hex HMAC-SHA256, keyed with ``ESCROW_SMS_GATEWAY_SECRET``, of the timestamp,
  a line feed, and the exact body bytes (``TIMESTAMP "\\n" BODY``).
"""

import hashlib
import hmac
import json
import time
from abc import ABC, abstractmethod

import httpx
from sqlalchemy.ext.asyncio import async_sessionmaker

from escrow.config import Settings
from escrow.kit.crypto import Keyring, mask_phone, normalize_phone
from escrow.models import SmsSink


class SmsOperationalError(Exception):
    """The message may not have been sent; retry later."""


class SmsRefused(Exception):
    """The gateway refused the message for good; don't retry."""


class SmsSender(ABC):
    @abstractmethod
    async def send(self, phone: str, text: str, *, key: str) -> None:
        """Send ``text`` to ``phone``; ``key`` is the message's stable id (the same on every retry)."""


def sign_gateway_request(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Sms-Signature`` of a gateway request: hex HMAC-SHA256 of ``TIMESTAMP \\n BODY``."""
    return hmac.new(secret.encode(), timestamp.encode() + b"\n" + body, hashlib.sha256).hexdigest()


class HttpGatewaySmsSender(SmsSender):
    """A typical SMS gateway's send API, signed (see the module's documentation)."""

    def __init__(self, url: str, key_id: str, secret: str, timeout_seconds: float = 10) -> None:
        self.url = url
        self.key_id = key_id
        self.secret = secret
        self.timeout = timeout_seconds

    async def send(self, phone: str, text: str, *, key: str) -> None:
        body = json.dumps({"phone": phone, "text": text, "request_id": key}, ensure_ascii=False).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Sms-Key-Id": self.key_id,
            "X-Sms-Timestamp": timestamp,
            "X-Sms-Signature": sign_gateway_request(self.secret, timestamp, body),
        }
        try:
            async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
                response = await client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:  # connection refused, timeout, protocol error: never the request's content
            raise SmsOperationalError(f"gateway unreachable: {type(exc).__name__}") from None
        if 200 <= response.status_code < 300:
            return
        if response.status_code == 429 or response.status_code >= 500:
            raise SmsOperationalError(f"gateway answered {response.status_code}")
        raise SmsRefused(f"gateway refused the message: {response.status_code}")


class DevSmsSink(SmsSender):
    """For development only: keeps each message in the table ``sms_sink`` (phone masked and look-up hashed, the
    text in clear) instead of sending it. No API exposes it; the operator reads it with ``escrow sms outbox``.
    Never use it where real consumers sign in: whoever reads the table reads their codes."""

    def __init__(self, sessionmaker: async_sessionmaker, keyring: Keyring) -> None:
        self.sessionmaker = sessionmaker
        self.keyring = keyring

    async def send(self, phone: str, text: str, *, key: str) -> None:
        phone = normalize_phone(phone)
        async with self.sessionmaker() as session:
            session.add(
                SmsSink(
                    phone_masked=mask_phone(phone),
                    phone_hash=self.keyring.lookup_hash(phone),
                    text=text,
                    request_id=key,
                )
            )
            await session.commit()  # transaction boundary: the development sink keeps what it received


def sender_for(settings: Settings, sessionmaker: async_sessionmaker, keyring: Keyring) -> SmsSender:
    """The gateway when ``ESCROW_SMS_GATEWAY_URL`` is set, else the development sink."""
    if settings.sms_gateway_url:
        if not settings.sms_gateway_key_id or settings.sms_gateway_secret is None:
            raise ValueError("ESCROW_SMS_GATEWAY_URL needs ESCROW_SMS_GATEWAY_KEY_ID and ESCROW_SMS_GATEWAY_SECRET")
        return HttpGatewaySmsSender(
            settings.sms_gateway_url,
            settings.sms_gateway_key_id,
            settings.sms_gateway_secret.get_secret_value(),
            settings.sms_gateway_timeout_seconds,
        )
    return DevSmsSink(sessionmaker, keyring)
