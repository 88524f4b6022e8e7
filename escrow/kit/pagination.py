"""Cursor pagination: ``limit`` and an opaque ``cursor`` in, ``next_cursor`` out (None on the last page)."""

import base64
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from escrow.errors import FieldInvalid

T = TypeVar("T")
R = TypeVar("R")
MAX_LIMIT = 200
CURSOR_PATTERN = r"^[A-Za-z0-9_-]+$"  # base64url without padding
CURSOR_MAX_LENGTH = 200


class Page(BaseModel, Generic[T]):
    """One page of a list, in the list's order; pass next_cursor as `cursor` to get the next page."""

    items: list[T]
    next_cursor: str | None = None


def encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def _forged(cause: Exception | None = None) -> FieldInvalid:
    error = FieldInvalid("cursor", "is not a cursor this service issued", rule="cursor")
    error.__cause__ = cause
    return error


def decode_cursor(cursor: str | None, *parts: Callable[[str], object]) -> Any:
    """The value of a cursor this service issued, or None without one.

    Without ``parts`` the cursor holds one id-like string. With them, it holds ``|``-separated parts, each read by
    its parser (:func:`int4`, :func:`int8`, ``date.fromisoformat``…): the value is the parsed part, or a tuple of
    them. Anything else is refused as a forged cursor (422), never passed on to a query.
    """
    if cursor is None:
        return None
    try:
        value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except ValueError as exc:
        raise _forged(exc) from exc
    if not value.isprintable() or not value.isascii():  # ours are ids and numbers; never control characters
        raise _forged()
    if not parts:
        return value
    pieces = value.split("|")
    if len(pieces) != len(parts):
        raise _forged()
    try:
        parsed = tuple(parse(piece) for parse, piece in zip(parts, pieces, strict=True))
    except (ValueError, OverflowError) as exc:
        raise _forged(exc) from exc
    return parsed[0] if len(parsed) == 1 else parsed


def _bounded_int(bits: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit() or len(text) > 19 or int(text) >= 2 ** (bits - 1):
            raise ValueError(f"not a non-negative int{bits // 8}")
        return int(text)

    return parse


int4 = _bounded_int(32)  # a cursor part stored as PostgreSQL integer
int8 = _bounded_int(64)  # … as bigint


def page_of(rows: Sequence[R], limit: int, out: Callable[[R], T], cursor_of: Callable[[R], object]) -> Page[T]:
    """A page from ``limit + 1`` rows fetched in order: the extra row only tells that there is a next page."""
    next_cursor = encode_cursor(str(cursor_of(rows[limit - 1]))) if len(rows) > limit else None
    return Page(items=[out(row) for row in rows[:limit]], next_cursor=next_cursor)
