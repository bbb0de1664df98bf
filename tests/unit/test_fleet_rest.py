"""Several servers' REST against loopback HTTP servers: what may be tried on another server
when one fails, and what may not.

A server that refuses the connection never got the request: the next one may take it. One
that took the request and went silent may have acted on it: the client gets 504, and the
request is never sent to a second server (a POST would run twice)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ari_broadcast_proxy.config import Config, Upstream
from ari_broadcast_proxy.errors import UpstreamTimeout
from ari_broadcast_proxy.fleet.locator import Locator
from ari_broadcast_proxy.fleet.rest import FleetRest
from ari_broadcast_proxy.metrics import Metrics
from ari_broadcast_proxy.upstream.rest import UpstreamRest


@pytest.fixture
async def servers() -> AsyncIterator[tuple[str, str, list[bytes]]]:
    """A server that reads a request and never answers, and one that answers 200 {} and
    records what it was asked."""
    answered: list[bytes] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(10)
        writer.close()

    async def answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        writer.write(b"Content-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    first = await asyncio.start_server(silent, "127.0.0.1", 0)
    second = await asyncio.start_server(answering, "127.0.0.1", 0)
    bases = [f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in (first, second)]
    async with first, second:
        yield bases[0], bases[1], answered


async def test_a_silent_server_is_a_timeout_never_a_second_try(
    servers: tuple[str, str, list[bytes]],
) -> None:
    silent, answering, answered = servers
    upstreams = (Upstream(silent, "u", "p"), Upstream(answering, "u", "p"))
    config = Config(upstreams=upstreams, upstream_timeout=0.3)
    fleet = FleetRest([UpstreamRest(u, config, Metrics()) for u in upstreams], Locator())
    try:
        with pytest.raises(UpstreamTimeout) as timeout:
            await fleet.call("POST", "events/user/ping", {"application": "a"})  # any server
        assert timeout.value.status == 504
        assert silent.removeprefix("http://") in timeout.value.message
        assert answered == []  # a user event sent twice reaches its applications twice
    finally:
        await fleet.aclose()
