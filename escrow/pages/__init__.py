"""Pages for people (consumers at /app, merchants at /counter, the regulator at /desk): server-rendered Jinja with
htmx, every asset served by the package, sessions in sealed HttpOnly cookies, CSRF on every form, a
Content-Security-Policy of 'self' only.

Pages call the API's own handlers, so they show exactly what the API answers and obey the same rules.
"""

import hashlib
import hmac
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from litestar import Router
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import ResponseHeader
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig
from pydantic import ValidationError

from escrow.auth.tokens import Unauthenticated
from escrow.config import Settings
from escrow.errors import EscrowError
from escrow.pages import consumer, desk, merchant, public
from escrow.pages.session import PAGE_PREFIXES

TEMPLATES = Path(__file__).parent / "templates"
# Pages load nothing but their own scripts, styles and images; no inline script, no eval, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)


def yuan(fen: int) -> str:
    """Integer fen as yuan for people: 123456 → ¥1,234.56 (exact: integer division, no float)."""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(int(fen)), 100)
    return f"{sign}¥{whole:,}.{cents:02d}"


def _engine_callback(business_timezone: str):  # -> Callable[[JinjaTemplateEngine], None]
    zone = ZoneInfo(business_timezone)

    def local_time(value: datetime | None) -> str:
        return value.astimezone(zone).strftime("%Y-%m-%d %H:%M") if value else ""

    def register(engine: JinjaTemplateEngine) -> None:
        engine.engine.filters["yuan"] = yuan
        engine.engine.filters["local_time"] = local_time

    return register


def template_config(settings: Settings) -> TemplateConfig:
    return TemplateConfig(
        directory=TEMPLATES, engine=JinjaTemplateEngine, engine_callback=_engine_callback(settings.business_timezone)
    )


def csrf_config(secret: bytes) -> CSRFConfig:
    """CSRF checks on the pages' state-changing requests. The API is left out: it authenticates each call itself
    (a bearer token, a bank's signature) and has no cookie a forged request could ride on."""
    not_a_page = "^/(?!" + "|".join(p.strip("/") + "(/|$)" for p in PAGE_PREFIXES) + ")."
    return CSRFConfig(
        secret=hmac.new(secret, b"escrow/csrf/v1", hashlib.sha256).hexdigest(),
        cookie_name="escrow_csrf",
        cookie_secure=True,
        cookie_httponly=True,
        cookie_samesite="strict",
        exclude=[not_a_page],
    )


def router() -> Router:
    return Router(
        path="/",
        route_handlers=[*consumer.ROUTES, *merchant.ROUTES, *desk.ROUTES, *public.ROUTES],
        response_headers=[
            ResponseHeader(name="Content-Security-Policy", value=CONTENT_SECURITY_POLICY),
            ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
            ResponseHeader(name="Cache-Control", value="no-store"),
            ResponseHeader(name="Referrer-Policy", value="same-origin"),
        ],
        exception_handlers={
            Unauthenticated: consumer.unauthenticated,
            EscrowError: consumer.refused,
            ValidationError: consumer.invalid,
        },
        include_in_schema=False,
    )
