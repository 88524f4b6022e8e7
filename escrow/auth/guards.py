"""Route guards by role; object-level checks (404 for others' objects) live in the services."""

from collections.abc import Awaitable, Callable

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Scope

from escrow.auth.tokens import Forbidden, Principal, Unauthenticated

PRINCIPAL_KEY = "principal"


def principal_of(scope: Scope) -> Principal | None:
    """The authenticated caller of a request (set by the unit-of-work middleware), if any."""
    return scope["state"].get(PRINCIPAL_KEY)


def requires(*roles: str, own: tuple[str, ...] = ()) -> Callable[[ASGIConnection, BaseRouteHandler], Awaitable[None]]:
    """A guard admitting only principals of the given roles (401 without credentials, 403 for other roles).

    ``own`` names the roles that reach only their own objects there: the service answers 404 for the others'.
    It documents the route (the README's table of routes and roles is generated from it); the check itself is
    the service's.
    """

    # async: Litestar runs a synchronous guard in a worker thread, on every request
    async def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        principal = principal_of(connection.scope)
        if principal is None:
            raise Unauthenticated("This endpoint needs 'Authorization: Bearer <token>'.")
        if principal.role not in roles:
            raise Forbidden(f"Only {', '.join(roles)} may call this endpoint.")

    guard.__name__ = f"requires_{'_'.join(roles)}"
    guard.roles = roles  # type: ignore[attr-defined]  # read by the table of routes and roles
    guard.own = own  # type: ignore[attr-defined]
    return guard


def current_principal(request: Request) -> Principal:
    """Litestar dependency for guarded routes: the authenticated caller."""
    principal = principal_of(request.scope)
    if principal is None:
        raise Unauthenticated("This endpoint needs 'Authorization: Bearer <token>'.")
    return principal
