"""camt.053 parsed off the event loop: the whole document is read by one worker thread (lxml objects stay in the
thread that made them), which hands statements and batches of lines to the loop through a small bounded queue —
so a large upload never stalls other requests, the parse waits for the database as the copy proceeds, and memory
stays what the queue holds. At most ``PARSER_THREADS`` documents are parsed at once per process; others wait
(asynchronously) for their turn, so several uploads don't each hold a parser's memory."""

import asyncio
import weakref
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from functools import partial
from typing import IO, Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread

from escrow.reconciliation.parsing import Line, ParsedStatement, camt053_statements

PARSER_THREADS = 2  # documents parsed at once per process
LINES_PER_BATCH = 1000  # lines handed to the loop at a time
QUEUE_BATCHES = 4
_limiters: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter]" = weakref.WeakKeyDictionary()
T = TypeVar("T")


def parser_limiter() -> anyio.CapacityLimiter:
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = anyio.CapacityLimiter(PARSER_THREADS)
    return limiter


async def each(items: Iterable[T] | AsyncIterator[T]) -> AsyncIterator[T]:
    """Items of a plain or an asynchronous iterable, asynchronously."""
    if hasattr(items, "__anext__"):
        async for item in items:  # type: ignore[union-attr]
            yield item
    else:
        for item in items:  # type: ignore[union-attr]
            yield item


@asynccontextmanager
async def camt053_in_thread(source: IO[bytes], timezone: str) -> AsyncIterator[AsyncIterator[ParsedStatement]]:
    """The statements of a camt.053 document, parsed in a worker thread; errors are raised where they are read."""
    send, receive = anyio.create_memory_object_stream[tuple[str, Any]](max_buffer_size=QUEUE_BATCHES)

    def produce() -> None:
        put = partial(anyio.from_thread.run, send.send)
        try:
            try:
                for parsed in camt053_statements(source, timezone):
                    put(("statement", parsed.header))
                    batch: list[Line] = []
                    for line in parsed.lines:  # type: ignore[union-attr]
                        batch.append(line)
                        if len(batch) == LINES_PER_BATCH:
                            put(("lines", batch))
                            batch = []
                    put(("lines", batch))
                put(("end", None))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                raise
            except Exception as exc:  # the reader raises it (a refusal, usually)
                put(("error", exc))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the reader stopped reading

    # A task of its own rather than a task group, so that a refusal reaches the caller as itself, not in a group.
    worker = asyncio.ensure_future(anyio.to_thread.run_sync(produce, limiter=parser_limiter()))
    try:
        yield _Reader(receive).statements()
    finally:
        receive.close()  # a parse still running stops at its next hand-over
        await asyncio.shield(worker)  # the thread ends before the source is closed


class _Reader:
    def __init__(self, receive: Any) -> None:
        self.receive = receive
        self.peeked: tuple[str, Any] | None = None

    async def _get(self) -> tuple[str, Any]:
        if self.peeked is not None:
            item, self.peeked = self.peeked, None
            return item
        kind, value = await self.receive.receive()
        if kind == "error":
            raise value
        return kind, value

    async def statements(self) -> AsyncIterator[ParsedStatement]:
        while True:
            kind, header = await self._get()
            if kind == "end":
                return
            lines = self._lines()
            yield ParsedStatement(header, lines)
            async for _ in lines:  # lines the reader did not want are still read (and checked)
                pass

    async def _lines(self) -> AsyncIterator[Line]:
        while True:
            kind, value = await self._get()
            if kind != "lines":
                self.peeked = (kind, value)
                return
            for line in value:
                yield line
