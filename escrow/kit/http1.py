"""A small HTTP/1.1 keep-alive client for load generation: a few microseconds of CPU per request, not hundreds.

Benchmarks run the client on the same cores as the service, so a general-purpose client's own CPU (httpx spends
about 0.7 ms per request) would be measured as the service's slowness. This one writes prepared bytes to a pool
of persistent connections, one request in flight per connection, and parses answers with httptools. It is not a
general client: no redirects, no TLS, no chunked request bodies, no proxies.
"""

import asyncio
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httptools


class ConnectionClosed(ConnectionError):
    """The server closed the connection before the whole answer arrived."""


class Response:
    __slots__ = ("body", "status")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._chunks: list[bytes] = []
        self._waiter: asyncio.Future[Response] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionClosed(f"unparseable answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionClosed("the server closed the connection"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(Response(self._parser.get_status_code(), b"".join(self._chunks)))

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    async def exchange(self, request: bytes) -> Response:
        assert self.transport is not None
        self._chunks = []
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self._waiter


class Http1Client:
    """``concurrency`` persistent connections to one server; ``await client.post(path, json=…)``."""

    def __init__(self, base_url: str, concurrency: int) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only http://host:port URLs are supported, not {base_url!r}")
        self._host, self._port = parts.hostname, parts.port or 80
        self._host_header = f"{self._host}:{self._port}".encode()
        self._idle: asyncio.LifoQueue[_Connection] = asyncio.LifoQueue()
        self._slots = asyncio.Semaphore(concurrency)
        self._open: list[_Connection] = []

    async def __aenter__(self) -> "Http1Client":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for connection in self._open:
            if connection.transport is not None:
                connection.transport.close()
        self._open.clear()

    async def _connection(self) -> _Connection:
        while not self._idle.empty():
            connection = self._idle.get_nowait()
            if connection.usable:
                return connection
        _, connection = await asyncio.get_running_loop().create_connection(_Connection, self._host, self._port)
        self._open.append(connection)
        return connection

    def _encode(self, method: str, path: str, headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
        lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + self._host_header]
        lines.extend(f"{name}: {value}".encode("latin-1") for name, value in headers)
        lines.append(b"Content-Length: " + str(len(body)).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    async def request(
        self, method: str, path: str, *, headers: Iterable[tuple[str, str]] = (), body: bytes = b""
    ) -> Response:
        request = self._encode(method, path, headers, body)
        async with self._slots:
            connection = await self._connection()
            try:
                response = await connection.exchange(request)
            except BaseException:
                if connection.transport is not None:
                    connection.transport.close()  # a half-read answer leaves the connection unusable
                raise
            self._idle.put_nowait(connection)
            return response

    async def post(self, path: str, *, json_body: Any = None, headers: Iterable[tuple[str, str]] = ()) -> Response:
        body = b"" if json_body is None else json.dumps(json_body, separators=(",", ":")).encode()
        return await self.request("POST", path, headers=[("Content-Type", "application/json"), *headers], body=body)

    async def get(self, path: str, *, headers: Iterable[tuple[str, str]] = ()) -> Response:
        return await self.request("GET", path, headers=headers)


__all__ = ["ConnectionClosed", "Http1Client", "Response"]
