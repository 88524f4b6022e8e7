"""SM3: the pure-Python fallback matches the standard's vectors and OpenSSL, on its own and inside HMAC."""

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from escrow.kit import sm3
from escrow.kit.sm3 import OPENSSL_SM3, PureSM3, sm3_new

# GB/T 32905-2016 appendix A examples 1 and 2, plus the empty message (widely published, e.g. in OpenSSL's tests).
VECTORS = {
    b"abc": "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0",
    b"abcd" * 16: "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732",
    b"": "1ab21d8355cfa17f8e61194831e81a8f22bec8c728fefb747ed035eb5082aa2b",
}

needs_openssl = pytest.mark.skipif(not OPENSSL_SM3, reason="local OpenSSL has no SM3 to compare against")


@pytest.mark.parametrize(("message", "expected"), VECTORS.items(), ids=["abc", "abcd*16", "empty"])
def test_standard_vectors(message: bytes, expected: str) -> None:
    assert PureSM3(message).hexdigest() == expected
    assert sm3_new(message).hexdigest() == expected
    assert PureSM3(message).digest() == bytes.fromhex(expected)


def test_interface_matches_hashlib() -> None:
    for hasher in (PureSM3(), sm3_new()):
        assert (hasher.name, hasher.digest_size, hasher.block_size) == ("sm3", 32, 64)


@needs_openssl
def test_every_length_across_padding_boundaries_matches_openssl() -> None:
    # Lengths 55/56 (length field no longer fits) and 63/64/65 (block edges) are where padding bugs live.
    for length in range(200):
        message = bytes(range(length))
        assert PureSM3(message).hexdigest() == hashlib.new("sm3", message).hexdigest(), length


@needs_openssl
@given(st.binary(max_size=1000))
def test_random_messages_match_openssl(message: bytes) -> None:
    assert PureSM3(message).digest() == hashlib.new("sm3", message).digest()


@given(st.lists(st.binary(max_size=150), max_size=8))
def test_chunked_updates_equal_one_update(chunks: list[bytes]) -> None:
    hasher = PureSM3()
    for chunk in chunks:
        hasher.update(chunk)
    assert hasher.hexdigest() == PureSM3(b"".join(chunks)).hexdigest() == sm3_new(b"".join(chunks)).hexdigest()


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_copy_is_independent_and_digest_does_not_finalise(first: bytes, second: bytes) -> None:
    hasher = PureSM3(first)
    snapshot = hasher.copy()
    hasher.digest()  # must not disturb the running state
    hasher.update(second)
    assert snapshot.hexdigest() == PureSM3(first).hexdigest()
    assert hasher.hexdigest() == PureSM3(first + second).hexdigest()


def test_update_accepts_bytes_like_objects() -> None:
    hasher = PureSM3()
    hasher.update(bytearray(b"ab"))
    hasher.update(memoryview(b"c"))
    assert hasher.hexdigest() == VECTORS[b"abc"]


@needs_openssl
@given(st.binary(max_size=200), st.binary(max_size=300))
def test_hmac_with_pure_sm3_equals_openssl_hmac(key: bytes, message: bytes) -> None:
    # hmac.new(..., "sm3") runs OpenSSL's own HMAC, an implementation independent of ours; keys over 64 bytes
    # exercise the hash-the-key-first branch.
    expected = hmac.new(key, message, "sm3").hexdigest()
    assert hmac.new(key, message, digestmod=PureSM3).hexdigest() == expected
    assert hmac.new(key, message, digestmod=sm3_new).hexdigest() == expected


def test_sm3_new_falls_back_to_pure_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sm3, "OPENSSL_SM3", False)
    hasher = sm3.sm3_new(b"abc")
    assert isinstance(hasher, PureSM3)
    assert hasher.hexdigest() == VECTORS[b"abc"]
    assert hmac.new(b"key", b"abc", digestmod=sm3.sm3_new).digest_size == 32


@needs_openssl
def test_sm3_new_prefers_openssl() -> None:
    assert not isinstance(sm3_new(), PureSM3)
