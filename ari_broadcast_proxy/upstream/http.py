"""A small pooled HTTP/1.1 client for one origin (Asterisk's HTTP server), on httptools.

Every proxied ARI request pays for its upstream client twice over (CPU and latency), and
general-purpose clients cost more than the rest of the proxy: measured per request against
Asterisk, httpx on aiohttp's engine 590 us of CPU, httpx's own pipeline 200 us even with a
null transport, aiohttp alone 170 us; this client about 35 us. It does what ARI needs and no
more: keep-alive connections to one host, at most `max_connections`; request bodies with a
Content-Length; responses with a Content-Length, chunked or ended by close, buffered or
streamed with back-pressure; a deadline on every wait. Headers are bytes pairs in, bytes
pairs out, as ASGI has them. No cookies, no redirects, no proxies.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, Self

import httptools
import orjson

from ..errors import UpstreamError, UpstreamTimeout

__all__ = ["HttpPool", "HttpResponse"]

Headers = list[tuple[bytes, bytes]]

_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS"})
_PAUSE_AT = 1024 * 1024  # streamed body bytes buffered before the socket stops being read
_RESUME_AT = 256 * 1024


class _Reused(UpstreamError):
    """A kept-alive connection failed before any answer: Asterisk had closed it (retryable)."""


class _Connection(asyncio.Protocol):
    """One TCP connection and the exchange under way on it (HTTP/1.1, one at a time)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.reused = False
        self._head: asyncio.Future[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._status = 0
        self._headers: Headers = []
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._received = False
        self._until_close = False
        self._stray = False
        self.complete = False
        self.keep_alive = False
        self._error: UpstreamError | None = None

    # -- the caller's side ----------------------------------------------------------------------

    def start(self, data: bytes) -> asyncio.Future[None]:
        """Write one request; the future resolves when the response head has arrived."""
        assert self.transport is not None
        self._head = self._loop.create_future()
        self._status, self._headers, self.complete, self._received = 0, [], False, False
        self._until_close = False  # the body buffer is empty: only reusable ones come here
        self._error = None
        self.transport.write(data)
        return self._head

    @property
    def status(self) -> int:
        return self._status

    @property
    def reusable(self) -> bool:
        """The answer was read to its end and nothing else came: the next request may go."""
        return (
            self.complete
            and self.keep_alive
            and not (self.closed or self._stray or self._paused or self._chunks)
        )

    @property
    def headers(self) -> Headers:
        return self._headers

    async def next_chunk(self, timeout: float) -> bytes | None:
        """The next piece of the body; None once it is complete."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.complete:
                return None
            self._wakeup = self._loop.create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._wakeup
            except TimeoutError:
                raise UpstreamTimeout("Asterisk did not send the answer's body in time") from None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered < _RESUME_AT and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._head is None or self.complete:
            self.close()  # nothing was asked: not an HTTP/1.1 server we can trust
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"Asterisk sent an invalid HTTP answer ({exc})"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._head is None or self.complete:
            return
        if self._until_close and exc is None:  # a body without framing ends with the close
            self.on_message_complete()
            self.keep_alive = False
            return
        if not self.complete:
            why = f"{type(exc).__name__}: {exc}" if exc else "connection closed"
            kind = _Reused if self.reused and not self._received else UpstreamError
            self._fail(kind(f"Asterisk closed the connection mid-answer ({why})"))

    # -- httptools callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer to one request: ignored, and never reused
            self._stray = True

    def on_header(self, name: bytes, value: bytes) -> None:
        # Fields after a chunked body (trailers; the status is known by then) are no headers.
        if not self._stray and not self._status:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._stray:
            return
        self._status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        framed = any(name.lower() in _FRAMING for name, _ in self._headers)
        self._until_close = not framed and self._status >= 200 and self._status not in (204, 304)
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._stray:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _PAUSE_AT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._stray:
            return
        self.complete = True
        self.keep_alive = self.keep_alive and self._parser.should_keep_alive()
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        self._error = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        self._wake()


class HttpResponse:
    """An answer from Asterisk: status and head at once, the body read or streamed."""

    def __init__(self, pool: HttpPool, connection: _Connection, timeout: float) -> None:
        self._pool: HttpPool | None = pool
        self._connection: _Connection | None = connection
        self._timeout = timeout
        self.status_code = connection.status
        self.raw_headers: Headers = connection.headers
        self.content = b""

    @classmethod
    def composed(cls, status: int, headers: Headers, content: bytes, timeout: float) -> Self:
        """An answer the proxy composed from Asterisk's (several servers' lists merged):
        its body is `content`, already here."""
        answer = cls.__new__(cls)
        answer._pool, answer._connection, answer._timeout = None, None, timeout
        answer.status_code, answer.raw_headers, answer.content = status, headers, content
        return answer

    @property
    def timeout(self) -> float:
        """The longest wait for any part of this exchange, in seconds."""
        return self._timeout

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        wanted = name.lower().encode("latin-1")
        for key, value in self.raw_headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    def json(self) -> Any:
        return orjson.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    async def iter_body(self) -> AsyncIterator[bytes]:
        """The body piece by piece (each wait bounded by the timeout); releases the
        connection at the end."""
        connection = self._connection
        if connection is None:
            if self.content:  # read already, or composed: the body is here
                yield self.content
            return
        try:
            while (chunk := await connection.next_chunk(self._timeout)) is not None:
                yield chunk
        finally:
            self.release()

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; past `limit` bytes, UpstreamError (the rest is left unread)."""
        chunks, size = [], 0
        async for chunk in self.iter_body():
            size += len(chunk)
            if limit is not None and size > limit:
                self.release()  # not read to its end: the connection is dropped
                raise UpstreamError(f"Asterisk's answer is larger than {limit} bytes")
            chunks.append(chunk)
        self.content = b"".join(chunks)
        return self.content

    def release(self) -> None:
        """Give the connection back (or drop it if the answer was not read to its end)."""
        connection, self._connection = self._connection, None
        if connection is not None and self._pool is not None:
            self._pool.give_back(connection)


class HttpPool:
    """Keep-alive connections to one `host:port`, at most `max_connections` at once; a
    request waits for a free one within its timeout."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_connections: int,
        timeout: float,
        connect_timeout: float,
        keepalive_expiry: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._host = host
        self._tls = tls
        self._port = port
        self._host_header = f"{host}:{port}".encode("latin-1")
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._expiry = keepalive_expiry
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: Iterable[tuple[bytes, bytes]] = (),
        body: bytes = b"",
        *,
        stream: bool = False,
    ) -> HttpResponse:
        """Send `method target` (origin-form: /ari/...) and return once the head arrived;
        with `stream` the body is read through `iter_body`, else it is in `content`.
        Transport failures and timeouts raise UpstreamError / UpstreamTimeout."""
        head = [method, b" ", target, b" HTTP/1.1\r\nhost: ", self._host_header, b"\r\n"]
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        if body or method in (b"POST", b"PUT", b"PATCH"):
            head += (b"content-length: ", str(len(body)).encode(), b"\r\n")
        head.append(b"\r\n")
        data = b"".join(head) + body
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._exchange(data, retry=method in _IDEMPOTENT)
        except TimeoutError:
            raise UpstreamTimeout(f"Asterisk did not answer in {self._timeout:g} s") from None
        if method == b"HEAD":
            response.release()  # no body follows (whatever Content-Length says)
        elif not stream:
            await response.read()
        return response

    async def _exchange(self, data: bytes, *, retry: bool) -> HttpResponse:
        await self._slots.acquire()
        connection = None
        try:
            connection = await self._connection()
            try:
                await connection.start(data)
            except _Reused:
                if not retry:
                    raise
                self._drop(connection)
                connection = await self._open()
                await connection.start(data)
        except BaseException:  # failed, timed out or cancelled: that connection is spent
            if connection is not None:
                self._drop(connection)
            self._slots.release()
            raise
        return HttpResponse(self, connection, self._timeout)

    async def _connection(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < self._expiry:
                connection.reused = True
                self._busy.add(connection)
                return connection
            connection.close()
        return await self._open()

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop), self._host, self._port, ssl=self._tls
                )
        except TimeoutError:
            raise UpstreamTimeout("Asterisk did not accept a connection in time") from None
        except OSError as exc:
            raise UpstreamError(
                f"Asterisk is unreachable ({type(exc).__name__}: {exc.strerror or exc})"
            ) from None
        self._busy.add(connection)
        return connection

    def give_back(self, connection: _Connection) -> None:
        """End an exchange: a complete, kept-alive connection waits for the next request."""
        self._busy.discard(connection)
        self._slots.release()
        if connection.reusable:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()

    def _drop(self, connection: _Connection) -> None:
        self._busy.discard(connection)
        connection.close()

    async def aclose(self) -> None:
        for connection in (*self._idle, *self._busy):
            connection.close()
        self._idle.clear()
        self._busy.clear()
