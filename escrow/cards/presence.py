"""Presence codes (核销): the consumer shows a short-lived code at the counter, the merchant records the service
with it, and the service is confirmed at once.

A code is never stored: it is derived, as TOTP is (RFC 6238, with RFC 4226's dynamic truncation), from an HMAC-SHA256
under a key of the service's keyring over the card's id and the time step (``ESCROW_PRESENCE_CODE_STEP_SECONDS``,
60 s by default), so the server recomputes it to check it. The code of the current step and of the step before are
accepted (clock skew, typing time). A step's code confirms the services of one request (one record, or every
service of that card in one class roll); the last step accepted is kept on the card (``cards.presence_step``), and a
code whose step is not later is refused, so a code seen once can't be used again.
"""

import hashlib
import hmac
import io
from dataclasses import dataclass
from datetime import UTC, datetime

import segno

from escrow.kit import clock as _clock

ACCEPTED_STEPS = 2  # the current step and the one before


def now() -> datetime:
    """The instant codes are made and checked at (the tests move it: ``monkeypatch.setattr(presence, "now", …)``)."""
    return _clock.utcnow()


def step_of(instant: datetime, step_seconds: int) -> int:
    """The time step ``instant`` falls in: whole ``step_seconds`` since the Unix epoch."""
    return int(instant.timestamp()) // step_seconds


def code_for(key: bytes, card_id: str, step: int, digits: int) -> str:
    """The card's code for a time step: HMAC-SHA256(key, card id, 0x00, step as 8 bytes big-endian), dynamically
    truncated to 31 bits (RFC 4226 §5.3) and reduced to ``digits`` decimal digits."""
    mac = hmac.new(key, card_id.encode() + b"\x00" + step.to_bytes(8, "big", signed=True), hashlib.sha256).digest()
    offset = mac[-1] & 0x0F
    number = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFF_FFFF
    return f"{number % 10**digits:0{digits}d}"


def accepted_step(key: bytes, card_id: str, code: str, at: datetime, step_seconds: int, digits: int) -> int | None:
    """The step whose code ``code`` is, if it is the card's code of the step ``at`` falls in or of the one before;
    else None.
    Every candidate is compared in constant time."""
    current = step_of(at, step_seconds)
    found = None
    for step in range(current - ACCEPTED_STEPS + 1, current + 1):
        if hmac.compare_digest(code_for(key, card_id, step, digits), code) and found is None:
            found = step
    return found


@dataclass(frozen=True)
class PresenceCode:
    code: str
    valid_until: datetime  # the end of the last step in which it is accepted
    rotates_at: datetime  # when the next code appears


def current(key: bytes, card_id: str, at: datetime, step_seconds: int, digits: int) -> PresenceCode:
    step = step_of(at, step_seconds)
    return PresenceCode(
        code=code_for(key, card_id, step, digits),
        valid_until=datetime.fromtimestamp((step + ACCEPTED_STEPS) * step_seconds, UTC),
        rotates_at=datetime.fromtimestamp((step + 1) * step_seconds, UTC),
    )


def qr_payload(card_id: str, code: str) -> str:
    """What the QR code says: ``card_id:code``, so one scan at the counter names the card and its code."""
    return f"{card_id}:{code}"


def qr_svg(text: str) -> str:
    """A standalone SVG image (its own namespace, no XML declaration) of ``text`` as a QR code (level M)."""
    buffer = io.BytesIO()
    segno.make(text, error="m", micro=False).save(buffer, kind="svg", xmldecl=False, nl=False, scale=4)
    return buffer.getvalue().decode()
