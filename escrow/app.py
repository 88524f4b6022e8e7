"""create_app(): settings in, a Litestar application out; the database is opened on startup, closed on shutdown."""

import asyncio
import re
from collections.abc import Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

from litestar import Litestar, Request
from litestar.datastructures import CacheControlHeader, State
from litestar.di import Provide
from litestar.routes import HTTPRoute
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

from escrow import pages
from escrow.audit import endpoints as audit_endpoints
from escrow.auth import endpoints as auth_endpoints
from escrow.auth.guards import current_principal
from escrow.auth.limiter import FailureLimiter
from escrow.banks import endpoints as bank_endpoints
from escrow.cards import endpoints as card_endpoints
from escrow.closures import endpoints as closure_endpoints
from escrow.complaints import endpoints as complaint_endpoints
from escrow.config import Settings, get_settings, load_secret_key
from escrow.consumers import endpoints as consumer_endpoints
from escrow.consumptions import endpoints as consumption_endpoints
from escrow.credit import endpoints as credit_endpoints
from escrow.db import create_engine, create_sessionmaker, resolve_database_url
from escrow.disclosure import endpoints as disclosure_endpoints
from escrow.errors import exception_handlers
from escrow.escrow_accounts import endpoints as escrow_endpoints
from escrow.fund import endpoints as fund_endpoints
from escrow.health.endpoints import healthz, readyz
from escrow.jobs import run_periodically, seal_periodically
from escrow.kit.body import EdgeRequest, StrictBodyPlugin
from escrow.kit.crypto import Keyring
from escrow.kit.params import TYPE_DECODERS, ParameterSchemas
from escrow.ledger.endpoints import verify_ledger
from escrow.logs import RequestLogMiddleware, configure_logging
from escrow.merchants import endpoints as merchant_endpoints
from escrow.migrate import head_revision
from escrow.openapi import STATIC, docs, openapi_config, openapi_json
from escrow.pages.session import PageSession
from escrow.payouts import endpoints as payout_endpoints
from escrow.plans import endpoints as plan_endpoints
from escrow.reconciliation import endpoints as reconciliation_endpoints
from escrow.refunds import endpoints as refund_endpoints
from escrow.risk import endpoints as warning_endpoints
from escrow.sms import SmsDispatcher, sender_for
from escrow.unit_of_work import UnitOfWorkMiddleware, provide_db_session

ROUTES: list[ControllerRouterHandler] = [
    healthz,
    readyz,
    openapi_json,
    docs,
    create_static_files_router(
        path="/static",
        directories=[STATIC],
        name="static",
        include_in_schema=False,
        cache_control=CacheControlHeader(max_age=86400, public=True),
    ),
    auth_endpoints.me,
    auth_endpoints.list_tokens,
    auth_endpoints.create_regulator_token,
    auth_endpoints.rotate_token,
    auth_endpoints.revoke_token,
    auth_endpoints.issue_merchant_token,
    auth_endpoints.issue_bank_token,
    bank_endpoints.create_bank,
    bank_endpoints.list_banks,
    bank_endpoints.get_bank,
    merchant_endpoints.create_merchant,
    merchant_endpoints.list_merchants,
    merchant_endpoints.get_merchant,
    merchant_endpoints.change_merchant_status,
    merchant_endpoints.change_custody_model,
    merchant_endpoints.change_region,
    warning_endpoints.run_warnings,
    warning_endpoints.list_warnings,
    warning_endpoints.warnings_summary,
    warning_endpoints.get_warning,
    warning_endpoints.acknowledge_warning,
    warning_endpoints.resolve_warning,
    warning_endpoints.escalate_warning,
    escrow_endpoints.apply_for_escrow_account,
    escrow_endpoints.list_escrow_accounts,
    escrow_endpoints.get_escrow_account,
    escrow_endpoints.activate_escrow_account,
    escrow_endpoints.reject_escrow_account,
    escrow_endpoints.freeze_escrow_account,
    escrow_endpoints.unfreeze_escrow_account,
    consumer_endpoints.register_consumer,
    consumer_endpoints.get_consumer,
    consumer_endpoints.send_sign_in_code,
    consumer_endpoints.sign_in_consumer,
    plan_endpoints.create_plan,
    plan_endpoints.list_plans,
    plan_endpoints.get_plan,
    plan_endpoints.retire_plan,
    card_endpoints.sell_card,
    card_endpoints.report_deposit,
    card_endpoints.list_cards,
    card_endpoints.my_cards,
    card_endpoints.get_card,
    card_endpoints.presence_code,
    card_endpoints.card_history,
    card_endpoints.escrow_account_totals,
    card_endpoints.list_unapplied_deposits,
    consumption_endpoints.record_consumption,
    consumption_endpoints.record_consumptions,
    consumption_endpoints.list_consumptions,
    consumption_endpoints.get_consumption,
    consumption_endpoints.confirm_consumption,
    consumption_endpoints.dispute_consumption,
    consumption_endpoints.resolve_consumption,
    refund_endpoints.refund_quote,
    refund_endpoints.request_refund,
    refund_endpoints.list_refunds,
    refund_endpoints.get_refund,
    refund_endpoints.approve_refund,
    refund_endpoints.reject_refund,
    payout_endpoints.run_payouts,
    payout_endpoints.list_instructions,
    payout_endpoints.get_instruction,
    payout_endpoints.instruction_sent,
    payout_endpoints.instruction_executed,
    payout_endpoints.instruction_failed,
    closure_endpoints.open_closure,
    closure_endpoints.list_closures,
    closure_endpoints.get_closure,
    closure_endpoints.compute_plan,
    closure_endpoints.list_items,
    closure_endpoints.plan_csv,
    closure_endpoints.start_settlement,
    closure_endpoints.propose_takeover,
    closure_endpoints.answer_takeover,
    closure_endpoints.confirm,
    closure_endpoints.my_statements,
    complaint_endpoints.file_complaint,
    complaint_endpoints.list_complaints,
    complaint_endpoints.get_complaint,
    complaint_endpoints.answer_complaint,
    complaint_endpoints.mediate_complaint,
    credit_endpoints.run_credit,
    credit_endpoints.white_list,
    credit_endpoints.get_credit,
    credit_endpoints.override_credit,
    credit_endpoints.record_penalty,
    credit_endpoints.list_penalties,
    disclosure_endpoints.search_merchants,
    disclosure_endpoints.public_merchant,
    fund_endpoints.set_fund_bank_account,
    fund_endpoints.fund_overview,
    fund_endpoints.contribute,
    fund_endpoints.list_contributions,
    fund_endpoints.list_claims,
    fund_endpoints.recover,
    reconciliation_endpoints.get_statement,
    reconciliation_endpoints.statement_lines,
    reconciliation_endpoints.list_breaks,
    reconciliation_endpoints.breaks_csv,
    reconciliation_endpoints.get_break,
    reconciliation_endpoints.resolve_break,
    reconciliation_endpoints.account_reconciliation,
    reconciliation_endpoints.account_reconciliation_csv,
    reconciliation_endpoints.reconciliation_overview,
    reconciliation_endpoints.run_matching,
    audit_endpoints.list_audit,
    verify_ledger,
]


def create_app(settings: Settings | None = None, extra_routes: Sequence[ControllerRouterHandler] = ()) -> Litestar:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def database(app: Litestar):  # type: ignore[no-untyped-def]
        url = resolve_database_url(settings)
        engine = create_engine(url, settings)
        app.state.keyring = Keyring(load_secret_key(settings))
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine)
        sender = sender_for(settings, app.state.sessionmaker, app.state.keyring)
        app.state.sms_dispatcher = SmsDispatcher(app.state.sessionmaker, sender, settings, app.state.keyring)
        background = [
            asyncio.create_task(seal_periodically(app.state.sessionmaker, settings.seal_interval_seconds)),
            asyncio.create_task(run_periodically(app.state.sessionmaker, settings, sender, app.state.keyring)),
            asyncio.create_task(app.state.sms_dispatcher.run()),
        ]
        try:
            yield
        finally:
            for task in background:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            await engine.dispose()

    app = Litestar(
        # statement intake (POST /v1/statements, /v1/statements/camt053) has a body limit of its own
        route_handlers=[*ROUTES, reconciliation_endpoints.statements_router(settings), pages.router(), *extra_routes],
        template_config=pages.template_config(settings),
        csrf_config=pages.csrf_config(load_secret_key(settings)),
        dependencies={
            "db_session": Provide(provide_db_session, sync_to_thread=False),
            "principal": Provide(current_principal, sync_to_thread=False),
            "keyring": Provide(provide_keyring, sync_to_thread=False),
            "settings": Provide(provide_settings, sync_to_thread=False),
        },
        middleware=[UnitOfWorkMiddleware],
        exception_handlers=exception_handlers,
        # the edge: bodies read strictly (escrow.kit.body), parameters typed and bounded (escrow.kit.params)
        request_class=EdgeRequest,
        plugins=[StrictBodyPlugin(), ParameterSchemas()],
        type_decoders=TYPE_DECODERS,
        lifespan=[database],
        openapi_config=openapi_config(),
        request_max_body_size=settings.max_body_bytes,
        state=State(
            {
                "settings": settings,
                "head_revision": head_revision(),
                "limiter": FailureLimiter(
                    settings.auth_failure_limit, settings.auth_failure_window_seconds, settings.auth_block_seconds
                ),
            }
        ),
        debug=False,
        logging_config=None,  # Litestar would replace the root logger's handler: escrow.logs renders every line
    )
    app.asgi_handler = RequestLogMiddleware(_OptionsAllow(PageSession(app.asgi_handler), app))
    return app


class _OptionsAllow:
    """OPTIONS answers list every method of the path. (Litestar builds each path's OPTIONS handler with the first
    handler registered there, so ``GET /v1/banks`` and ``POST /v1/banks`` answered ``Allow: OPTIONS, POST``.)"""

    def __init__(self, asgi: Any, app: Litestar) -> None:
        self.asgi = asgi
        self.allowed = {
            route.path_format: ", ".join(sorted(route.methods)).encode()
            for route in app.routes
            if isinstance(route, HTTPRoute)
        }

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "OPTIONS":
            await self.asgi(scope, receive, send)
            return

        async def send_allow(message: Any) -> None:
            allow = self.allowed.get(_path_format(scope.get("path_template", "")))
            if message["type"] == "http.response.start" and allow is not None:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                message = {**message, "headers": [*headers, (b"allow", allow)]}
            await send(message)

        await self.asgi(scope, receive, send_allow)


def _path_format(template: str) -> str:
    return re.sub(r"\{(\w+):[^}]+\}", r"{\1}", template)


def provide_keyring(request: Request) -> Keyring:
    return request.app.state.keyring


def provide_settings(request: Request) -> Settings:
    return request.app.state.settings
