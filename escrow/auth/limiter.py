"""Repeated authentication failures from one address are refused (429) for a while.

Kept in the process's memory: each worker counts on its own, which slows guessing without a shared store.
Tokens carry 256 random bits, so this protects the database and the logs more than the tokens; the guessable
secrets (six-digit consumer codes) are also burnt after a few wrong tries in the database itself.
"""

import time
from collections import deque

from escrow.errors import EscrowError


class TooManyAuthFailures(EscrowError):
    code = "too_many_auth_failures"
    status = 429
    title = "Too many failed authentications"


class FailureLimiter:
    def __init__(self, limit: int, window_seconds: float, block_seconds: float, max_sources: int = 100_000) -> None:
        self.limit = limit
        self.window = window_seconds
        self.block = block_seconds
        self.max_sources = max_sources
        self._failures: dict[str, deque[float]] = {}
        self._blocked_until: dict[str, float] = {}

    def check(self, source: str) -> None:
        until = self._blocked_until.get(source)
        if until is None:
            return
        remaining = until - time.monotonic()
        if remaining <= 0:
            del self._blocked_until[source]
            return
        raise TooManyAuthFailures(
            f"Too many failed authentications from this address; retry in {int(remaining) + 1} s.",
            retry_after=int(remaining) + 1,
        )

    def record(self, source: str) -> None:
        now = time.monotonic()
        if len(self._failures) >= self.max_sources and source not in self._failures:
            self._failures.clear()  # bounded memory under a flood of addresses
        failures = self._failures.setdefault(source, deque())
        failures.append(now)
        while failures and failures[0] < now - self.window:
            failures.popleft()
        if len(failures) >= self.limit:
            self._blocked_until[source] = now + self.block
            failures.clear()
