"""Cursor pagination: ``limit`` and an opaque ``cursor`` in, ``next_cursor`` out (None on the last page)."""

import base64
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from pydantic import BaseModel

from escrow.errors import FieldInvalid

T = TypeVar("T")
R = TypeVar("R")
MAX_LIMIT = 200


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except ValueError as exc:
        raise FieldInvalid("cursor", "is not a cursor this service issued") from exc
    if not value.isprintable() or not value.isascii():  # ours are ids and numbers; never control characters
        raise FieldInvalid("cursor", "is not a cursor this service issued")
    return value


def page_of(rows: Sequence[R], limit: int, out: Callable[[R], T], cursor_of: Callable[[R], object]) -> Page[T]:
    """A page from ``limit + 1`` rows fetched in order: the extra row only tells that there is a next page."""
    next_cursor = encode_cursor(str(cursor_of(rows[limit - 1]))) if len(rows) > limit else None
    return Page(items=[out(row) for row in rows[:limit]], next_cursor=next_cursor)


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise FieldInvalid("limit", f"must be between 1 and {MAX_LIMIT}")
    return limit
