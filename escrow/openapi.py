"""The published API contract: served at /openapi.json, browsable at /docs, committed as contracts/openapi.json."""

import json
from typing import Any

from litestar import MediaType, Request, get
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.serialization import encode_json

import escrow

_scalar = ScalarRenderPlugin(path="/docs")


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Prepaid Escrow Ledger",
        version=escrow.__version__,
        description=(
            "Bank custody of consumers' prepaid funds: sales into escrow, release per service rendered, "
            "refunds, closure settlement with first compensation, and bank reconciliation. "
            "Amounts are integer fen; errors are application/problem+json (RFC 9457)."
        ),
        # Litestar's own controller lives under /schema; its catch-all must not swallow unknown paths at /.
        path="/schema",
        render_plugins=[_scalar],
    )


def schema_dict(app: Any) -> dict[str, Any]:
    return json.loads(encode_json(app.openapi_schema.to_schema()))


def document(app: Any) -> str:
    """The OpenAPI document as committed: sorted keys, two-space indent, trailing newline."""
    return json.dumps(schema_dict(app), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@get("/openapi.json", include_in_schema=False, media_type="application/vnd.oai.openapi+json", sync_to_thread=False)
def openapi_json(request: Request) -> dict[str, Any]:
    return schema_dict(request.app)


@get("/docs", include_in_schema=False, media_type=MediaType.HTML, sync_to_thread=False)
def docs(request: Request) -> bytes:
    return _scalar.render(request, schema_dict(request.app))
