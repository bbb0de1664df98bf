"""The upstream HTTP/1.1 pool against small loopback servers that answer byte for byte as
scripted: framing (length, chunked, close), keep-alive reuse, the stale-connection retry
rule, bounds (connections, time) and streaming back-pressure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from ari_broadcast_proxy.errors import UpstreamError, UpstreamTimeout
from ari_broadcast_proxy.upstream.http import HttpPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A loopback TCP server running `handler` per connection; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.heads: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def read_head(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                await reader.readexactly(int(line.split(b":")[1]))
        return head

    def pool(self, **overrides: float) -> HttpPool:
        settings = {
            "max_connections": 4,
            "timeout": 2.0,
            "connect_timeout": 1.0,
            "keepalive_expiry": 10.0,
        } | overrides
        return HttpPool("127.0.0.1", self.port, **settings)  # type: ignore[arg-type]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> Server:
        server = Server(handler)
        listener = await asyncio.start_server(server._handle, "127.0.0.1", 0)
        server.port = listener.sockets[0].getsockname()[1]
        servers.append(listener)
        return server

    yield start
    for listener in servers:
        listener.close()
        await listener.wait_closed()


def answer(body: bytes, status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    length = b"Content-Length: %d\r\n" % len(body)
    return b"HTTP/1.1 " + status + b"\r\n" + extra + length + b"\r\n" + body


async def test_keep_alive_reuses_one_connection_and_frames_the_request(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_head(reader)
            writer.write(answer(b'{"ok":1}', extra=b"Content-Type: application/json\r\n"))

    server = await serve(handler)
    pool = server.pool()
    try:
        for _ in range(3):
            response = await pool.request(b"POST", b"/ari/x?a=1", [(b"x-one", b"1")], b"body")
            assert response.status_code == 200
            assert response.json() == {"ok": 1}
            assert response.header("Content-Type") == "application/json"
    finally:
        await pool.aclose()
    assert server.connections == 1
    head = server.heads[0]
    assert head.startswith(b"POST /ari/x?a=1 HTTP/1.1\r\nhost: 127.0.0.1:")
    assert b"\r\nx-one: 1\r\n" in head and b"\r\ncontent-length: 4\r\n" in head


@pytest.mark.parametrize(
    ("wire", "body"),
    [
        (
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            b"hello world",
        ),
        (b"Connection: close\r\n\r\nuntil the end", b"until the end"),
    ],
)
async def test_chunked_and_close_delimited_bodies(serve, wire: bytes, body: bytes) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + wire)
        await writer.drain()
        if b"close" in wire:
            writer.close()

    server = await serve(handler)
    pool = server.pool()
    try:
        assert (await pool.request(b"GET", b"/ari/x")).content == body
    finally:
        await pool.aclose()


async def test_trailer_fields_are_not_headers(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Head: 1\r\n\r\n"
            b"2\r\nok\r\n0\r\nX-Trailer: late\r\n\r\n"
        )

    server = await serve(handler)
    pool = server.pool()
    try:
        response = await pool.request(b"GET", b"/ari/x")
        assert response.content == b"ok"
        assert response.header("x-head") == "1"
        assert response.header("x-trailer") is None
    finally:
        await pool.aclose()


async def test_a_connection_closed_while_idle_is_replaced(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        writer.write(answer(b"1"))
        await writer.drain()  # then close: the pool learns it before the next request

    server = await serve(handler)
    pool = server.pool()
    try:
        assert (await pool.request(b"POST", b"/ari/a")).content == b"1"
        await asyncio.sleep(0.05)
        assert (await pool.request(b"POST", b"/ari/b")).content == b"1"
    finally:
        await pool.aclose()
    assert server.connections == 2


async def test_bytes_nobody_asked_for_retire_the_connection(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_head(reader)
            writer.write(answer(b"ok") + answer(b"bad", b"404 Not Found"))  # and another

    server = await serve(handler)
    pool = server.pool()
    try:
        for _ in range(2):
            response = await pool.request(b"GET", b"/ari/a")
            assert (response.status_code, response.content) == (200, b"ok")
            assert [v for k, v in response.raw_headers if k.lower() == b"content-length"] == [b"2"]
            await asyncio.sleep(0.05)
    finally:
        await pool.aclose()
    assert server.connections == 2  # the first one was not trusted again


async def test_stale_connection_is_retried_for_idempotent_requests_only(serve) -> None:  # type: ignore[no-untyped-def]
    """A kept-alive connection the server drops on the next request, before answering."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        writer.write(answer(b"first"))
        await writer.drain()
        await server.read_head(reader)  # read the second request, then drop it unanswered

    server = await serve(handler)
    pool = server.pool()
    try:
        await pool.request(b"GET", b"/ari/a")
        assert (await pool.request(b"GET", b"/ari/a")).content == b"first"  # on a new one
        with pytest.raises(UpstreamError, match="closed the connection"):
            await pool.request(b"POST", b"/ari/a")  # never sent twice
    finally:
        await pool.aclose()


async def test_timeouts_and_refusals_are_upstream_errors(serve) -> None:  # type: ignore[no-untyped-def]
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        await asyncio.sleep(5)

    server = await serve(silent)
    pool = server.pool(timeout=0.2)
    try:
        with pytest.raises(UpstreamTimeout):
            await pool.request(b"GET", b"/ari/x")
    finally:
        await pool.aclose()
    refused = HttpPool(
        "127.0.0.1", 1, max_connections=1, timeout=1, connect_timeout=1, keepalive_expiry=1
    )
    with pytest.raises(UpstreamError, match="unreachable"):
        await refused.request(b"GET", b"/ari/x")


async def test_garbage_is_an_upstream_error(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")

    server = await serve(handler)
    pool = server.pool()
    try:
        with pytest.raises(UpstreamError, match="invalid HTTP"):
            await pool.request(b"GET", b"/ari/x")
    finally:
        await pool.aclose()


async def test_connections_are_bounded(serve) -> None:  # type: ignore[no-untyped-def]
    active = 0
    peak = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal active, peak
        while True:
            await server.read_head(reader)
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.02)
            active -= 1
            writer.write(answer(b"x"))

    server = await serve(handler)
    pool = server.pool(max_connections=2)
    try:
        results = await asyncio.gather(*(pool.request(b"GET", b"/ari/x") for _ in range(8)))
    finally:
        await pool.aclose()
    assert [r.content for r in results] == [b"x"] * 8
    assert peak == 2 and server.connections == 2


async def test_a_streamed_body_is_read_with_back_pressure(serve) -> None:  # type: ignore[no-untyped-def]
    total = 32 * 1024 * 1024
    piece = b"z" * 65536
    written = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal written
        while True:
            await server.read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
            for _ in range(total // len(piece)):
                writer.write(piece)
                written += len(piece)
                await writer.drain()  # waits while the pool has stopped reading

    server = await serve(handler)
    pool = server.pool()
    try:
        response = await pool.request(b"GET", b"/ari/big", stream=True)
        assert response.content == b""
        await asyncio.sleep(0.3)  # nobody reads: the pool stops reading, the server waits
        assert written < total // 2
        received = 0
        async for chunk in response.iter_body():
            received += len(chunk)
        assert received == total
        again = await pool.request(b"GET", b"/ari/big", stream=True)
        assert again.status_code == 200
        again.release()  # not read to its end: that connection is dropped
    finally:
        await pool.aclose()
    assert server.connections == 1  # the first answer was read to its end: one connection


async def test_an_abandoned_answer_never_reaches_the_next_request(serve) -> None:  # type: ignore[no-untyped-def]
    bodies = iter([b"f" * 200_000, b"second"])  # one answer after the other, any connection

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_head(reader)
            writer.write(answer(next(bodies)))

    server = await serve(handler)
    pool = server.pool(max_connections=1)
    try:
        first = await pool.request(b"GET", b"/ari/big", stream=True)
        await asyncio.sleep(0.1)  # the whole body is buffered, none of it read
        first.release()
        assert (await pool.request(b"GET", b"/ari/next")).content == b"second"
    finally:
        await pool.aclose()
    assert server.connections == 2
