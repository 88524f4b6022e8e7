"""Every error leaves the service as RFC 9457 problem+json with a stable ``code``; internals never do."""

from collections.abc import Sequence
from typing import Any, ClassVar

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from pydantic import BaseModel, Field, ValidationError

PROBLEM_JSON = "application/problem+json"
log = structlog.get_logger("escrow.errors")


class EscrowError(Exception):
    """A domain error: subclasses fix ``code``, ``status`` and ``title``; instances carry the ``detail``."""

    code: ClassVar[str] = "escrow_error"
    status: ClassVar[int] = 400
    title: ClassVar[str] = "Request refused"

    def __init__(
        self, detail: str, *, errors: list[dict[str, str]] | None = None, keep: Sequence[object] = (), **extra: Any
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.keep = keep  # rows to write even though the request is refused (e.g. an unapplied deposit)
        self.extra = extra


class FieldInvalid(EscrowError):
    code = "validation_failed"
    status = 422
    title = "Validation failed"

    def __init__(self, field: str, message: str, *, rule: str = "invalid", keep: Sequence[object] = ()) -> None:
        super().__init__(f"{field}: {message}", errors=[{"field": field, "rule": rule, "message": message}], keep=keep)


class NotFound(EscrowError):
    code = "not_found"
    status = 404
    title = "Not found"


class Conflict(EscrowError):
    code = "conflict"
    status = 409
    title = "Conflict"


def problem(
    status: int, code: str, title: str, detail: str, errors: list[dict[str, str]] | None = None, **extra: Any
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {
        "type": f"urn:escrow:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if errors:
        # every field error names its rule; a domain refusal that gave none breaks the field's general rule
        body["errors"] = [{"rule": "invalid", **error} for error in errors]
    body.update(extra)
    return Response(content=body, status_code=status, media_type=PROBLEM_JSON)


def _field_of(key: str | None, source: str | None) -> str:
    if key:
        return key
    return "body" if source in (None, "body") else str(source)


KEEP_ON_REFUSAL = "keep_on_refusal"  # scope state key: rows the unit of work writes after its rollback


def _escrow_error(request: Request, exc: EscrowError) -> Response[dict[str, Any]]:
    if exc.keep:
        request.scope["state"].setdefault(KEEP_ON_REFUSAL, []).extend(exc.keep)
    response = problem(exc.status, exc.code, exc.title, exc.detail, exc.errors, **exc.extra)
    if "retry_after" in exc.extra:
        response.headers["Retry-After"] = str(exc.extra["retry_after"])
    return response


def _validation_error(_: Request, exc: ValidationException) -> Response[dict[str, Any]]:
    raw = exc.extra if isinstance(exc.extra, list) else []
    errors = [_parameter_error(item) for item in raw if isinstance(item, dict)]
    if not errors:
        # Litestar raises ValidationException for an undecodable body too: that is a 400, not a field error.
        return problem(400, "malformed_body", "Malformed request body", str(exc.detail))
    return _field_errors(errors)


def _field_errors(errors: list[dict[str, str]]) -> Response[dict[str, Any]]:
    return problem(422, "validation_failed", "Validation failed", summarize(errors), errors)


def summarize(errors: list[dict[str, str]]) -> str:
    """A problem's detail naming its first field errors."""
    return "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5]) + ("; …" if len(errors) > 5 else "")


# msgspec's wording of a path or query parameter's broken rule, and the rule's name in our problem documents
_PARAMETER_RULES = (
    ("matching regex", "pattern"),
    ("length <=", "max_length"),
    ("length >=", "min_length"),
    ("Expected `int`", "int_type"),
    ("Expected `bool`", "bool_type"),
    ("Expected `str`", "string_type"),
    (">=", "greater_than_equal"),
    ("<=", "less_than_equal"),
    ("Invalid enum value", "enum"),
    ("Missing required", "missing"),
)


def _parameter_error(item: dict[str, Any]) -> dict[str, str]:
    message = str(item.get("message"))
    rule = next((name for wording, name in _PARAMETER_RULES if wording in message), "invalid")
    if message.startswith("Expected `str` matching regex"):
        message = "is not in the form this parameter takes" + (
            " (an id such as card_01J…)" if "[a-z]{2,8}_" in message else ""
        )
    # a type decoder's refusal (escrow.kit.params) comes wrapped: keep its own words
    message = message.split(" - at `")[0]
    return {"field": _field_of(item.get("key"), item.get("source")), "rule": rule, "message": message}


def _pydantic_error(_: Request, exc: ValidationError) -> Response[dict[str, Any]]:
    return _field_errors(pydantic_field_errors(exc))


def pydantic_field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """A pydantic validation error as problem+json field errors: the field's dotted path, the rule, the words."""
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "body", "rule": err["type"], "message": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


_HTTP_CODES = {
    400: ("bad_request", "Bad request"),
    401: ("unauthenticated", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("body_too_large", "Request body too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    429: ("too_many_requests", "Too many requests"),
}


def _http_error(request: Request, exc: HTTPException) -> Response[dict[str, Any]]:
    if exc.status_code >= 500:
        return _internal_error(request, exc)
    code, title = _HTTP_CODES.get(exc.status_code, ("http_error", "HTTP error"))
    detail = str(exc.detail) if exc.detail else title
    if exc.status_code == 400 and _caused_by_decoding(exc):
        code, title = "malformed_json", "Malformed JSON"
        detail = f"The request body is not valid JSON: {detail}"
    headers = exc.headers or {}
    response = problem(exc.status_code, code, title, detail)
    response.headers.update(headers)
    return response


def _caused_by_decoding(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, SerializationException | msgspec.DecodeError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# PostgreSQL gave up on the transaction to break a deadlock or a serialization conflict: nothing was changed, and
# the same request (same Idempotency-Key) should simply be sent again.
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
# The database can't be reached or won't take the connection (stopped, restarting, shutting down, out of
# connections): nothing was changed, and the request should be sent again later. SQLSTATE class 08 is a lost or
# refused connection; 57P01-57P03 an administrator's or a crash shutdown, or "cannot connect now"; 53300 too many
# connections.
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})
_DRIVER_MODULES = ("asyncpg", "sqlalchemy")
DATABASE_RETRY_AFTER_SECONDS = 5


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes (SQLAlchemy raises its wrappers ``from`` the driver's exception)."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


def _retryable(exc: BaseException) -> bool:
    return any(getattr(seen, "sqlstate", None) in _RETRYABLE_SQLSTATES for seen in _chain(exc))


def _raised_by_driver(exc: BaseException) -> bool:
    traceback = exc.__traceback__
    while traceback is not None:
        if traceback.tb_frame.f_globals.get("__name__", "").startswith(_DRIVER_MODULES):
            return True
        traceback = traceback.tb_next
    return False


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is out of reach (as opposed to a bug or a refused statement). The one place
    that classifies connection errors, whichever layer raised them: asyncpg, SQLAlchemy's pool or the socket."""
    from asyncpg import InterfaceError as DriverInterfaceError
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    for seen in _chain(exc):
        sqlstate = getattr(seen, "sqlstate", None)
        if isinstance(sqlstate, str) and (sqlstate.startswith("08") or sqlstate in _UNAVAILABLE_SQLSTATES):
            return True
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:  # SQLAlchemy recognised a disconnect
            return True
        if isinstance(seen, PoolTimeout):  # every pooled connection busy for pool_timeout: out of connections
            return True
        if isinstance(seen, DriverInterfaceError) and "connection is closed" in str(seen):
            return True
        if isinstance(seen, OSError) and _raised_by_driver(seen):  # refused, reset, unreachable, timed out
            return True
    return False


def cause_summary(exc: BaseException) -> str:
    """The innermost cause as ``Type: message``: the driver's own words, never a statement or its parameters."""
    root = _chain(exc)[-1]
    return f"{type(root).__name__}: {str(root)[:200]}"


def _internal_error(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    if _retryable(exc):
        log.warning("transaction_conflict_retry", path=request.url.path, error=cause_summary(exc))
        response = problem(
            503,
            "transient_conflict",
            "Try again",
            "The request met a concurrent one and was rolled back; nothing was changed. Send it again (with the "
            "same Idempotency-Key).",
        )
        response.headers["Retry-After"] = "1"
        return response
    if database_unavailable(exc):
        # One line, no traceback: while the database is down every request lands here.
        log.warning("database_unavailable", path=request.url.path, error=cause_summary(exc))
        response = problem(
            503,
            "database_unavailable",
            "Database unavailable",
            "The database can't be reached just now; nothing was changed. Send the request again later (with the "
            "same Idempotency-Key).",
        )
        response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
        return response
    log.error("unhandled_exception", path=request.url.path, exc_info=exc)
    return problem(
        HTTP_500_INTERNAL_SERVER_ERROR,
        "internal_error",
        "Internal server error",
        "The request failed on our side; nothing was changed. Quote the X-Request-ID header when reporting it.",
    )


exception_handlers: dict[type[Exception] | int, Any] = {
    EscrowError: _escrow_error,
    ValidationException: _validation_error,
    ValidationError: _pydantic_error,
    HTTPException: _http_error,
    Exception: _internal_error,
}


class FieldError(BaseModel):
    """One field's broken rule."""

    field: str = Field(description="The field, dotted for nested ones (`price.amount`, `services.3.sessions`).")
    rule: str = Field(description="The rule it breaks, a stable name (`int_type`, `pattern`, `extra_forbidden`…).")
    message: str = Field(description="The rule in words.")
    line: int | None = Field(default=None, description="Statements: the line of the file at fault.")


class Problem(BaseModel):
    """RFC 9457 problem details, as every error response carries them."""

    type: str = Field(description="urn:escrow:problem:<code>")
    title: str
    status: int
    detail: str
    code: str = Field(description="Stable machine-readable code of the problem.")
    errors: list[FieldError] | None = Field(default=None, description="Validation failures, one per field.")


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI declarations of the problem+json responses a route can return."""
    return {
        status: ResponseSpec(
            data_container=Problem, media_type=PROBLEM_JSON, description=_describe(status), generate_examples=False
        )
        for status in statuses
    }


def _describe(status: int) -> str:
    return {422: "Validation failed", 409: "Conflict", 503: "Not ready"}.get(
        status, _HTTP_CODES.get(status, ("", "Error"))[1]
    )
