"""Background work in the service process, and ``escrow run-jobs --once`` for cron-style deployments.

Each job works in batches, each batch its own unit of work (one transaction, committed here), using the same
services as the API. Every job is idempotent — it acts on what is due *now* and leaves what it did in the rows it
changes — so a rerun after a crash, or two processes running it at once, does nothing twice: the rows are
locked and re-checked before each change, the ledger refuses a second resolution of a hold, and the daily
payout run is claimed once per business date.
"""

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from escrow import ledger, notices
from escrow.auth.requests import forget_old_nonces
from escrow.closures import service as closures
from escrow.config import Settings, load_secret_key
from escrow.consumers import service as consumers
from escrow.consumptions import service as consumptions
from escrow.credit import service as credit
from escrow.errors import cause_summary, database_unavailable
from escrow.fund import service as fund
from escrow.kit.clock import business_date, utcnow
from escrow.kit.crypto import Keyring
from escrow.ledger.integrity import seal
from escrow.models import JobRun
from escrow.payouts import service as payouts
from escrow.reconciliation import matching as reconciliation
from escrow.refunds import service as refunds
from escrow.risk import service as risk
from escrow.sms import SmsSender, deliver_due, sender_for

log = structlog.get_logger("escrow.jobs")


async def _batches(
    sessionmaker: async_sessionmaker, limit: int, batch: Callable[[AsyncSession], Awaitable[int]]
) -> int:
    """Run ``batch`` (which returns how many items it handled) in fresh transactions until a batch comes short."""
    total = 0
    while True:
        async with sessionmaker() as session:
            handled = await batch(session)
            await session.commit()
        total += handled
        if handled < limit:
            return total


async def daily_payouts(session: AsyncSession, settings: Settings, now: datetime) -> int | None:
    """The scheduled payout run, once per business date after ``payout_hour`` (None when not due)."""
    local = now.astimezone(ZoneInfo(settings.business_timezone))
    if settings.payout_hour is None or local.hour < settings.payout_hour:
        return None
    claimed = await session.scalar(
        insert(JobRun)
        .values(job="payouts", business_date=business_date(now, settings.business_timezone))
        .on_conflict_do_nothing()
        .returning(JobRun.job)
    )
    if claimed is None:
        return None
    return len(await payouts.run_payouts(session, "system:payouts"))


async def daily_expiry_notices(session: AsyncSession, settings: Settings, now: datetime) -> int | None:
    """Notices of cards whose validity ends soon, once per business date (None when already done today); the
    notices' dedup keys make a second run add nothing anyway."""
    today = business_date(now, settings.business_timezone)
    claimed = await session.scalar(
        insert(JobRun).values(job="expiry_notices", business_date=today).on_conflict_do_nothing().returning(JobRun.job)
    )
    if claimed is None:
        return None
    return await notices.cards_expiring(session, settings, today)


async def daily_warnings(session: AsyncSession, settings: Settings, now: datetime) -> int | None:
    """The signals over all merchants, once per business date (None when already done today): opens or updates
    early warnings (escrow/risk); returns how many warnings it opened or updated."""
    claimed = await session.scalar(
        insert(JobRun)
        .values(job="warnings", business_date=business_date(now, settings.business_timezone))
        .on_conflict_do_nothing()
        .returning(JobRun.job)
    )
    if claimed is None:
        return None
    outcome = await risk.run_signals(session, settings, now)
    return sum(outcome.opened.values()) + sum(outcome.updated.values())


async def monthly_credit_grades(session: AsyncSession, settings: Settings, now: datetime) -> int | None:
    """Every merchant's grade (escrow/credit), once per calendar month (claimed on the month's first business
    date; None when already done this month); returns how many merchants were graded."""
    claimed = await session.scalar(
        insert(JobRun)
        .values(job="credit_grades", business_date=business_date(now, settings.business_timezone).replace(day=1))
        .on_conflict_do_nothing()
        .returning(JobRun.job)
    )
    if claimed is None:
        return None
    return (await credit.run(session, settings, now)).merchants


async def run_jobs_once(
    sessionmaker: async_sessionmaker,
    settings: Settings,
    now: datetime | None = None,
    sender: SmsSender | None = None,
    keyring: Keyring | None = None,
) -> dict:
    """Everything due now, in order; returns what each job did (and logs it). Text messages go through ``sender``
    (by default the one the settings name)."""
    now = now or utcnow()
    keyring = keyring or Keyring(load_secret_key(settings))
    sender = sender or sender_for(settings, sessionmaker, keyring)
    limit = settings.jobs_batch_size
    report: dict[str, int | None] = {}

    async def confirm(session: AsyncSession) -> int:
        return await consumptions.auto_confirm(session, now, limit)

    async def period(session: AsyncSession) -> int:
        outcome = await consumptions.release_period_days(session, settings, now, limit)
        report["period_days_released"] = (report.get("period_days_released") or 0) + outcome.released_days
        report["period_days_skipped_frozen"] = (report.get("period_days_skipped_frozen") or 0) + outcome.skipped_days
        return outcome.cards

    async def expiry(session: AsyncSession) -> int:
        # one card per transaction: a refund takes the escrow account's payable lock, which must not be held
        # while waiting for another card's row (a consumer's refund of that card may be waiting for it)
        extended, refunded = await refunds.handle_expired_cards(session, settings, now, 1)
        report["cards_extended"] = (report.get("cards_extended") or 0) + extended
        report["cards_refunded_at_expiry"] = (report.get("cards_refunded_at_expiry") or 0) + refunded
        return extended + refunded

    async def holds(session: AsyncSession) -> int:
        return len(await ledger.expire_pending(session, limit=limit))

    async def reinstruct(session: AsyncSession) -> int:
        return await payouts.reinstruct_refunds(session, limit)

    async def freeze(session: AsyncSession) -> int:
        return await closures.freeze_due(session, settings, now, 1)  # one merchant's freeze per transaction

    async def release(session: AsyncSession) -> int:
        return await closures.release_due(session)

    async def settle(session: AsyncSession) -> int:
        return await closures.settle_next(session, settings)

    async def owed(session: AsyncSession) -> int:
        return await fund.pay_owed(session, "system:fund", limit)

    async def reconcile(session: AsyncSession) -> int:
        # once a business date per account with statements, so movements in transit age into breaks even on a day
        # no statement comes; one account per transaction (a large one is a large run)
        accounts = await reconciliation.accounts_due(session, settings, 1)
        for account_id in accounts:
            await reconciliation.run_matching(session, settings, account_id)
        return len(accounts)

    async def expiring(session: AsyncSession) -> int:
        return await daily_expiry_notices(session, settings, now) or 0  # all at once (a second batch finds none)

    async def warnings(session: AsyncSession) -> int:
        return await daily_warnings(session, settings, now) or 0  # all at once (a second batch finds it done)

    async def grades(session: AsyncSession) -> int:
        return await monthly_credit_grades(session, settings, now) or 0  # all at once (a second batch finds it done)

    async def lapses(session: AsyncSession) -> int:
        return await credit.apply_lapses(session, settings, now)  # all at once

    async def notify(session: AsyncSession) -> int:
        return await notices.queue_due(session, settings, keyring, limit)

    async def nonces(session: AsyncSession) -> int:
        return await forget_old_nonces(session)  # all at once (a second batch finds none)

    async def counts(session: AsyncSession) -> int:
        return await consumers.forget_old_counts(session)  # all at once

    async def presence_failures(session: AsyncSession) -> int:
        # past their hour they bound nothing; a day's are kept for the supervision of guessing
        done = await session.execute(text("DELETE FROM presence_failures WHERE at < now() - interval '1 day'"))
        return done.rowcount or 0

    for name, job, per_batch in (
        ("services_auto_confirmed", confirm, limit),
        ("period_cards", period, limit),
        ("expired_cards", expiry, 1),
        ("holds_expired", holds, limit),
        ("refunds_reinstructed", reinstruct, limit),
        ("closures_frozen", freeze, 1),
        ("closure_holds_released", release, 1),
        ("closure_items_settled", settle, settings.closure_batch_size),
        ("fund_owed_payments", owed, limit),
        ("reconciliation_runs", reconcile, 1),
        ("card_expiry_notices", expiring, limit),
        ("warnings_raised_or_updated", warnings, 2**62),
        ("credit_overrides_lapsed", lapses, 2**62),
        ("merchants_graded", grades, 2**62),
        ("notices_queued", notify, limit),
        ("bank_nonces_forgotten", nonces, limit),
        ("rate_counts_forgotten", counts, limit),
        ("presence_failures_forgotten", presence_failures, limit),
    ):
        try:
            report[name] = await _batches(sessionmaker, per_batch, job)
        except Exception as exc:
            if database_unavailable(exc):  # one line for the run, not a traceback per job
                log.warning("jobs_skipped_database_unavailable", job=name, error=cause_summary(exc))
                return report
            log.exception("job_failed", job=name)
            report[name] = None
    try:
        async with sessionmaker() as session:
            report["payout_instructions"] = await daily_payouts(session, settings, now)
            await session.commit()
    except Exception as exc:
        if database_unavailable(exc):
            log.warning("jobs_skipped_database_unavailable", job="payouts", error=cause_summary(exc))
            return report
        log.exception("job_failed", job="payouts")
    try:  # messages the request that queued them did not deliver right after its commit
        report["sms_sent"] = await deliver_due(sessionmaker, sender, settings, keyring, limit=limit)
    except Exception:
        log.exception("job_failed", job="sms")
        report["sms_sent"] = None
    log.info("jobs_ran", **report)
    return report


async def run_periodically(
    sessionmaker: async_sessionmaker,
    settings: Settings,
    sender: SmsSender | None = None,
    keyring: Keyring | None = None,
) -> None:
    """Background task of the service process: run what is due, sleep, again."""
    if settings.jobs_interval_seconds <= 0:
        return
    while True:
        try:
            await run_jobs_once(sessionmaker, settings, sender=sender, keyring=keyring)
        except Exception:
            log.exception("jobs_failed")
        await asyncio.sleep(settings.jobs_interval_seconds)


async def seal_periodically(sessionmaker: async_sessionmaker, interval_seconds: float) -> None:
    """Background task of the service process: seal, commit, sleep; errors are logged and retried."""
    if interval_seconds <= 0:
        return
    while True:
        try:
            async with sessionmaker() as session:
                result = await seal(session)
                await session.commit()
            if result.seals:
                log.info("ledger_sealed", seals=result.seals, entries=result.entries)
            for book, rows in result.held.items():  # not sealed: its new rows fail their own checks
                log.error("ledger_seal_held", escrow_account_id=book, failures=rows[:10])
        except Exception as exc:
            if database_unavailable(exc):
                log.warning("ledger_seal_skipped_database_unavailable", error=cause_summary(exc))
            else:
                log.exception("ledger_seal_failed")
        await asyncio.sleep(interval_seconds)
