"""A bank request is authentic when its signature headers carry a fresh HMAC of method, path, time, nonce and body hash.

Canonical string (UTF-8, newline-joined, no trailing newline)::

    METHOD            upper-case
    PATH?QUERY        exactly as sent on the wire: raw path, plus '?' and the raw query only when there is a query
    TIMESTAMP         unix seconds, decimal, as in X-Escrow-Timestamp
    NONCE             as in X-Escrow-Nonce
    hex(SHA-256(body))

Signature: lowercase hex HMAC-SHA256 (``hmac-sha256``) or HMAC-SM3 (``hmac-sm3``) of that string keyed with the bank's
signing secret (UTF-8), sent in X-Escrow-Signature. Replay protection is split: this module rejects stale timestamps;
the caller must reject nonces it has already seen within the skew window.
"""

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Generator, Mapping
from typing import Any, Literal

import httpx

from escrow.kit.sm3 import sm3_new

ALGORITHMS = ("hmac-sha256", "hmac-sm3")
MAX_SKEW_SECONDS = 300

TIMESTAMP_HEADER = "X-Escrow-Timestamp"
NONCE_HEADER = "X-Escrow-Nonce"
SIGNATURE_HEADER = "X-Escrow-Signature"

SignatureErrorCode = Literal["signature_missing", "signature_malformed", "signature_expired", "signature_invalid"]

_DIGESTS: dict[str, Callable[..., Any]] = {"hmac-sha256": hashlib.sha256, "hmac-sm3": sm3_new}
# Explicit ASCII classes and fullmatch: \d and \w accept non-ASCII digits/letters, and '$' tolerates a trailing '\n'.
_TIMESTAMP = re.compile(r"[0-9]{1,15}")
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,128}")
# Both digests are 32 bytes, so every well-formed signature is exactly 64 hex digits.
_SIGNATURE = re.compile(r"[0-9a-fA-F]{64}")


class SignatureError(Exception):
    """A request failed signature verification; ``code`` is machine-readable, ``message`` is for humans."""

    def __init__(self, code: SignatureErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: SignatureErrorCode = code
        self.message = message


def _digest(algorithm: str) -> Callable[..., Any]:
    try:
        return _DIGESTS[algorithm]
    except KeyError:
        raise ValueError(f"unknown signing algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}") from None


def join_path_and_query(raw_path: str, raw_query: str) -> str:
    """PATH?QUERY from a raw path and raw query (as an ASGI scope gives them): '?' only if there is a query."""
    return f"{raw_path}?{raw_query}" if raw_query else raw_path


def canonical_request(method: str, path_with_query: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """The exact bytes that are signed."""
    fields = (method.upper(), path_with_query, timestamp, nonce)
    # A newline inside a field would let two different requests share one canonical string.
    if any("\n" in field for field in fields):
        raise ValueError("method, path, timestamp and nonce must not contain a newline")
    return "\n".join((*fields, hashlib.sha256(body).hexdigest())).encode("utf-8")


def compute_signature(
    secret: str, algorithm: str, method: str, path_with_query: str, timestamp: str, nonce: str, body: bytes
) -> str:
    """Lowercase hex HMAC of the canonical request under ``algorithm``; ``ValueError`` for an unknown algorithm."""
    digestmod = _digest(algorithm)
    message = canonical_request(method, path_with_query, timestamp, nonce, body)
    return hmac.new(secret.encode("utf-8"), message, digestmod=digestmod).hexdigest()


def sign_headers(
    secret: str,
    algorithm: str,
    method: str,
    path_with_query: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The three signature headers for a request, with the current time and a fresh random nonce by default."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    # token_urlsafe(24) is 32 characters of [A-Za-z0-9_-]: inside the nonce rules, with 192 bits of entropy.
    nonce = secrets.token_urlsafe(24) if nonce is None else nonce
    # Refuse to produce headers the receiving side would reject as malformed; failing here points at the real bug.
    if not _TIMESTAMP.fullmatch(stamp):
        raise ValueError(f"timestamp must be non-negative unix seconds, got {stamp!r}")
    if not _NONCE.fullmatch(nonce):
        raise ValueError("nonce must be 16-128 characters of [A-Za-z0-9_-]")
    signature = compute_signature(secret, algorithm, method, path_with_query, stamp, nonce, body)
    return {TIMESTAMP_HEADER: stamp, NONCE_HEADER: nonce, SIGNATURE_HEADER: signature}


def verify_signature(
    secret: str,
    algorithm: str,
    method: str,
    path_with_query: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
) -> str:
    """Return the request's nonce if its signature headers verify, else raise ``SignatureError``.

    The caller must still check the nonce against its replay store. ``headers`` may be any mapping; names are
    compared case-insensitively. ``ValueError`` for an unknown algorithm (a configuration error, not a bad request).
    """
    digestmod = _digest(algorithm)
    lowered = {name.lower(): value for name, value in headers.items()}
    values: dict[str, str] = {}
    for name in (TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER):
        value = lowered.get(name.lower())
        if not value:
            raise SignatureError("signature_missing", f"missing {name} header")
        values[name] = value
    stamp, nonce, signature = values[TIMESTAMP_HEADER], values[NONCE_HEADER], values[SIGNATURE_HEADER]

    if not _TIMESTAMP.fullmatch(stamp):
        raise SignatureError("signature_malformed", f"{TIMESTAMP_HEADER} must be unix seconds as decimal digits")
    if not _NONCE.fullmatch(nonce):
        raise SignatureError("signature_malformed", f"{NONCE_HEADER} must be 16-128 characters of [A-Za-z0-9_-]")
    if not _SIGNATURE.fullmatch(signature):
        raise SignatureError("signature_malformed", f"{SIGNATURE_HEADER} must be 64 hexadecimal digits")

    current = time.time() if now is None else now
    skew = current - int(stamp)
    if abs(skew) > MAX_SKEW_SECONDS:
        direction = "old" if skew > 0 else "in the future"
        raise SignatureError(
            "signature_expired",
            f"{TIMESTAMP_HEADER} is {abs(int(skew))} s {direction}; at most {MAX_SKEW_SECONDS} s of skew is accepted",
        )

    message = canonical_request(method, path_with_query, stamp, nonce, body)
    expected = hmac.new(secret.encode("utf-8"), message, digestmod=digestmod).hexdigest()
    # Constant-time comparison so response timing does not reveal how many leading characters were right.
    if not hmac.compare_digest(expected, signature.lower()):
        raise SignatureError("signature_invalid", "signature does not match the request")
    return nonce


class BankAuth(httpx.Auth):
    """httpx auth that sends ``Authorization: Bearer <token>`` and signs every request with the bank's secret."""

    # httpx must buffer the body before auth_flow runs, since the body hash is part of the signature.
    requires_request_body = True

    def __init__(self, token: str, secret: str, algorithm: str = "hmac-sha256") -> None:
        _digest(algorithm)  # fail at construction, not on the first request
        self._token = token
        self._secret = secret
        self._algorithm = algorithm

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        # httpx's raw_path is the request target as written on the wire (percent-encoded path, then '?query'). It
        # keeps a bare trailing '?' when the query is empty, which the receiving side cannot see as a query, so the
        # path and query are re-joined under the canonical rule instead of signing raw_path verbatim.
        raw_path, _, raw_query = request.url.raw_path.decode("ascii").partition("?")
        path_with_query = join_path_and_query(raw_path, raw_query)
        request.headers["Authorization"] = f"Bearer {self._token}"
        request.headers.update(
            sign_headers(self._secret, self._algorithm, request.method, path_with_query, request.content)
        )
        yield request
