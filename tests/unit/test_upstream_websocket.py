"""The events socket layer against a real WebSocket server on loopback (websockets'): the
handshake as Asterisk would see it, frames in order from data_received, refusals kept
intact, close codes, fragments, and the failures that must be UpstreamErrors."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from typing import Any

import pytest
from websockets.asyncio.server import Request, Response, ServerConnection, serve
from websockets.datastructures import Headers

from ari_broadcast_proxy.errors import UpstreamError, UpstreamTimeout
from ari_broadcast_proxy.upstream.websocket import HandshakeRefused, open_events_socket

Handler = Callable[[ServerConnection], Awaitable[None]]


@pytest.fixture
async def server() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    servers: list[Any] = []

    async def start(handler: Handler, **options: Any) -> str:
        running = await serve(handler, "127.0.0.1", 0, compression=None, **options)
        servers.append(running)
        port = next(iter(running.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/ari/events?app=a"

    yield start
    for running in servers:
        running.close()
        await running.wait_closed()


async def test_frames_arrive_in_order_and_writes_reach_asterisk(server) -> None:  # type: ignore[no-untyped-def]
    seen: dict[str, Any] = {}

    async def handler(ws: ServerConnection) -> None:
        seen["authorization"] = ws.request.headers.get("Authorization")
        seen["user_agent"] = ws.request.headers.get("User-Agent")
        for n in range(3):
            await ws.send(f'{{"n":{n}}}')  # before the consumer starts: kept for it
        seen["from_client"] = await ws.recv()
        await ws.send(["frag", "mented"])  # one message in several frames
        await ws.close(1000)

    url = await server(handler, subprotocols=["ari"])
    events = await open_events_socket(
        url, {"Authorization": "Basic eDp5"}, timeout=2, subprotocols=["ari"]
    )
    assert events.subprotocol == "ari"
    await asyncio.sleep(0.05)
    received: list[str] = []
    events.start(received.append)
    events.send('{"type":"RESTRequest"}')
    await events.wait_closed(2)
    assert received == ['{"n":0}', '{"n":1}', '{"n":2}', "fragmented"]
    assert seen["from_client"] == '{"type":"RESTRequest"}'
    assert seen["authorization"] == "Basic eDp5"
    assert seen["user_agent"] is None  # nothing of our own is added
    assert events.close_code == 1000
    with pytest.raises(UpstreamError):
        events.send("too late")


async def test_a_refused_upgrade_keeps_status_headers_and_body(server) -> None:  # type: ignore[no-untyped-def]
    def refuse(_conn: ServerConnection, _request: Request) -> Response:
        headers = Headers({"WWW-Authenticate": 'Basic realm="Asterisk REST Interface"'})
        return Response(HTTPStatus.UNAUTHORIZED, "Unauthorized", headers, b'{"error":"x"}')

    async def never(_ws: ServerConnection) -> None:
        raise AssertionError("no upgrade expected")

    url = await server(never, process_request=refuse)
    with pytest.raises(HandshakeRefused) as refused:
        await open_events_socket(url, {}, timeout=2)
    assert refused.value.status == 401
    assert refused.value.body == b'{"error":"x"}'
    assert ("WWW-Authenticate", 'Basic realm="Asterisk REST Interface"') in refused.value.headers


async def test_asterisk_closing_gives_its_code(server) -> None:  # type: ignore[no-untyped-def]
    async def handler(ws: ServerConnection) -> None:
        await ws.close(1011, "going")

    events = await open_events_socket(await server(handler), {}, timeout=2)
    events.start(lambda _text: None)
    await events.wait_closed(2)
    assert events.close_code == 1011


async def test_closing_from_our_side(server) -> None:  # type: ignore[no-untyped-def]
    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    events = await open_events_socket(await server(handler), {}, timeout=2)
    events.close(1000)
    await events.wait_closed(3)
    assert events.close_code == 1000


async def test_a_consumer_error_does_not_close_the_socket(server) -> None:  # type: ignore[no-untyped-def]
    async def handler(ws: ServerConnection) -> None:
        await ws.send("boom")
        await ws.send("fine")
        await ws.wait_closed()

    received: list[str] = []

    def consumer(text: str) -> None:
        if text == "boom":
            raise ValueError(text)
        received.append(text)

    events = await open_events_socket(await server(handler), {}, timeout=2)
    events.start(consumer)
    for _ in range(100):
        if received:
            break
        await asyncio.sleep(0.01)
    assert received == ["fine"]
    events.close()
    await events.wait_closed(3)


async def test_unreachable_and_silent_servers_are_upstream_errors() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(UpstreamError, match="unreachable"):
        await open_events_socket(f"ws://127.0.0.1:{port}/ari/events", {}, timeout=2)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, never answers the upgrade
        writer.close()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        with pytest.raises(UpstreamTimeout):
            await open_events_socket(f"ws://127.0.0.1:{port}/ari/events", {}, timeout=0.2)
