"""The `escrow` command: serve, migrate, db-url, openapi (and, as the domain grows, its operator tools)."""

import argparse
import asyncio
import os
import sys
from pathlib import Path

from escrow.config import get_settings

DEFAULT_OPENAPI = Path("contracts/openapi.json")


def openapi_document() -> str:
    from escrow.app import create_app
    from escrow.openapi import document

    return document(create_app())


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from escrow import migrate
    from escrow.db import resolve_database_url

    settings = get_settings()
    url = resolve_database_url(settings)  # the embedded server, if used, stops when this process exits
    migrate.upgrade(url)
    # Workers (and the app factory in this process) read the resolved URL instead of starting a server again.
    os.environ["ESCROW_DATABASE_URL"] = url
    get_settings.cache_clear()
    uvicorn.run(
        "escrow.app:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers or settings.workers,
        access_log=False,  # our own access line carries the request id
        log_level=settings.log_level.lower(),
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from sqlalchemy.ext.asyncio import create_async_engine

    from escrow import migrate
    from escrow.db import asyncpg_url, resolve_database_url

    url = resolve_database_url(get_settings())
    if args.action == "upgrade":
        migrate.upgrade(url, args.revision or "head")
    elif args.action == "downgrade":
        if not args.revision:
            print("downgrade needs a revision (for example: base, or a revision id)", file=sys.stderr)
            return 2
        migrate.downgrade(url, args.revision)

    async def show() -> None:
        engine = create_async_engine(asyncpg_url(url))
        async with engine.connect() as connection:
            current = await migrate.current_revision(connection)
        await engine.dispose()
        print(f"current: {current or 'base'}  head: {migrate.head_revision()}")

    asyncio.run(show())
    return 0


def cmd_db_url(_: argparse.Namespace) -> int:
    from escrow.db import resolve_database_url

    # The embedded server is left running, so `psql "$(escrow db-url)"` can connect after this exits.
    print(resolve_database_url(get_settings(), keep_running=True))
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    document = openapi_document()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != document:
            print(f"{args.output} differs from the app's OpenAPI document; run `escrow openapi`", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(document)
    print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="escrow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="apply pending migrations, then serve the API")
    serve.add_argument("--host", help="listen address (default: ESCROW_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: ESCROW_PORT or 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default: ESCROW_WORKERS or 1)")
    serve.set_defaults(func=cmd_serve)

    mig = commands.add_parser("migrate", help="upgrade, downgrade or show the database schema revision")
    mig.add_argument("action", choices=["upgrade", "downgrade", "current"])
    mig.add_argument("revision", nargs="?", help="target revision (upgrade: default head; downgrade: e.g. base)")
    mig.set_defaults(func=cmd_migrate)

    db_url = commands.add_parser("db-url", help='print the database URL (psql "$(escrow db-url)")')
    db_url.set_defaults(func=cmd_db_url)

    openapi = commands.add_parser("openapi", help="write the app's OpenAPI document to contracts/openapi.json")
    openapi.add_argument("--output", type=Path, default=DEFAULT_OPENAPI, help="where to write it")
    openapi.add_argument("--check", action="store_true", help="only check that the file is up to date")
    openapi.set_defaults(func=cmd_openapi)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))
