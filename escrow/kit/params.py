"""Path and query parameters, typed once: ids, limits, cursors, days and instants are bounded at the edge.

Every route declares its parameters with these types, so a value that could not be stored or compared in
PostgreSQL (a NUL byte, an overlong id, a year past 9999 once shifted to UTC) is refused with a 422 naming the
parameter before any handler runs, and the published contract states each bound.
"""

from datetime import date, datetime
from typing import Annotated, Any

from litestar.openapi.spec import Schema
from litestar.params import PathParameter, QueryParameter
from litestar.plugins import OpenAPISchemaPlugin
from litestar.typing import FieldDefinition

from escrow.kit.clock import EARLIEST, LATEST, parse_day, parse_instant
from escrow.kit.pagination import CURSOR_MAX_LENGTH, CURSOR_PATTERN, MAX_LIMIT

# Our ids: a lowercase type prefix, an underscore, then letters and digits (``card_01J…``, ``brk_3f…``).
ID_PATTERN = r"^[a-z]{2,8}_[0-9A-Za-z]{1,40}$"
ID_MAX_LENGTH = 48


class Day(date):
    """A business date (``YYYY-MM-DD``) between 1900-01-01 and 9998-12-31."""


class Instant(datetime):
    """An RFC 3339 timestamp with its offset (``2026-12-06T08:00:00+08:00``), normalised to UTC."""


class ParameterRefused(ValueError):
    """A parameter value outside its type's rule; msgspec turns it into a validation error naming the field."""


def decode_day(_: type, value: Any) -> Day:
    try:
        day = parse_day(value)
        return Day(day.year, day.month, day.day)
    except (TypeError, ValueError):
        raise ParameterRefused(f"must be a date as YYYY-MM-DD from {EARLIEST} to {LATEST}") from None


def decode_instant(_: type, value: Any) -> Instant:
    try:
        t = parse_instant(value)
        return Instant(t.year, t.month, t.day, t.hour, t.minute, t.second, t.microsecond, tzinfo=t.tzinfo)
    except (TypeError, ValueError) as exc:
        raise ParameterRefused(
            f"must be an RFC 3339 timestamp with its offset (e.g. 2026-12-06T08:00:00+08:00) from {EARLIEST} to "
            f"{LATEST} ({exc})"
        ) from None


TYPE_DECODERS = [
    (lambda t: t is Day, decode_day),
    (lambda t: t is Instant, decode_instant),
]


class ParameterSchemas(OpenAPISchemaPlugin):
    """How :class:`Day` and :class:`Instant` appear in the published contract."""

    @staticmethod
    def is_plugin_supported_type(value: Any) -> bool:
        return value in (Day, Instant)

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        if field_definition.annotation is Day:
            return Schema(
                type="string",  # type: ignore[arg-type]
                format="date",  # type: ignore[arg-type]
                description=f"A date, YYYY-MM-DD, from {EARLIEST} to {LATEST}.",
            )
        return Schema(
            type="string",  # type: ignore[arg-type]
            format="date-time",  # type: ignore[arg-type]
            description=f"An RFC 3339 timestamp with its offset, from {EARLIEST} to {LATEST}.",
        )


def _id(what: str) -> dict[str, Any]:
    return {"pattern": ID_PATTERN, "max_length": ID_MAX_LENGTH, "description": f"The {what}'s id."}


def path_id(what: str) -> PathParameter:
    """An id in the path, e.g. ``card_id: Annotated[str, path_id("card")]``."""
    return PathParameter(**_id(what))


def query_id(what: str, name: str | None = None) -> QueryParameter:
    """An optional id filter in the query."""
    return QueryParameter(name=name, **_id(what))


Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT, description=f"Items per page, 1 to {MAX_LIMIT}.")]
Cursor = Annotated[
    str | None,
    QueryParameter(
        pattern=CURSOR_PATTERN,
        max_length=CURSOR_MAX_LENGTH,
        description="The next_cursor of the previous page; omit for the first page.",
    ),
]
