"""Personal and banking data at rest: encrypted (AES-256-GCM) or keyed-hashed (HMAC-SHA256), shown only masked."""

import base64
import hashlib
import hmac
import os
import re
import unicodedata

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_PHONE = re.compile(r"1[3-9][0-9]{9}")  # ASCII digits only: \d would take any script's digits
_PHONE_SEPARATORS = re.compile(r"[\s\-\u2010-\u2015\u2212]")  # spaces, hyphens and dashes
_ACCOUNT = re.compile(r"^\d{8,32}$")


class Keyring:
    """Keys derived from the one service secret: one for encryption, one for look-up hashes, one for presence codes."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("the service secret key must be at least 32 bytes")
        self._cipher = AESGCM(hmac.new(secret, b"escrow/field-encryption/v1", hashlib.sha256).digest())
        self._hash_key = hmac.new(secret, b"escrow/lookup-hash/v1", hashlib.sha256).digest()
        self.presence_key = hmac.new(secret, b"escrow/presence-code/v1", hashlib.sha256).digest()

    def encrypt(self, plaintext: str, context: str) -> str:
        """``context`` names where the value lives (``table.column:row id``): a ciphertext copied elsewhere fails."""
        nonce = os.urandom(12)
        sealed = self._cipher.encrypt(nonce, plaintext.encode(), f"v1:{context}".encode())
        return "v1:" + base64.urlsafe_b64encode(nonce + sealed).decode()

    def decrypt(self, token: str, context: str) -> str:
        version, _, payload = token.partition(":")
        if version != "v1":
            raise ValueError("unknown ciphertext version")
        raw = base64.urlsafe_b64decode(payload)
        return self._cipher.decrypt(raw[:12], raw[12:], f"v1:{context}".encode()).decode()

    def lookup_hash(self, value: str) -> str:
        """Equal inputs give equal hashes (for finding a record), but without the key nothing can be reversed."""
        return hmac.new(self._hash_key, value.encode(), hashlib.sha256).hexdigest()


def normalize_phone(raw: str) -> str:
    """A mainland mobile number as its 11 ASCII digits — the one form that is hashed, masked and compared, so one
    phone is one consumer however it was typed. Unicode NFKC first (full-width digits, plus and hyphen, as
    Chinese input methods type them, become ASCII), then spaces and dashes are dropped and a ``+86`` / ``0086`` /
    ``86`` country prefix removed. Any other character, a digit of another script included, is refused
    (ValueError)."""
    digits = _PHONE_SEPARATORS.sub("", unicodedata.normalize("NFKC", raw))
    for prefix in ("+86", "0086", "86"):
        if digits.startswith(prefix) and len(digits) == 11 + len(prefix):
            digits = digits[len(prefix) :]
    if not _PHONE.fullmatch(digits):
        raise ValueError("must be a mainland China mobile number: 11 digits starting with 13-19")
    return digits


def mask_phone(phone: str) -> str:
    return f"{phone[:3]}****{phone[-4:]}"


def normalize_account_number(raw: str) -> str:
    digits = re.sub(r"[\s-]", "", raw)
    if not _ACCOUNT.match(digits):
        raise ValueError("must be a bank account number of 8 to 32 digits")
    return digits


def mask_account_number(number: str) -> str:
    return f"**** {number[-4:]}"
