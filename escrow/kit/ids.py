"""Opaque, time-sortable identifiers with a type prefix (``mer_01J…``): 48-bit milliseconds + 80 random bits; and
wholly random ones of the same shape where the creation time itself would tell too much (:func:`new_random_id`)."""

import secrets
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(prefix: str) -> str:
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return f"{prefix}_{''.join(reversed(chars))}"


def new_random_id(prefix: str) -> str:
    """An id of the same shape carrying 130 random bits and no time: a consumer's id is handed to every merchant
    that registers the phone, and a time in it would tell that merchant when the phone first became known."""
    return f"{prefix}_{''.join(secrets.choice(_CROCKFORD) for _ in range(26))}"
