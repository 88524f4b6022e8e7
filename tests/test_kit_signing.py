"""Signed bank requests: the canonical format is pinned, tampering and staleness are caught, and BankAuth signs."""

import hashlib
import hmac
import re
import time
from collections.abc import Mapping

import httpx
import pytest

from escrow.kit.signing import (
    ALGORITHMS,
    MAX_SKEW_SECONDS,
    BankAuth,
    SignatureError,
    canonical_request,
    compute_signature,
    join_path_and_query,
    sign_headers,
    verify_signature,
)
from escrow.kit.sm3 import OPENSSL_SM3

SECRET = "bank-signing-secret-例"  # non-ASCII on purpose: the key must be UTF-8 encoded
METHOD = "post"
PATH = "/v1/bank/escrow-accounts/esc_01/deposits?note=a%20b&page=2"
TIMESTAMP = 1764000000
NONCE = "nonce_ABCdef-0123456789"
BODY = b'{"amount":"100.00","currency":"CNY"}'

# Known answers for the request above, so other implementations (the banks') can check themselves against ours.
KNOWN_ANSWERS = {
    "hmac-sha256": "8ad81a1e2a1568cbf3b7ae9343b5f8dbeb0865366e02eeb7c9093f1e9fc08a39",
    "hmac-sm3": "a871f6340ba582e8aa72a820afb2513ac7aef5e1918c671b726c6b98f17a1915",
}


def independent_signature(algorithm: str) -> str:
    """The documented format spelled out by hand, with hashlib/OpenSSL HMAC only (no code from the module)."""
    canonical = "\n".join(
        ["POST", PATH, str(TIMESTAMP), NONCE, hashlib.sha256(BODY).hexdigest()],
    ).encode("utf-8")
    digest = {"hmac-sha256": "sha256", "hmac-sm3": "sm3"}[algorithm]
    return hmac.new(SECRET.encode("utf-8"), canonical, digest).hexdigest()


def signed(algorithm: str = "hmac-sha256", **overrides: object) -> dict[str, str]:
    arguments: dict = {"timestamp": TIMESTAMP, "nonce": NONCE} | overrides
    return sign_headers(SECRET, algorithm, METHOD, PATH, BODY, **arguments)


def verify(headers: Mapping[str, str], algorithm: str = "hmac-sha256", **overrides: object) -> str:
    arguments: dict = {"method": METHOD, "path_with_query": PATH, "body": BODY, "now": TIMESTAMP} | overrides
    return verify_signature(SECRET, algorithm, headers=headers, **arguments)


def error_code(headers: dict[str, str], algorithm: str = "hmac-sha256", **overrides: object) -> str:
    with pytest.raises(SignatureError) as caught:
        verify(headers, algorithm, **overrides)
    assert str(caught.value) == caught.value.message
    return caught.value.code


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_known_answer_vectors_pin_the_canonical_format(algorithm: str) -> None:
    if algorithm == "hmac-sm3" and not OPENSSL_SM3:
        pytest.skip("the independent computation needs OpenSSL's SM3")
    assert independent_signature(algorithm) == KNOWN_ANSWERS[algorithm]
    computed = compute_signature(SECRET, algorithm, METHOD, PATH, str(TIMESTAMP), NONCE, BODY)
    assert computed == KNOWN_ANSWERS[algorithm]
    assert signed(algorithm)["X-Escrow-Signature"] == KNOWN_ANSWERS[algorithm]


def test_canonical_request_layout() -> None:
    assert canonical_request("get", "/v1/ping", "1", "n" * 16, b"") == (
        b"GET\n/v1/ping\n1\n" + b"n" * 16 + b"\n" + hashlib.sha256(b"").hexdigest().encode()
    )


def test_canonical_request_refuses_newlines() -> None:
    with pytest.raises(ValueError, match="newline"):
        canonical_request("GET", "/v1/ping\nX", "1", "n" * 16, b"")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_round_trip_returns_the_nonce(algorithm: str) -> None:
    assert verify(signed(algorithm), algorithm) == NONCE


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_default_timestamp_and_nonce(algorithm: str) -> None:
    first = sign_headers(SECRET, algorithm, "GET", "/v1/ping", b"")
    second = sign_headers(SECRET, algorithm, "GET", "/v1/ping", b"")
    assert abs(int(first["X-Escrow-Timestamp"]) - time.time()) < 5
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", first["X-Escrow-Nonce"])
    assert first["X-Escrow-Nonce"] != second["X-Escrow-Nonce"]
    assert re.fullmatch(r"[0-9a-f]{64}", first["X-Escrow-Signature"])
    assert verify_signature(SECRET, algorithm, "GET", "/v1/ping", first, b"") == first["X-Escrow-Nonce"]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(
    "tampering",
    [
        {"body": BODY.replace(b"100.00", b"900.00")},
        {"body": b""},
        {"path_with_query": PATH.replace("esc_01", "esc_02")},
        {"path_with_query": PATH.replace("page=2", "page=3")},
        {"path_with_query": PATH.split("?")[0]},
        {"path_with_query": PATH.replace("%20", "+")},
        {"method": "PUT"},
    ],
    ids=["body", "empty-body", "path", "query", "query-dropped", "query-re-encoded", "method"],
)
def test_tampering_is_invalid(algorithm: str, tampering: dict[str, object]) -> None:
    assert error_code(signed(algorithm), algorithm, **tampering) == "signature_invalid"


def test_method_case_does_not_matter() -> None:
    assert verify(signed(), method="POST") == NONCE


def test_wrong_secret_is_invalid() -> None:
    headers = sign_headers("another-secret", "hmac-sha256", METHOD, PATH, BODY, timestamp=TIMESTAMP, nonce=NONCE)
    assert error_code(headers) == "signature_invalid"


def test_signed_with_sm3_verified_with_sha256_is_invalid() -> None:
    assert error_code(signed("hmac-sm3"), "hmac-sha256") == "signature_invalid"
    assert error_code(signed("hmac-sha256"), "hmac-sm3") == "signature_invalid"


def test_signed_timestamp_or_nonce_cannot_be_swapped() -> None:
    later = signed() | {"X-Escrow-Timestamp": str(TIMESTAMP + 1)}
    assert error_code(later) == "signature_invalid"
    other_nonce = signed() | {"X-Escrow-Nonce": "another_nonce_0123456"}
    assert error_code(other_nonce) == "signature_invalid"


@pytest.mark.parametrize("skew", [MAX_SKEW_SECONDS, -MAX_SKEW_SECONDS, 0.5])
def test_skew_up_to_the_limit_is_accepted(skew: float) -> None:
    assert verify(signed(), now=TIMESTAMP + skew) == NONCE


@pytest.mark.parametrize("skew", [MAX_SKEW_SECONDS + 1, -(MAX_SKEW_SECONDS + 1), 86400])
def test_old_or_future_timestamps_are_expired(skew: int) -> None:
    # now - timestamp > 300: the request is old; < -300: it claims to come from the future.
    assert error_code(signed(), now=TIMESTAMP + skew) == "signature_expired"


@pytest.mark.parametrize("header", ["X-Escrow-Timestamp", "X-Escrow-Nonce", "X-Escrow-Signature"])
def test_missing_or_empty_headers(header: str) -> None:
    headers = signed()
    assert error_code({name: value for name, value in headers.items() if name != header}) == "signature_missing"
    assert error_code(headers | {header: ""}) == "signature_missing"


def test_no_headers_at_all() -> None:
    assert error_code({}) == "signature_missing"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Escrow-Timestamp", "1764000000.0"),
        ("X-Escrow-Timestamp", "-1764000000"),
        ("X-Escrow-Timestamp", " 1764000000"),
        ("X-Escrow-Timestamp", "1_764_000_000"),
        ("X-Escrow-Timestamp", "\u0661\u0667\u0666\u0664"),  # Arabic-Indic digits: int() accepts them, we do not
        ("X-Escrow-Timestamp", "now"),
        ("X-Escrow-Nonce", "short_nonce"),  # 11 characters
        ("X-Escrow-Nonce", "n" * 129),
        ("X-Escrow-Nonce", "nonce with spaces 123"),
        ("X-Escrow-Nonce", "nonce+slash/equals=123"),
        ("X-Escrow-Nonce", NONCE + "\n"),
        ("X-Escrow-Signature", "z" * 64),
        ("X-Escrow-Signature", KNOWN_ANSWERS["hmac-sha256"][:-1]),
        ("X-Escrow-Signature", KNOWN_ANSWERS["hmac-sha256"] + "0"),
        ("X-Escrow-Signature", "sha256=" + KNOWN_ANSWERS["hmac-sha256"]),
    ],
)
def test_malformed_headers(header: str, value: str) -> None:
    assert error_code(signed() | {header: value}) == "signature_malformed"


def test_nonce_length_bounds_are_inclusive() -> None:
    for nonce in ("n" * 16, "n" * 128):
        assert verify(signed(nonce=nonce)) == nonce


def test_header_names_are_case_insensitive() -> None:
    lowered = {name.lower(): value for name, value in signed().items()}
    assert verify(lowered) == NONCE
    shouted = {name.upper(): value for name, value in signed().items()}
    assert verify(shouted) == NONCE
    assert verify(httpx.Headers(signed())) == NONCE


def test_upper_case_hex_signature_is_accepted() -> None:
    headers = signed()
    headers["X-Escrow-Signature"] = headers["X-Escrow-Signature"].upper()
    assert verify(headers) == NONCE


def test_unknown_algorithm_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown signing algorithm 'hmac-md5'"):
        compute_signature(SECRET, "hmac-md5", METHOD, PATH, str(TIMESTAMP), NONCE, BODY)
    with pytest.raises(ValueError, match="unknown signing algorithm"):
        signed("hmac-md5")
    with pytest.raises(ValueError, match="unknown signing algorithm"):
        verify(signed(), "HMAC-SHA256")
    with pytest.raises(ValueError, match="unknown signing algorithm"):
        BankAuth("token", SECRET, "sha256")


@pytest.mark.parametrize("nonce", ["short", "has space in it 1234", "x" * 129])
def test_sign_headers_refuses_nonces_the_verifier_would_reject(nonce: str) -> None:
    with pytest.raises(ValueError, match="nonce"):
        signed(nonce=nonce)


def test_sign_headers_refuses_negative_timestamps() -> None:
    with pytest.raises(ValueError, match="timestamp"):
        signed(timestamp=-1)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bank_auth_signs_requests_that_verify(algorithm: str) -> None:
    seen: list[str] = []

    def bank_facing_server(request: httpx.Request) -> httpx.Response:
        # Verify the way an ASGI server must: from the raw path and raw query string it was given, and the raw body.
        assert request.headers["Authorization"] == "Bearer tok_123"
        target = join_path_and_query(request.url.raw_path.decode("ascii").split("?")[0], request.url.query.decode())
        nonce = verify_signature(SECRET, algorithm, request.method, target, request.headers, request.content)
        seen.append(target)
        return httpx.Response(200, json={"nonce": nonce})

    auth = BankAuth("tok_123", SECRET, algorithm)
    with httpx.Client(
        base_url="https://escrow.example", auth=auth, transport=httpx.MockTransport(bank_facing_server)
    ) as client:
        post = client.post("/v1/deposits", params={"note": "a b/ç", "page": 2}, json={"amount": "100.00"})
        get = client.get("/v1/escrow-accounts/esc_01")
        empty_query = client.get("/v1/ping?")
    assert post.status_code == get.status_code == empty_query.status_code == 200
    assert post.json()["nonce"] != get.json()["nonce"]
    # httpx form-encodes params (space -> '+'); whatever the encoding, the signature covers it as sent.
    assert seen == ["/v1/deposits?note=a+b%2F%C3%A7&page=2", "/v1/escrow-accounts/esc_01", "/v1/ping"]


def test_join_path_and_query() -> None:
    assert join_path_and_query("/v1/a%20b", "x=1&y=%2F") == "/v1/a%20b?x=1&y=%2F"
    assert join_path_and_query("/v1/a", "") == "/v1/a"


def test_bank_auth_headers_on_a_bare_request() -> None:
    request = httpx.Request("PUT", "https://bank.example/v1/x?y=1", content=b"payload")
    signed_request = next(BankAuth("tok", SECRET).auth_flow(request))
    assert signed_request.url.raw_path == b"/v1/x?y=1"
    expected_headers = {"authorization", "x-escrow-timestamp", "x-escrow-nonce", "x-escrow-signature"}
    assert expected_headers <= set(signed_request.headers)
    verify_signature(SECRET, "hmac-sha256", "PUT", "/v1/x?y=1", signed_request.headers, b"payload")


async def test_bank_auth_works_with_the_async_client() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        verify_signature(
            SECRET, "hmac-sm3", request.method, request.url.raw_path.decode("ascii"), request.headers, request.content
        )
        return httpx.Response(204)

    async with httpx.AsyncClient(auth=BankAuth("tok", SECRET, "hmac-sm3"), transport=httpx.MockTransport(handler)) as c:
        response = await c.post("https://bank.example/v1/callbacks?id=7", content=b"{}")
    assert response.status_code == 204
