"""A page session is the signed-in party's own API token, sealed (AES-GCM, keyring-derived) in an HttpOnly, Secure,
SameSite=Strict cookie. Pages therefore authenticate exactly as the API does: the token is checked in PostgreSQL
on every request, and signing out (or the regulator) revokes it at once.

``PageSession`` runs before the unit of work: on page paths it turns the cookie into the ``Authorization``
header the unit of work reads, and nothing else; an API request's own header is never replaced.
"""

from typing import Any

from litestar import Response
from litestar.datastructures import Cookie

from escrow.auth import tokens
from escrow.errors import FieldInvalid

COOKIE = "escrow_session"
PAGE_PREFIXES = ("/app", "/counter", "/desk")
_CONTEXT = "page-session"


def is_page(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in PAGE_PREFIXES)


def _seal(keyring: Any, token: str) -> str:
    return keyring.encrypt(token, _CONTEXT).rstrip("=")  # without padding: a cookie value is never quoted


def _open(keyring: Any, sealed: str) -> str:
    sealed = sealed.strip('"')
    return keyring.decrypt(sealed + "=" * (-len(sealed.partition(":")[2]) % 4), _CONTEXT)


def session_cookie(keyring: Any, token: str, *, max_age: int) -> Cookie:
    return Cookie(
        key=COOKIE,
        value=_seal(keyring, token),
        max_age=max_age,
        path="/",
        httponly=True,
        secure=True,
        samesite="strict",
    )


def cleared_cookie() -> Cookie:
    return Cookie(key=COOKIE, value="", max_age=0, path="/", httponly=True, secure=True, samesite="strict")


def _cookie_value(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, item = part.strip().partition("=")
                if key == COOKIE and item:
                    return item
    return None


class PageSession:
    """ASGI: on page paths, the session cookie's token becomes the request's bearer credential."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and is_page(scope["path"]):
            headers = [(k, v) for k, v in scope["headers"] if k != b"authorization"]
            sealed = _cookie_value(headers)
            keyring = getattr(scope["app"].state, "keyring", None) if "app" in scope else None
            if sealed and keyring is not None:
                try:
                    token = _open(keyring, sealed)
                except Exception:  # a forged, stale or foreign cookie: not signed in
                    token = None
                if token:
                    headers.append((b"authorization", f"Bearer {token}".encode()))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


class NotThePartysToken(FieldInvalid):
    status = 401
    code = "invalid_token"
    title = "Not a token of the party these pages are for"


async def sign_in_with_token(
    session: Any, keyring: Any, token: str, role: str, *, name: str, home: str, max_age: int
) -> Response:
    """A party's page sign-in with its API token (the counter, the desk): the pasted token is checked and never kept;
    the page gets a session token of its own (``name``), revoked on signing out."""
    try:
        principal = await tokens.authenticate(session, f"Bearer {token.strip()}")
    except tokens.Unauthenticated:
        principal = None
    if principal is None or principal.role != role:
        raise NotThePartysToken("token", f"is not a {role}'s active API token", rule=f"{role}_token")
    _, secret = await tokens.issue_token(session, role, name, principal_id=principal.id)
    response = Response(content="", status_code=200, headers={"HX-Redirect": home})
    response.set_cookie(session_cookie(keyring, secret, max_age=max_age))
    return response


async def sign_out(session: Any, principal: Any, sign_in_page: str) -> Response:
    """Revoke the page session's own token and clear its cookie."""
    await tokens.revoke(session, principal, principal.token_id)
    response = Response(content="", status_code=200, headers={"HX-Redirect": sign_in_page})
    response.set_cookie(cleared_cookie())
    return response
