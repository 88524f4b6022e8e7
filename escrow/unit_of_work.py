"""One request, one transaction: the handler's session commits only after it succeeded, before any byte is sent.

Services take the request's ``AsyncSession`` and never commit. This middleware is the single transaction
boundary: for state-changing methods it claims the ``Idempotency-Key``, runs the handler with the response
held back, commits the change together with the stored response when the status is below 400 (rolls back
otherwise), and only then sends the response. A failed commit becomes an error response, never a 201 for
money that was not committed.
"""

import json
from collections.abc import Callable
from typing import Any

import structlog
from litestar import Request
from litestar.datastructures import Headers
from litestar.di import NamedDependency
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy.ext.asyncio import AsyncSession

from escrow import audit, db, idempotency
from escrow.audit import AUDIT_DETAIL
from escrow.auth.guards import PRINCIPAL_KEY, principal_of
from escrow.auth.requests import authenticate_request
from escrow.auth.tokens import Unauthenticated
from escrow.errors import KEEP_ON_REFUSAL, EscrowError

log = structlog.get_logger("escrow.unit_of_work")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_KEY = "db_session"
AFTER_COMMIT = "after_commit"


def after_commit(scope: Scope, callback: Callable[[], None]) -> None:
    """Call ``callback`` (quick, synchronous: e.g. wake a background task) once the request's transaction has
    committed; never when it rolls back. Best effort: a crash right after the commit skips it."""
    scope["state"].setdefault(AFTER_COMMIT, []).append(callback)


def _run_after_commit(scope: Scope) -> None:
    for callback in scope["state"].pop(AFTER_COMMIT, ()):
        try:
            callback()
        except Exception:  # the change is committed; a failed hook must not turn it into an error
            log.exception("after_commit_failed")


def caller_of(scope: Scope) -> str:
    """Who an Idempotency-Key belongs to: the authenticated principal (anonymous callers share one scope)."""
    principal = principal_of(scope)
    return principal.id if principal else "anonymous"


def provide_db_session(request: Request) -> AsyncSession:
    """Litestar dependency: the session of the request's unit of work (synchronous: with only synchronous
    dependencies Litestar resolves them inline, without a task group per request)."""
    return request.scope["state"][SESSION_KEY]


# Handlers declare ``db_session: DbSession`` to receive the request's session.
DbSession = NamedDependency[AsyncSession]


class _HeldResponse:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def send(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return next((m["status"] for m in self.messages if m["type"] == "http.response.start"), 500)

    def stored(self) -> idempotency.StoredResponse:
        start = next(m for m in self.messages if m["type"] == "http.response.start")
        content_type = dict(start.get("headers", [])).get(b"content-type", b"application/json").decode()
        body = b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")
        return idempotency.StoredResponse(self.status, content_type, body)

    async def release(self, send: Send) -> None:
        for message in self.messages:
            await send(message)


async def _send_replay(send: Send, stored: idempotency.StoredResponse, *, replayed: bool = True) -> None:
    headers = [
        (b"content-type", stored.content_type.encode()),
        (b"content-length", str(len(stored.body)).encode()),
    ]
    if replayed:
        headers.append((b"idempotency-replayed", b"true"))
    await send({"type": "http.response.start", "status": stored.status, "headers": headers})
    await send({"type": "http.response.body", "body": stored.body, "more_body": False})


async def _replay_first(session: AsyncSession, scope: Scope, send: Send, claim: idempotency.Claim) -> int | None:
    """After this request's rollback: answer with the response a first request with the same key stored
    meanwhile, if there is one (None: there is none)."""
    await session.rollback()
    first = await idempotency.stored_meanwhile(session, caller_of(scope), claim)
    if first is None:
        return None
    await audit.record_after_rollback(session, scope, first.status, body=first.body, outcome="replayed")
    await _send_replay(send, first)
    return first.status


class UnitOfWorkMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: Any = scope["app"].state
        source = (scope.get("client") or ("unknown", 0))[0]
        unsafe = scope["method"] not in SAFE_METHODS
        guessable = scope["route_handler"].opt.get("auth_attempt", False)  # e.g. a sign-in code in the body
        if guessable:
            state.limiter.check(source)
        async with state.sessionmaker() as session:
            scope["state"][SESSION_KEY] = session
            try:
                key: str | None = None
                refusal: EscrowError | None = None  # a bad key: refused once the caller is known
                if unsafe and scope["route_handler"].opt.get("idempotent", True):
                    try:
                        key = idempotency.validate_key(Headers.from_scope(scope).get(idempotency.HEADER))
                    except EscrowError as exc:
                        refusal = exc
                try:
                    principal, claim_row = await authenticate_request(session, scope, receive, state, key)
                except Unauthenticated as exc:
                    if unsafe:
                        await audit.record_after_rollback(session, scope, exc.status, detail={"code": exc.code})
                    else:
                        await session.rollback()
                    _failed_authentication(state.limiter, source)
                    raise
                scope["state"][PRINCIPAL_KEY] = principal
                claim: idempotency.Claim | None = None
                stored: idempotency.StoredResponse | None = None
                try:
                    if refusal is not None:
                        raise refusal
                    if key is not None:
                        # Reading the body here caches it on the connection, so the handler reads the same bytes;
                        # Litestar enforces the body size limit while reading (413).
                        body = await Request(scope, receive).body()
                        claim = idempotency.Claim(
                            key,
                            idempotency.request_hash(
                                scope["method"], scope["path"], scope.get("query_string", b""), body
                            ),
                        )
                        stored = idempotency.claimed(claim_row, claim)
                except EscrowError as exc:  # a bad key (400), or in flight (409), or a different request (422)
                    await audit.record_after_rollback(session, scope, exc.status, detail={"code": exc.code})
                    raise
                if stored is not None:
                    await audit.record_after_rollback(
                        session, scope, stored.status, body=stored.body, outcome="replayed"
                    )
                    await _send_replay(send, stored)
                    status = stored.status
                elif unsafe:
                    status = await self._state_changing(scope, receive, send, session, state.settings, claim)
                else:
                    status = await self._reading(scope, receive, send)
                if status == 401 and guessable:
                    state.limiter.record(source)  # a wrong sign-in code
            finally:
                scope["state"].pop(SESSION_KEY, None)

    async def _reading(self, scope: Scope, receive: Receive, send: Send) -> int:
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        return status

    async def _state_changing(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        session: AsyncSession,
        settings: Any,
        claim: idempotency.Claim | None,
    ) -> int:
        held = _HeldResponse()
        await self.app(scope, receive, held.send)
        response = held.stored()
        if held.status < 400:
            record = audit.values(scope, held.status, body=response.body, detail=scope["state"].get(AUDIT_DETAIL))
            if claim is None:
                await db.fetch(session, _AUDIT, *record)
            else:
                # A response that carries a secret (a token, a signing secret, a code) is shown once: a replay
                # gets a refusal instead, so no secret is ever kept in clear in the idempotency table.
                kept = idempotency.SECRET_SHOWN_ONCE if scope["route_handler"].opt.get("secret_response") else response
                values = idempotency.store_values(caller_of(scope), claim, kept, settings.idempotency_ttl_seconds)
                if not await db.fetchval(session, _STORE_AND_AUDIT, *values, *record):
                    # The first request with this key committed after this one claimed it (after the claim's
                    # read, before its lock): this one must not count; its answer is the first one's.
                    replayed = await _replay_first(session, scope, send, claim)
                    if replayed is not None:
                        return replayed
                    exc = idempotency.IdempotencyInFlight(
                        "A request with this Idempotency-Key finished meanwhile; retry to get its response."
                    )
                    await audit.record_after_rollback(session, scope, exc.status, detail={"code": exc.code})
                    await _send_replay(send, idempotency.refusal(exc), replayed=False)
                    return exc.status
            await session.commit()
            _run_after_commit(scope)
        else:
            # A refusal of a request whose key another one (a retry) committed meanwhile gets that one's answer.
            replayed = await _replay_first(session, scope, send, claim) if claim else None
            if replayed is not None:
                return replayed
            await audit.record_after_rollback(
                session,
                scope,
                held.status,
                detail=_problem_code(response.body),
                keep=scope["state"].pop(KEEP_ON_REFUSAL, ()),
            )
        await held.release(send)
        return held.status


# A state-changing request's success is written in its own transaction, in one round trip: the audit record
# (audit.values), after the stored response when it has an Idempotency-Key (idempotency.store_values, $1-$7).
_AUDIT = audit.insert_sql()
_STORE_AND_AUDIT = " ".join(
    (
        f"WITH stored AS ({idempotency.STORE_SQL})",
        audit.insert_sql(first_param=8),
        "RETURNING (SELECT count(*) FROM stored)",
    )
)


def _failed_authentication(limiter: Any, source: str) -> None:
    """Count a failed authentication; past the limit the address gets 429 instead of 401 for a while.

    Only failures count (a request without credentials is refused by its route's guard, and is not one), and
    callers that authenticate are never blocked: the limit slows guessing, it does not lock out the innocent
    behind the same address.
    """
    limiter.check(source)  # already over the limit: 429 rather than another 401
    limiter.record(source)


def _problem_code(body: bytes) -> dict[str, Any] | None:
    try:
        problem = json.loads(body)
    except ValueError:
        return None
    return {"code": problem.get("code")} if isinstance(problem, dict) else None
