"""Background work in the service process: each run is its own unit of work (one transaction, committed here),
idempotent, so a rerun after a crash is harmless. Issue #5 adds auto-confirmation, payouts and expiry here."""

import asyncio

import structlog
from sqlalchemy.ext.asyncio import async_sessionmaker

from escrow.ledger.integrity import seal

log = structlog.get_logger("escrow.jobs")


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
        except Exception:
            log.exception("ledger_seal_failed")
        await asyncio.sleep(interval_seconds)
