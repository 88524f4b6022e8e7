"""Request bodies are JSON, read strictly once at the edge: the declared media type, no duplicate keys, no NUL,
bounded nesting, no unknown fields, and no coercion (an amount is a JSON integer, nothing else).

Three pieces, each used by every route with a body:
- :class:`EdgeRequest` (the app's request class) checks the media type and the JSON text itself;
- :class:`RequestModel` is the base of every request body model: unknown fields are refused;
- :class:`StrictBodyPlugin` validates bodies in pydantic's strict JSON mode (a string is never a number,
  a float never an integer; dates are still read from their ISO text).
"""

import json
from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import HTTPException
from litestar.plugins.pydantic import PydanticInitPlugin
from litestar.types import Empty
from litestar.utils.predicates import is_class_and_subclass
from pydantic import BaseModel, ConfigDict, ValidationError

from escrow.errors import EscrowError, FieldInvalid, pydantic_field_errors, summarize

MAX_DEPTH = 32  # our bodies nest three or four levels; a deeper document is refused before any validation


class RequestModel(BaseModel):
    """Base of every request body: a field the model doesn't declare is refused (422 ``extra_forbidden``)."""

    model_config = ConfigDict(extra="forbid")


class BodyInvalid(EscrowError):
    code = "validation_failed"
    status = 422
    title = "Validation failed"


class MalformedJson(EscrowError):
    code = "malformed_json"
    status = 400
    title = "Malformed JSON"


def is_json_media_type(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise MalformedJson(f"The request body is not valid JSON: the key {duplicate!r} appears twice in one object.")
    return result


def _check_tree(value: Any) -> None:
    """Refuse NUL characters in any string or key (PostgreSQL text can't hold them) and nesting past MAX_DEPTH."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth >= MAX_DEPTH:  # depth counts from 0: this value is level depth + 1
            raise MalformedJson(f"The request body nests deeper than {MAX_DEPTH} levels.")
        if isinstance(node, str):
            if "\x00" in node:
                raise FieldInvalid(path or "body", "must not contain the NUL character (\\u0000)", rule="no_nul")
        elif isinstance(node, dict):
            for key, item in node.items():
                where = f"{path}.{key}" if path else key
                if "\x00" in key:
                    raise FieldInvalid(path or "body", "field names must not contain NUL", rule="no_nul")
                stack.append((item, where, depth + 1))
        elif isinstance(node, list):
            stack.extend((item, f"{path}.{n}" if path else str(n), depth + 1) for n, item in enumerate(node))


def parse_json(body: bytes) -> Any:
    """The JSON value of a request body, read strictly (see the module's rules)."""
    # The tree walk costs a little per value; bodies without nesting or an escaped NUL skip it.
    needs_walk = b"\\u0000" in body or body.count(b"[") + body.count(b"{") > MAX_DEPTH
    try:
        value = json.loads(body, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except RecursionError:
        raise MalformedJson(f"The request body nests deeper than {MAX_DEPTH} levels.") from None
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
        raise MalformedJson(f"The request body is not valid JSON: {exc}") from None
    if needs_walk:
        _check_tree(value)
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class EdgeRequest(Request):
    """The app's request class: a JSON body is accepted only as ``application/json`` and only when strictly valid."""

    async def json(self) -> Any:
        if self._json is Empty:
            content_type = self.headers.get("content-type", "")
            if not is_json_media_type(content_type):
                raise HTTPException(
                    status_code=415,
                    detail=f"This endpoint takes application/json; the request says {content_type or 'nothing'!r}.",
                )
            self._json = self._connection_state.json = parse_json(await self.body() or b"null")
        return self._json


def _strict_model(model_type: type[BaseModel], value: Any) -> BaseModel:
    # Strict JSON mode: "50000" is not an integer, 50000.0 is not an integer, "2026-12-06" is a date.
    try:
        return model_type.model_validate_json(msgspec.json.encode(value), strict=True)
    except ValidationError as exc:
        # raised as our own error (not a ValueError), so it reaches the handler with each field's rule intact
        errors = pydantic_field_errors(exc)
        raise BodyInvalid(summarize(errors), errors=errors) from None
    except (TypeError, msgspec.EncodeError) as exc:
        raise MalformedJson(f"The request body can't be read: {exc}") from None


class StrictBodyPlugin(PydanticInitPlugin):
    """Litestar's pydantic plugin, except that request bodies are validated in strict JSON mode."""

    @classmethod
    def decoders(cls, validate_strict: bool = False) -> list[tuple[Any, Any]]:
        return [
            (lambda t: is_class_and_subclass(t, BaseModel), _strict_model),
            *super().decoders(validate_strict),
        ]
