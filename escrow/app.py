"""create_app(): settings in, a Litestar application out; the database is opened on startup, closed on shutdown."""

import asyncio
from collections.abc import Sequence
from contextlib import asynccontextmanager, suppress

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.types import ControllerRouterHandler

from escrow.config import Settings, get_settings
from escrow.db import create_engine, create_sessionmaker, resolve_database_url
from escrow.errors import exception_handlers
from escrow.health.endpoints import healthz, readyz
from escrow.ledger.endpoints import verify_ledger
from escrow.ledger.integrity import seal_periodically
from escrow.logs import RequestLogMiddleware, configure_logging
from escrow.migrate import head_revision
from escrow.openapi import docs, openapi_config, openapi_json
from escrow.unit_of_work import UnitOfWorkMiddleware, provide_db_session

ROUTES: list[ControllerRouterHandler] = [healthz, readyz, openapi_json, docs, verify_ledger]


def create_app(settings: Settings | None = None, extra_routes: Sequence[ControllerRouterHandler] = ()) -> Litestar:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def database(app: Litestar):  # type: ignore[no-untyped-def]
        url = resolve_database_url(settings)
        engine = create_engine(url, settings)
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine)
        sealer = asyncio.create_task(seal_periodically(app.state.sessionmaker, settings.seal_interval_seconds))
        try:
            yield
        finally:
            sealer.cancel()
            with suppress(asyncio.CancelledError):
                await sealer
            await engine.dispose()

    app = Litestar(
        route_handlers=[*ROUTES, *extra_routes],
        dependencies={"db_session": Provide(provide_db_session)},
        middleware=[UnitOfWorkMiddleware],
        exception_handlers=exception_handlers,
        lifespan=[database],
        openapi_config=openapi_config(),
        request_max_body_size=settings.max_body_bytes,
        state=State({"settings": settings, "head_revision": head_revision()}),
        debug=False,
    )
    app.asgi_handler = RequestLogMiddleware(app.asgi_handler)
    return app
