"""The `escrow` command: serve, migrate, db-url, openapi, verify, admin, sms, closure, reconcile and bench."""

import argparse
import asyncio
import os
import sys
from pathlib import Path

from escrow.config import get_settings

DEFAULT_OPENAPI = Path("contracts/openapi.json")
STATEMENT_SCHEMA = "bank-statement.schema.json"  # written beside the OpenAPI document


def openapi_document() -> str:
    from escrow.app import create_app
    from escrow.openapi import document

    return document(create_app())


def _stop_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(0)  # a service manager's stop request: unwind (and run the finally blocks), exit 0 as on Ctrl-C


def cmd_serve(args: argparse.Namespace) -> int:
    import signal

    import uvicorn

    from escrow import migrate
    from escrow.config import load_secret_key
    from escrow.db import embedded_server, ensure_embedded_database, release_embedded_server

    settings = get_settings()
    load_secret_key(settings)  # created here, once, before workers start and could race to create it
    # With one worker, uvicorn re-raises SIGTERM once it has shut down; by default that kills the process before any
    # cleanup. As an exception it unwinds instead, so the embedded server is stopped below whatever ends the serving.
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    server = None
    try:
        if settings.database_url:
            url = settings.database_url
        else:
            server = embedded_server(settings.data_dir)
            url = ensure_embedded_database(settings.data_dir)
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
            log_config=None,  # uvicorn logs through ours (escrow.logs.configure_logging): JSON and redacted
            log_level=settings.log_level.lower(),
            # Longer than common clients' idle timeout (httpx: 5 s), so a client doesn't send a request on a
            # connection the server is just closing; such a request fails and must be retried (same Idempotency-Key).
            timeout_keep_alive=30,
            # A client that never finishes its request must not hold the shutdown forever.
            timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
        )
    finally:
        if server is not None:
            for stop_signal in (signal.SIGTERM, signal.SIGINT):  # a second stop request must not cut this short
                signal.signal(stop_signal, signal.SIG_IGN)
            release_embedded_server(server)
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
    from escrow.reconciliation.schemas import statement_schema_document

    contracts = [
        (args.output, openapi_document(), "the app's OpenAPI document"),
        (args.output.parent / STATEMENT_SCHEMA, statement_schema_document(), "the JSON statement format"),
    ]
    if args.check:
        stale = [path for path, document, _ in contracts if (path.read_text() if path.exists() else "") != document]
        for path, _, what in contracts:
            if path in stale:
                print(f"{path} differs from {what}; run `escrow openapi`", file=sys.stderr)
            else:
                print(f"{path} is up to date")
        return 1 if stale else 0
    for path, document, _ in contracts:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(document)
        print(f"wrote {path}")
    return 0


def _run_with_engine(work, *, pool_size: int | None = None) -> object:
    """Run ``work(engine)`` against the configured (or embedded) database, migrated to head first."""
    from escrow import migrate
    from escrow.db import create_engine, resolve_database_url

    settings = get_settings()
    url = resolve_database_url(settings)
    migrate.upgrade(url)
    if pool_size:
        settings = settings.model_copy(update={"db_pool_size": pool_size, "db_max_overflow": 0})

    async def main() -> object:
        engine = create_engine(url, settings)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def cmd_routes(_: argparse.Namespace) -> int:
    from escrow.app import create_app
    from escrow.auth.matrix import markdown

    print(markdown(create_app()))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from escrow.db import create_sessionmaker
    from escrow.ledger.integrity import seal, verify_database

    async def work(engine):
        # Sealing checks the new rows first and seals only the books whose rows verify (integrity.seal): an edit made
        # before an entry's first seal is reported and left out of the chain, never sealed into it.
        held = {}
        if not args.no_seal:
            async with create_sessionmaker(engine)() as session:
                sealed = await seal(session)
                await session.commit()
            print(f"sealed {sealed.entries} new entries in {sealed.seals} seals (horizon {sealed.horizon})")
            held = sealed.held
            for book, rows in held.items():
                print(f"FAIL not sealed: {book}: {rows[:10]}")
        report = await verify_database(engine)
        report.ok = report.ok and not held
        return report

    report = _run_with_engine(work)
    for check in report.checks:
        mark = "ok  " if check.ok else "FAIL"
        where = "" if check.ok else f"  first failure: {check.first_failure}"
        print(f"{mark} {check.name} ({check.checked} checked){where}")
    print(f"sealed entries: {report.sealed_entries}, not yet sealed: {report.unsealed_entries}")
    print("ledger verified" if report.ok else "LEDGER VERIFICATION FAILED")
    return 0 if report.ok else 1


def cmd_admin_create_token(args: argparse.Namespace) -> int:
    from escrow.auth.tokens import issue_token
    from escrow.db import create_sessionmaker

    async def work(engine):
        async with create_sessionmaker(engine)() as session:
            token, secret = await issue_token(session, args.role, args.name)
            await session.commit()
            return token, secret

    token, secret = _run_with_engine(work)
    print(f"token id:  {token.id}\nprincipal: {token.principal_id} ({token.role})", file=sys.stderr)
    print("the secret below is shown once; it is stored only as a hash", file=sys.stderr)
    print(secret)
    return 0


async def sms_outbox(engine, settings, phone: str | None, limit: int, *, out=None) -> int:
    """Print the newest messages of the development SMS sink (``DevSmsSink``), newest first."""
    from sqlalchemy import select

    from escrow.config import load_secret_key
    from escrow.db import create_sessionmaker
    from escrow.kit.crypto import Keyring, normalize_phone
    from escrow.models import SmsSink

    out = out or sys.stdout
    query = select(SmsSink).order_by(SmsSink.id.desc()).limit(limit)
    if phone is not None:
        query = query.where(
            SmsSink.phone_hash == Keyring(load_secret_key(settings)).lookup_hash(normalize_phone(phone))
        )
    async with create_sessionmaker(engine)() as session:
        rows = list(await session.scalars(query))
    for row in rows:
        print(f"{row.created_at.isoformat(timespec='seconds')}  {row.phone_masked}  {row.text}", file=out)
    if not rows:
        print("no messages", file=sys.stderr)
    return 0


def cmd_sms_outbox(args: argparse.Namespace) -> int:
    """The development sink's messages (sign-in codes included): for development only, like the sink itself."""
    from escrow.kit.crypto import normalize_phone

    if args.phone is not None:
        try:
            normalize_phone(args.phone)
        except ValueError as exc:
            print(f"escrow sms outbox: --phone {exc}", file=sys.stderr)
            return 2
    return _run_with_engine(lambda engine: sms_outbox(engine, get_settings(), args.phone, args.limit))  # type: ignore[return-value]


def cmd_run_jobs(args: argparse.Namespace) -> int:
    """Run the background jobs (as the service does every ESCROW_JOBS_INTERVAL_SECONDS) once, or forever."""
    from escrow.db import create_sessionmaker
    from escrow.jobs import run_jobs_once

    async def work(engine):
        sessionmaker = create_sessionmaker(engine)
        while True:
            report = await run_jobs_once(sessionmaker, get_settings())
            print(" ".join(f"{name}={value}" for name, value in report.items()), flush=True)
            if args.once:
                return report
            await asyncio.sleep(get_settings().jobs_interval_seconds or 60)

    _run_with_engine(work)
    return 0


def cmd_bench_ledger(args: argparse.Namespace) -> int:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from escrow.ledger import bench

    async def work(engine: AsyncEngine):
        return await bench.run(engine, args.workers, args.accounts, args.seconds, args.batch)

    results = _run_with_bench_database(work, pool_size=args.workers + 2)
    print(f"ledger benchmark on {bench.machine()}, {args.seconds:g} s per scenario")
    print(bench.table(results))
    return 0


def cmd_bench_flow(args: argparse.Namespace) -> int:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from escrow.cards import bench
    from escrow.consumptions.schemas import MAX_BATCH
    from escrow.ledger.bench import machine

    sizes = {
        "consumers": args.consumers,
        "sessions": args.sessions,
        "merchants": args.merchants,
        "concurrency": args.concurrency,
        "class_size": args.class_size,
    }
    if not 1 <= args.class_size <= MAX_BATCH:
        print(f"--class-size must be between 1 and {MAX_BATCH}", file=sys.stderr)
        return 2
    if args.url:
        if not args.regulator_token:
            print("--url needs --regulator-token (see `escrow admin create-token`)", file=sys.stderr)
            return 2
        where = f"the server at {args.url}"
        # consumers' tokens are issued in the server's database (ESCROW_DATABASE_URL): made-up phones get no SMS
        result = _run_with_engine(
            lambda engine: bench.run(
                args.url, args.regulator_token, consumer_token=bench.consumer_tokens(engine), **sizes
            )
        )
    else:
        where = f"`escrow serve` with {args.workers} worker(s) on a scratch database"

        async def work(engine: AsyncEngine):
            regulator = await bench.regulator_token(engine)
            database = engine.url.database
            async with bench.server(get_settings().database_url, args.workers) as (url, pid):
                return await bench.run(
                    url,
                    regulator,
                    server_pid=pid,
                    database=database,
                    consumer_token=bench.consumer_tokens(engine),
                    **sizes,
                )

        result = _run_with_bench_database(work, pool_size=2)
    print(f"flow benchmark on {machine()}, against {where}")
    print(
        f"{args.consumers} consumers at {args.merchants} merchants, {args.sessions} sessions each,"
        f" {args.concurrency} requests in flight, "
        + ("one service per request" if args.class_size == 1 else f"services recorded in classes of {args.class_size}")
    )
    print(bench.table(result))
    print(bench.summary(result))
    if result.errors:
        print(bench.errors(result), file=sys.stderr)
        return 1
    return 0


class ProgressBar:
    """``[#####.....] 4,000/10,000 items  1,234 items/s``, redrawn in place (``\\r``) on a stream (stderr).

    Call it with (done, total) as work proceeds; the first call is the baseline of the rate."""

    def __init__(self, stream=None, width: int = 30, unit: str = "items") -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.unit = unit
        self._start: tuple[float, int] | None = None
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        import time

        now = time.perf_counter()
        if self._start is None:
            self._start = (now, done)
        started, done_before = self._start
        rate = (done - done_before) / (now - started) if now > started else 0.0
        filled = self.width * done // total if total else self.width
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {done:,}/{total:,} {self.unit}  {rate:,.0f} {self.unit}/s ")
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def _bar_to_the_end(unit: str):
    """A progress callback whose bar ends its line once done reaches total (a benchmark's setup)."""
    bar = ProgressBar(sys.stderr, unit=unit)

    def progress(done: int, total: int) -> None:
        bar(done, total)
        if done == total:
            bar.finish()

    return progress


def _totals_table(totals) -> str:
    """A closure's settlement totals per source (yuan), as a Markdown table."""
    parts = [
        ("from custody", totals.from_custody),
        ("set-off (merchant_payable)", totals.set_off),
        ("fund paid", totals.fund_paid),
        ("fund owed", totals.fund_owed - totals.fund_owed_paid),
        ("fund owed, paid since", totals.fund_owed_paid),
        ("unpaid claims on the merchant", totals.unpaid),
        ("transferred to the successor", totals.transferred),
        ("assumed by the successor", totals.assumed),
    ]
    lines = ["| source | yuan | share |", "|---|---:|---:|"]
    for name, fen in [*parts, ("**unused value settled**", totals.unused)]:
        share = f"{100 * fen / totals.unused:.1f} %" if totals.unused else "-"
        lines.append(f"| {name} | {fen / 100:,.2f} | {share} |")
    return "\n".join(lines)


async def closure_settle(engine, settings, closure_id: str, batch: int | None, *, out=None, err=None) -> int:
    """``escrow closure settle``: run a settling closure's plan to the end; 0 when it is settled, else 1."""
    from escrow.closures import service
    from escrow.db import create_sessionmaker
    from escrow.errors import EscrowError
    from escrow.models import Closure

    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session:
        closure = await session.get(Closure, closure_id)
    if closure is None:
        print(f"no closure {closure_id}", file=err)
        return 1
    start_it = f"POST /v1/closures/{closure.id}/settlement"
    if closure.status == "announced":
        print(
            f"closure {closure.id} is announced: it is frozen on {closure.effective_on} (by the jobs), then started"
            f" with {start_it}",
            file=err,
        )
        return 1
    if closure.status == "frozen":
        print(f"closure {closure.id} is frozen: start it with {start_it} first", file=err)
        return 1
    if closure.status == "settling":
        bar = ProgressBar(err)
        bar(closure.items_done, closure.items_total)
        try:
            closure = await service.settle(sessionmaker, settings, closure.id, batch_size=batch, progress=bar)
        except EscrowError as exc:
            bar.finish()
            print(f"closure {closure_id}: settlement stopped, the last batch was rolled back: {exc.detail}", file=err)
            return 1
        bar.finish()
        print(
            f"closure {closure.id} is {closure.status}: {closure.items_done:,} of {closure.items_total:,} items",
            file=out,
        )
    else:  # settled or confirmed already: nothing left to do
        print(f"closure {closure.id} is already {closure.status}: nothing left to settle", file=out)
    async with sessionmaker() as session:
        totals = await service.totals(session, closure.id)
    print(_totals_table(totals), file=out)
    return 0 if closure.status in ("settled", "confirmed") else 1


def cmd_closure_settle(args: argparse.Namespace) -> int:
    async def work(engine):
        return await closure_settle(engine, get_settings(), args.closure_id, args.batch)

    return _run_with_engine(work)


def cmd_bench_closure(args: argparse.Namespace) -> int:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from escrow.closures import bench
    from escrow.ledger.bench import machine

    setup_progress = _bar_to_the_end("cards")
    settle_bar = ProgressBar(sys.stderr)

    async def work(engine: AsyncEngine):
        try:
            return await bench.run(
                engine,
                get_settings(),
                cards=args.cards,
                ratio_bp=args.ratio_bp,
                batch=args.batch,
                verify=not args.no_verify,
                setup_progress=setup_progress,
                progress=settle_bar,
            )
        finally:
            settle_bar.finish()

    result = _run_with_bench_database(work, pool_size=2)
    print(f"closure benchmark on {machine()}, a scratch database; {args.cards:,} cards, batches of {args.batch:,}")
    print(bench.table(result))
    print(bench.summary(result))
    print(_totals_table(result.totals))
    return 0 if result.ok else 1


async def reconcile(engine, settings, path: Path, bank: str | None, *, out=None, err=None) -> int:
    """``escrow reconcile FILE``: import a camt.053 (or JSON) statement file and match it; 0 when imported."""
    from sqlalchemy import or_, select

    from escrow.config import load_secret_key
    from escrow.db import create_sessionmaker
    from escrow.errors import EscrowError
    from escrow.kit.crypto import Keyring
    from escrow.models import Bank
    from escrow.reconciliation import service

    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    sessionmaker = create_sessionmaker(engine)
    bank_id = None
    if bank is not None:
        async with sessionmaker() as session:
            bank_id = await session.scalar(select(Bank.id).where(or_(Bank.id == bank, Bank.code == bank)))
        if bank_id is None:
            print(f"no bank {bank} (give its id, bnk_…, or its code)", file=err)
            return 2
    bar = ProgressBar(err, unit="bytes")
    try:
        result = await service.import_file(
            sessionmaker,
            settings,
            Keyring(load_secret_key(settings)),
            path,
            bank_id=bank_id,
            received_by="operator:cli",
            progress=bar,
        )
    except EscrowError as exc:
        bar.finish()
        print(f"{path}: refused, nothing was stored: {exc.detail}", file=err)
        for error in exc.errors or []:
            where = f" (line {error['line']})" if error.get("line") else ""
            print(f"  {error['field']}{where}: {error['message']}", file=err)
        return 1
    bar.finish()
    print(
        f"{path}: {len(result.intakes)} statement(s), {result.lines:,} lines,"
        f" imported in {result.import_seconds:.1f} s, matched in {result.matching_seconds:.1f} s",
        file=out,
    )
    lines = [
        "| statement | escrow account | day | version | outcome | lines | matched | amount mismatch | not in ledger"
        " | open breaks | reconciled |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    async with sessionmaker() as session:
        for intake in result.intakes:
            statement = intake.statement
            figures = await service.statement_figures(session, statement)
            lines.append(
                f"| {statement.id} | {statement.escrow_account_id} | {statement.business_date} | {statement.version}"
                f" | {intake.outcome} | {statement.line_count:,} | {figures.matched:,} | {figures.amount_mismatch:,}"
                f" | {figures.not_in_ledger:,} | {figures.open_breaks:,}"
                f" | {'yes' if service.reconciled(statement, figures.open_breaks) else 'no'} |"
            )
    print("\n".join(lines), file=out)
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        print(f"{args.file}: no such file", file=sys.stderr)
        return 2

    async def work(engine):
        return await reconcile(engine, get_settings(), args.file, args.bank)

    return _run_with_engine(work)


def cmd_bench_reconcile(args: argparse.Namespace) -> int:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from escrow.ledger.bench import machine
    from escrow.reconciliation import bench

    setup_progress = _bar_to_the_end("cards")
    import_bar = ProgressBar(sys.stderr, unit="bytes")

    async def work(engine: AsyncEngine):
        try:
            return await bench.run(
                engine,
                get_settings(),
                lines=args.lines,
                fmt=args.format,
                setup_progress=setup_progress,
                progress=import_bar,
            )
        finally:
            import_bar.finish()

    result = _run_with_bench_database(work, pool_size=2)
    print(
        f"reconciliation benchmark on {machine()}, a scratch database;"
        f" a {args.format} statement of {args.lines:,} lines"
    )
    print(bench.table(result))
    print(bench.summary(result))
    return 0


def _run_with_bench_database(work, *, pool_size: int) -> object:
    """Benchmarks write into a scratch database next to the configured one, dropped afterwards."""
    import asyncpg

    from escrow.db import resolve_database_url, with_database

    base = resolve_database_url(get_settings())
    name = f"escrow_bench_{os.getpid()}"

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(base)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(admin(f"CREATE DATABASE {name}"))
    os.environ["ESCROW_DATABASE_URL"] = with_database(base, name)
    get_settings.cache_clear()
    try:
        return _run_with_engine(work, pool_size=pool_size)
    finally:
        asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


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

    openapi = commands.add_parser(
        "openapi", help="write contracts/openapi.json and the JSON statement schema (bank-statement.schema.json)"
    )
    openapi.add_argument("--output", type=Path, default=DEFAULT_OPENAPI, help="where to write it")
    openapi.add_argument("--check", action="store_true", help="only check that the file is up to date")
    openapi.set_defaults(func=cmd_openapi)

    routes = commands.add_parser("routes", help="print the table of routes and roles (Markdown, as in README)")
    routes.set_defaults(func=cmd_routes)

    verify = commands.add_parser(
        "verify", help="verify hash chains and invariants, then seal the new journal entries that verify"
    )
    verify.add_argument("--no-seal", action="store_true", help="verify only; do not seal new entries first")
    verify.set_defaults(func=cmd_verify)

    run_jobs = commands.add_parser(
        "run-jobs", help="run the background jobs (auto-confirmation, period releases, expiry, payouts)"
    )
    run_jobs.add_argument("--once", action="store_true", help="run what is due once and exit (for cron)")
    run_jobs.set_defaults(func=cmd_run_jobs)

    admin = commands.add_parser("admin", help="operator tasks")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True, metavar="TASK")
    create_token = admin_commands.add_parser("create-token", help="issue a token and print its secret once")
    create_token.add_argument("--role", required=True, choices=["regulator"], help="the first token is a regulator's")
    create_token.add_argument("--name", required=True, help="who or what the token is for")
    create_token.set_defaults(func=cmd_admin_create_token)

    sms = commands.add_parser("sms", help="text messages (development)")
    sms_commands = sms.add_subparsers(dest="sms_command", required=True, metavar="TASK")
    sms_outbox_command = sms_commands.add_parser(
        "outbox",
        help="print the messages the development sink kept instead of sending them (ESCROW_SMS_GATEWAY_URL unset); "
        "for development only",
    )
    sms_outbox_command.add_argument("--phone", help="only messages to this phone number")
    sms_outbox_command.add_argument(
        "--limit", type=_positive, default=20, help="how many of the newest messages (default 20)"
    )
    sms_outbox_command.set_defaults(func=cmd_sms_outbox)

    bench = commands.add_parser("bench", help="benchmarks (printed as Markdown tables)")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    bench_ledger = bench_commands.add_parser("ledger", help="transfers/s through the ledger API")
    bench_ledger.add_argument("--workers", type=int, default=8, help="concurrent connections (default 8)")
    bench_ledger.add_argument("--accounts", type=int, default=1000, help="card accounts to spread over (default 1000)")
    bench_ledger.add_argument("--seconds", type=float, default=10, help="duration of each scenario (default 10)")
    bench_ledger.add_argument("--batch", type=int, default=500, help="entries per call in the batch scenario")
    bench_ledger.set_defaults(func=cmd_bench_ledger)
    bench_flow = bench_commands.add_parser(
        "flow", help="sale, deposit, consumptions and confirmations over HTTP: requests/s and latency per step"
    )
    bench_flow.add_argument(
        "--url",
        help="a running server on ESCROW_DATABASE_URL, where consumers' tokens are issued (default: start "
        "`escrow serve` on a scratch database)",
    )
    bench_flow.add_argument("--regulator-token", help="a regulator token of the server at --url")
    bench_flow.add_argument("--consumers", type=int, default=500, help="consumers, one card each (default 500)")
    bench_flow.add_argument("--sessions", type=int, default=5, help="consumptions per card, 1-60 (default 5)")
    bench_flow.add_argument("--merchants", type=int, default=8, help="merchants (escrow accounts) to spread over")
    bench_flow.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    bench_flow.add_argument(
        "--class-size",
        type=int,
        default=1,
        help="services recorded per request: 1 (default) records each on its own, N > 1 a merchant's cards in"
        " classes of N (POST /v1/consumptions)",
    )
    bench_flow.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="worker processes of the server it starts"
    )
    bench_flow.set_defaults(func=cmd_bench_flow)
    bench_closure = bench_commands.add_parser(
        "closure", help="a merchant with many paid cards closes: freeze, plan and execution timed, then verify"
    )
    bench_closure.add_argument("--cards", type=_positive, default=100_000, help="paid cards to settle (default 100000)")
    bench_closure.add_argument(
        "--ratio-bp",
        type=_basis_points,
        default=10_000,
        help="custody ratio (basis points) of 3 cards in 4, so set-off and the fund take part (default 10000: full)",
    )
    bench_closure.add_argument("--batch", type=_batch_size, default=1000, help="items per settlement transaction")
    bench_closure.add_argument("--no-verify", action="store_true", help="skip verifying the ledger at the end")
    bench_closure.set_defaults(func=cmd_bench_closure)

    bench_reconcile = bench_commands.add_parser(
        "reconcile", help="import and match a statement of many lines against a ledger day as large (timed)"
    )
    bench_reconcile.add_argument(
        "--lines", type=_lines, default=1_000_000, help="statement lines (and paid cards) (default 1000000)"
    )
    bench_reconcile.add_argument(
        "--format", choices=["camt053", "json"], default="camt053", help="the statement's format (default camt053)"
    )
    bench_reconcile.set_defaults(func=cmd_bench_reconcile)

    reconcile_command = commands.add_parser(
        "reconcile", help="import a bank statement file (camt.053, or JSON) and match it, with progress"
    )
    reconcile_command.add_argument("file", type=Path, help="a camt.053 document (one or many accounts) or a JSON one")
    reconcile_command.add_argument(
        "--bank", help="only that bank's escrow accounts (its id or code); default: any account the file names"
    )
    reconcile_command.set_defaults(func=cmd_reconcile)

    closure = commands.add_parser("closure", help="closures: execute a settling closure's plan")
    closure_commands = closure.add_subparsers(dest="closure_command", required=True, metavar="TASK")
    settle = closure_commands.add_parser(
        "settle", help="execute a settling closure to the end, batch by batch, with progress; print its totals"
    )
    settle.add_argument("closure_id", help="the closure (clo_…), started with POST /v1/closures/{id}/settlement")
    settle.add_argument(
        "--batch", type=_batch_size, help="items per transaction (default: ESCROW_CLOSURE_BATCH_SIZE, 1000)"
    )
    settle.set_defaults(func=cmd_closure_settle)
    return parser


def _int_between(value: str, low: int, high: int) -> int:
    number = int(value)
    if not low <= number <= high:
        raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
    return number


def _batch_size(value: str) -> int:
    return _int_between(value, 1, 20_000)  # as ESCROW_CLOSURE_BATCH_SIZE


def _basis_points(value: str) -> int:
    return _int_between(value, 0, 10_000)


def _lines(value: str) -> int:
    return _int_between(value, 3, 10**7)


def _positive(value: str) -> int:
    return _int_between(value, 1, 10**8)


def main(argv: list[str] | None = None) -> None:
    from escrow.logs import configure_logging

    args = build_parser().parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)  # the libraries' log lines too (alembic, uvicorn)
    sys.exit(args.func(args))
