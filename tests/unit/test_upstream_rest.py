"""The upstream HTTP client shared by every application keeps no cookies.

Asterisk's ARI sets none, so this runs against a small loopback HTTP server that does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ari_broadcast_proxy.config import Config, Upstream
from ari_broadcast_proxy.metrics import Metrics
from ari_broadcast_proxy.upstream.rest import UpstreamRest


@pytest.fixture
async def cookie_setter() -> AsyncIterator[tuple[str, list[bytes]]]:
    """An HTTP/1.1 server that sets a cookie on every answer and records request heads."""
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            heads.append(head)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Set-Cookie: session=client-a; Path=/\r\nContent-Length: 2\r\n\r\n{}"
            )
            await writer.drain()
            if reader.at_eof():
                break

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}", heads


async def test_a_cookie_from_one_answer_is_never_sent_again(
    cookie_setter: tuple[str, list[bytes]],
) -> None:
    base, heads = cookie_setter
    upstream = Upstream(base, "u", "p")
    rest = UpstreamRest(upstream, Config(upstreams=(upstream,)), Metrics())
    try:
        for _ in range(3):
            response = await rest.call("GET", "asterisk/info")
            assert (response.header("set-cookie") or "").startswith("session=")
    finally:
        await rest.aclose()
    assert len(heads) == 3
    assert not any(b"\r\ncookie:" in head.lower() for head in heads), heads
