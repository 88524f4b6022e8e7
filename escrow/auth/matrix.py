"""The table of routes and roles, read from the routes' guards, so the README's copy can't drift from the code."""

from dataclasses import dataclass

from litestar import Litestar

ROLES = ("regulator", "bank", "merchant", "consumer")
ALLOWED, OWN, REFUSED = "yes", "own", "—"


@dataclass(frozen=True)
class RouteAccess:
    method: str
    path: str
    anonymous: bool  # no credentials needed
    access: dict[str, str]  # role -> yes / own / —


def route_access(app: Litestar) -> list[RouteAccess]:
    rows = []
    for route in app.routes:
        if not route.path.startswith("/v1/"):
            continue
        for handler in getattr(route, "route_handlers", []):
            roles: tuple[str, ...] = ()
            own: tuple[str, ...] = ()
            for guard in handler.guards or ():
                roles = getattr(guard, "roles", roles)
                own = getattr(guard, "own", own)
            anonymous = not roles
            access = {
                role: ALLOWED if anonymous or (role in roles and role not in own) else OWN if role in own else REFUSED
                for role in ROLES
            }
            path = route.path_format
            for method in sorted(handler.http_methods - {"HEAD", "OPTIONS"}):
                rows.append(RouteAccess(method, path, anonymous, access))
    return sorted(rows, key=lambda r: (r.path, r.method))


def markdown(app: Litestar) -> str:
    lines = [
        "| Method | Path | anonymous | " + " | ".join(ROLES) + " |",
        "|---|---|---|" + "---|" * len(ROLES),
    ]
    for row in route_access(app):
        cells = " | ".join(row.access[role] for role in ROLES)
        lines.append(f"| {row.method} | `{row.path}` | {'yes' if row.anonymous else '401'} | {cells} |")
    return "\n".join(lines)
