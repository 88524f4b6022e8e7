"""SM3 (GB/T 32905-2016) hashing: OpenSSL's implementation when the local build has it, else a pure-Python one."""

import hashlib
import struct
from typing import Protocol, Self

_MASK = 0xFFFFFFFF
_IV = (0x7380166F, 0x4914B2B9, 0x172442D7, 0xDA8A0600, 0xA96F30BC, 0x163138AA, 0xE38DEE4D, 0xB0FB0E4E)


def _rotl(x: int, n: int) -> int:
    n %= 32
    return ((x << n) | (x >> (32 - n))) & _MASK


# T_j rotated left by j (mod 32) is constant per round, so it is computed once rather than 64 times per block.
_T_ROTATED = tuple(_rotl(0x79CC4519 if j < 16 else 0x7A879D8A, j) for j in range(64))


def _p0(x: int) -> int:
    return x ^ _rotl(x, 9) ^ _rotl(x, 17)


def _p1(x: int) -> int:
    return x ^ _rotl(x, 15) ^ _rotl(x, 23)


def _compress(state: tuple[int, ...], block: bytes) -> tuple[int, ...]:
    w = list(struct.unpack(">16I", block))
    for j in range(16, 68):
        w.append(_p1(w[j - 16] ^ w[j - 9] ^ _rotl(w[j - 3], 15)) ^ _rotl(w[j - 13], 7) ^ w[j - 6])
    a, b, c, d, e, f, g, h = state
    for j in range(64):
        a12 = _rotl(a, 12)
        ss1 = _rotl((a12 + e + _T_ROTATED[j]) & _MASK, 7)
        ss2 = ss1 ^ a12
        if j < 16:
            ff = a ^ b ^ c
            gg = e ^ f ^ g
        else:
            ff = (a & b) | (a & c) | (b & c)
            gg = (e & f) | (~e & g)
        tt1 = (ff + d + ss2 + (w[j] ^ w[j + 4])) & _MASK
        tt2 = (gg + h + ss1 + w[j]) & _MASK
        a, b, c, d = tt1, a, _rotl(b, 9), c
        e, f, g, h = _p0(tt2), e, _rotl(f, 19), g
    return tuple(x ^ y for x, y in zip(state, (a, b, c, d, e, f, g, h), strict=True))


class SM3Hash(Protocol):
    """The slice of the hashlib object interface that ``hmac`` and our callers rely on."""

    @property
    def name(self) -> str: ...

    @property
    def digest_size(self) -> int: ...

    @property
    def block_size(self) -> int: ...

    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...

    def hexdigest(self) -> str: ...

    def copy(self) -> Self: ...


class PureSM3:
    """A hashlib-compatible SM3 object; slow (pure Python), meant for platforms whose OpenSSL lacks SM3."""

    name = "sm3"
    digest_size = 32
    block_size = 64

    def __init__(self, data: bytes = b"") -> None:
        self._state: tuple[int, ...] = _IV
        self._buffer = b""
        self._length = 0  # total bytes hashed; the padding encodes it in bits
        if data:
            self.update(data)

    def update(self, data: bytes, /) -> None:
        data = bytes(data)  # accept any bytes-like object, as hashlib does
        self._length += len(data)
        buffer = self._buffer + data
        full = len(buffer) - len(buffer) % 64
        state = self._state
        for offset in range(0, full, 64):
            state = _compress(state, buffer[offset : offset + 64])
        self._state = state
        self._buffer = buffer[full:]

    def digest(self) -> bytes:
        # Pad a copy so that digest() can be called repeatedly and update() can continue afterwards, like hashlib.
        bit_length = (self._length * 8) & 0xFFFFFFFFFFFFFFFF
        padding = b"\x80" + b"\x00" * ((55 - self._length) % 64) + struct.pack(">Q", bit_length)
        tail = self._buffer + padding
        state = self._state
        for offset in range(0, len(tail), 64):
            state = _compress(state, tail[offset : offset + 64])
        return struct.pack(">8I", *state)

    def hexdigest(self) -> str:
        return self.digest().hex()

    def copy(self) -> Self:
        clone = type(self)()
        clone._state, clone._buffer, clone._length = self._state, self._buffer, self._length
        return clone


def _openssl_has_sm3() -> bool:
    # Listing in algorithms_available is not enough: FIPS or restricted providers can list SM3 yet refuse to build it.
    try:
        hashlib.new("sm3")
    except ValueError:
        return False
    return True


OPENSSL_SM3: bool = _openssl_has_sm3()


def sm3_new(data: bytes = b"") -> SM3Hash:
    """A new SM3 hash object (OpenSSL's if available); usable as ``hmac.new(key, msg, digestmod=sm3_new)``."""
    if OPENSSL_SM3:
        return hashlib.new("sm3", data)
    return PureSM3(data)
