"""The published API contract: served at /openapi.json, browsable at /docs, committed as contracts/openapi.json.

Litestar writes the operations from the route table; :func:`contract` then states, from the same route table,
what every operation shares and Litestar can't see: who may call it (``x-roles``, ``security``), the headers it
needs (``Idempotency-Key``, the bank's signature), and the problem+json answers the edge gives to any request
(400, 401, 403, 415, 422, 429, 503). What the contract says is what the service does: tests fuzz the service
against this document.
"""

import dataclasses
import inspect
import json
import re
from pathlib import Path
from typing import Any, get_args

from litestar import MediaType, Request, get
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.routes import HTTPRoute
from litestar.serialization import encode_json
from pydantic import BaseModel

import escrow
from escrow.errors import Problem
from escrow.idempotency import KEY_PATTERN as IDEMPOTENCY_PATTERN

STATIC = Path(__file__).parent / "static"
# The reference page's assets ship in the package (bank intranets have no internet), pinned by their folder.
SWAGGER_UI = "/static/swagger-ui-5.36.0"
_swagger = SwaggerRenderPlugin(
    path="/docs",
    js_url=f"{SWAGGER_UI}/swagger-ui-bundle.js",
    css_url=f"{SWAGGER_UI}/swagger-ui.css",
    standalone_preset_js_url=f"{SWAGGER_UI}/swagger-ui-standalone-preset.js",
)


def operation_id(route_handler: HTTPRouteHandler, http_method: str, path_components: list[Any]) -> str:
    """The handler's own name in camelCase (``create_plan`` → ``createPlan``): unique, as handler names are."""
    first, *rest = route_handler.handler_name.split("_")
    return first + "".join(word.capitalize() for word in rest)


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Prepaid Escrow Ledger",
        version=escrow.__version__,
        description=(
            "Bank custody of consumers' prepaid funds: sales into escrow, release per service rendered, "
            "refunds, closure settlement with first compensation, and bank reconciliation.\n\n"
            '- Amounts are integer fen (`{"amount": 12345, "currency": "CNY"}`), never strings or floats.\n'
            "- Request bodies are `application/json`; unknown fields, duplicate keys and NUL characters are "
            "refused.\n"
            "- Every state-changing request carries an `Idempotency-Key`; a retry with the same key gets the first "
            "answer (header `Idempotency-Replayed: true`) and never moves money twice.\n"
            "- Banks sign every request (`X-Escrow-Timestamp`, `X-Escrow-Nonce`, `X-Escrow-Signature`: hex HMAC "
            "over `METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nhex(SHA-256(body))`).\n"
            "- Errors are `application/problem+json` (RFC 9457) with a stable `code`, and `errors[]` naming each "
            "field and the rule it breaks.\n"
            "- `x-roles` on each operation lists the roles that may call it; others' objects answer 404."
        ),
        # Litestar's own controller lives under /schema; its catch-all must not swallow unknown paths at /.
        path="/schema",
        render_plugins=[_swagger],
        operation_id_creator=operation_id,
        use_handler_docstrings=True,
    )


_SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "A token (`esk_…`) issued to one party; shown once, stored hashed.",
    },
    "bankSignature": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Escrow-Signature",
        "description": "Banks only, with their bearer token: hex HMAC-SHA256 (or HMAC-SM3) with the bank's signing "
        "secret over `METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nhex(SHA-256(body))`; see X-Escrow-Timestamp and "
        "X-Escrow-Nonce.",
    },
}

_PROBLEM_STATUSES = {
    400: "Malformed request: the body is not JSON, or a key is repeated, or it nests too deep",
    401: "Authentication required, or the token or bank signature is invalid",
    403: "The caller's role may not call this operation",
    409: "Conflict with the object's state, or a request with this Idempotency-Key is still in flight",
    415: "The body is not application/json",
    422: "Validation failed: `errors[]` names each field and its rule",
    429: "Too many failed attempts from this address; see Retry-After",
    503: "The database is unavailable or the request met a concurrent one; nothing was changed: retry (same "
    "Idempotency-Key) after Retry-After",
}


def _header(name: str, description: str, schema: dict[str, Any], *, required: bool) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": required, "description": description, "schema": schema}


def _bank_headers(required: bool) -> list[dict[str, Any]]:
    who = "Required" if required else "Banks: required"
    return [
        _header(
            "X-Escrow-Timestamp",
            f"{who}: unix seconds (digits), within 300 s of the server's clock.",
            {"type": "string"},
            required=required,
        ),
        _header(
            "X-Escrow-Nonce",
            f"{who}: a random value used once, 16 to 128 characters of [A-Za-z0-9_-].",
            {"type": "string"},
            required=required,
        ),
        _header(
            "X-Escrow-Signature",
            f"{who}: the request's signature, lowercase hex (see the security scheme bankSignature).",
            {"type": "string"},
            required=required,
        ),
    ]


def _roles(handler: HTTPRouteHandler) -> tuple[tuple[str, ...], tuple[str, ...]]:
    for guard in handler.guards or ():
        if hasattr(guard, "roles"):
            return guard.roles, guard.own
    return (), ()


def _describe_access(roles: tuple[str, ...], own: tuple[str, ...], idempotent: bool, unsafe: bool) -> str:
    if not roles:
        who = "Anyone (no token)."
    else:
        parts = [f"{role} (own objects only)" if role in own else role for role in roles]
        who = "Who may call: " + ", ".join(parts) + "."
    lines = [who]
    if unsafe and idempotent:
        lines.append("Send an `Idempotency-Key`: a retry with the same key answers as the first request did.")
    if "bank" in roles:
        lines.append("Banks sign the request (`X-Escrow-*` headers).")
    return " ".join(lines)


_CONSTRAINTS = ("pattern", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _models(app: Any) -> dict[str, type]:
    """The models (pydantic, dataclasses) of request bodies and responses, by schema name, with those they nest."""
    found: dict[str, type] = {}

    def visit(annotation: Any) -> None:
        for arg in get_args(annotation):
            visit(arg)
        if not isinstance(annotation, type) or _component_name(annotation) in found:
            return
        if issubclass(annotation, BaseModel):
            found[_component_name(annotation)] = annotation
            for field in annotation.model_fields.values():
                visit(field.annotation)
        elif dataclasses.is_dataclass(annotation):
            found[_component_name(annotation)] = annotation
            for field in dataclasses.fields(annotation):
                visit(field.type)

    visit(Problem)
    for route in app.routes:
        for handler, _ in getattr(route, "route_handler_map", {}).values():
            signature = handler.parsed_fn_signature
            visit(signature.return_type.annotation)
            if "data" in signature.parameters:
                visit(signature.parameters["data"].annotation)
    return found


def _component_name(model: type) -> str:
    """The name Litestar gives a model's schema (``Page[CardOut]`` → ``Page_CardOut_``)."""
    return re.sub(r"[^A-Za-z0-9]", "_", model.__name__)


def _own_doc(model: type) -> str | None:
    doc = model.__dict__.get("__doc__")
    if doc is None and getattr(model, "__pydantic_generic_metadata__", {}).get("origin"):
        doc = model.__pydantic_generic_metadata__["origin"].__doc__
    return inspect.cleandoc(doc) if doc else None


def _state_constraints(components: dict[str, Any], models: dict[str, type]) -> None:
    """Copy what pydantic validates and Litestar's schemas leave out (patterns, bounds, refused unknown fields)
    into the component schemas, so generated and hand-written clients see every rule the server applies."""
    for name, schema in components.get("schemas", {}).items():
        model = models.get(name)
        if model is None:
            continue
        # the model's own docstring describes its schema (Litestar reads only the fields)
        doc = _own_doc(model)
        if doc:
            schema["description"] = doc
        if not issubclass(model, BaseModel):
            continue
        validation = model.model_json_schema(mode="validation")
        if model.model_config.get("extra") == "forbid":
            schema["additionalProperties"] = False
        for field, rules in validation.get("properties", {}).items():
            target = schema.get("properties", {}).get(field)
            if target is None:
                continue
            for variant in (rules, *rules.get("anyOf", ())):
                for keyword in _CONSTRAINTS:
                    if keyword in variant:
                        holder = _string_or_number_branch(target, variant)
                        holder.setdefault(keyword, variant[keyword])


def _string_or_number_branch(target: dict[str, Any], variant: dict[str, Any]) -> dict[str, Any]:
    """The part of a property's schema of the same type as ``variant`` (a nullable field has a oneOf)."""
    for branch in target.get("oneOf", target.get("anyOf", ())):
        if branch.get("type") == variant.get("type"):
            return branch
    return target


def contract(app: Any) -> dict[str, Any]:
    """The OpenAPI document of ``app``, completed from its route table (see the module's docstring)."""
    document: dict[str, Any] = json.loads(encode_json(app.openapi_schema.to_schema()))
    components = document.setdefault("components", {})
    components["securitySchemes"] = _SECURITY_SCHEMES
    _state_constraints(components, _models(app))
    problem = {"$ref": "#/components/schemas/Problem"}
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        item = document["paths"].get(route.path_format)
        if item is None:
            continue
        for method, (handler, _) in route.route_handler_map.items():
            operation = item.get(method.lower())
            if operation is None or method in {"OPTIONS", "HEAD"}:
                continue
            roles, own = _roles(handler)
            unsafe = method not in {"GET", "HEAD", "OPTIONS"}
            idempotent = unsafe and handler.opt.get("idempotent", True)
            operation["x-roles"] = list(roles) or ["anonymous"]
            signed = {"bearer": [], "bankSignature": []}
            if roles == ("bank",):
                operation["security"] = [signed]
            elif roles:
                operation["security"] = [{"bearer": []}] + ([signed] if "bank" in roles else [])
            else:
                operation["security"] = []
            access = _describe_access(roles, own, idempotent, unsafe)
            operation["description"] = (operation.get("description", "").strip() + "\n\n" + access).strip()
            parameters = operation.setdefault("parameters", [])
            if idempotent:
                parameters.append(
                    _header(
                        "Idempotency-Key",
                        "Unique per intended change (1 to 255 printable ASCII characters); retry with the same key.",
                        {"type": "string", "pattern": IDEMPOTENCY_PATTERN, "maxLength": 255},
                        required=True,
                    )
                )
            if roles == ("bank",):  # where other roles may call too, the security scheme names the headers
                parameters.extend(_bank_headers(required=True))
            if not parameters:
                del operation["parameters"]
            statuses = {400, 503}
            if roles:
                statuses |= {401, 403} if set(roles) != {"regulator", "bank", "merchant", "consumer"} else {401}
            if operation.get("parameters") or "requestBody" in operation:
                statuses.add(422)
            if "requestBody" in operation:
                statuses.add(415)
            if idempotent:
                statuses.add(409)
            if handler.opt.get("auth_attempt") or roles:
                statuses.add(429)
            responses = operation["responses"]
            for status in statuses:
                existing = responses.get(str(status))
                if existing is None or "application/problem+json" not in existing.get("content", {}):
                    responses[str(status)] = {
                        "description": _PROBLEM_STATUSES[status],
                        "content": {"application/problem+json": {"schema": problem}},
                    }
    return document


def schema_dict(app: Any) -> dict[str, Any]:
    return contract(app)


def document(app: Any) -> str:
    """The OpenAPI document as committed: sorted keys, two-space indent, trailing newline."""
    return json.dumps(schema_dict(app), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@get("/openapi.json", include_in_schema=False, media_type="application/vnd.oai.openapi+json", sync_to_thread=False)
def openapi_json(request: Request) -> dict[str, Any]:
    return _cached(request.app)


@get("/docs", include_in_schema=False, media_type=MediaType.HTML, sync_to_thread=False)
def docs(request: Request) -> bytes:
    return _swagger.render(request, _cached(request.app))


def _cached(app: Any) -> dict[str, Any]:
    if "contract" not in app.state:
        app.state.contract = contract(app)
    return app.state.contract
