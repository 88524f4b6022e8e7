"""Cursor pagination: ``limit`` and an opaque ``cursor`` in, ``next_cursor`` out (None on the last page)."""

import base64
from typing import Generic, TypeVar

from pydantic import BaseModel

from escrow.errors import FieldInvalid

T = TypeVar("T")
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
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except ValueError as exc:
        raise FieldInvalid("cursor", "is not a cursor this service issued") from exc


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise FieldInvalid("limit", f"must be between 1 and {MAX_LIMIT}")
    return limit
