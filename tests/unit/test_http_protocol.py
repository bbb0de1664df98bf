"""Which requests the HTTP protocol answers as it reads them, and which go to uvicorn."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from ari_broadcast_proxy.ari_request import AriAnswer
from ari_broadcast_proxy.auth import Credentials
from ari_broadcast_proxy.http_protocol import protocol_answering

CLAIM = b"POST /ari/events/claim?channelId=1.2&application=a HTTP/1.1\r\nHost: p\r\n"
CONFLICT = AriAnswer(409, {"message": "Channel has already been claimed by another application"})


class Quick:
    """Answers every claim it is asked at once with 409."""

    def __init__(self) -> None:
        self.asked: list[tuple[Credentials, list[tuple[str, str]]]] = []

    def answer_at_once(
        self,
        credentials: Credentials,
        params: Iterable[tuple[str, str]],
        reply: Callable[[AriAnswer], None],
    ) -> bool:
        self.asked.append((credentials, list(params)))
        reply(CONFLICT)
        return True


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8088) if name in ("sockname", "peername") else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 418, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@pytest.fixture
async def connection() -> tuple[Any, Transport, Quick]:
    quick = Quick()
    config = Config(_app, log_config=None)
    config.load()
    protocol = protocol_answering(quick)(config, ServerState(), {})
    transport = Transport()
    protocol.connection_made(transport)
    return protocol, transport, quick


async def test_a_whole_claim_with_no_body_is_answered_in_one_write(connection: Any) -> None:
    protocol, transport, quick = connection
    protocol.data_received(CLAIM + b"Authorization: Basic eDp5\r\nContent-Length: 0\r\n\r\n")
    body = b'{"message":"Channel has already been claimed by another application"}'
    assert transport.written == [
        b"HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    ]
    assert quick.asked == [
        (Credentials("Basic eDp5", None), [("channelId", "1.2"), ("application", "a")])
    ]
    assert protocol.timeout_keep_alive_task is not None  # idle again, as after any answer


@pytest.mark.parametrize(
    "data",
    [
        CLAIM + b"Content-Length: 2\r\n\r\n{}",  # a body
        CLAIM + b"Expect: 100-continue\r\n\r\n",
        CLAIM + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        CLAIM + b"Connection: close\r\n\r\n",
        CLAIM + b"\r\n" + CLAIM + b"\r\n",  # pipelined
        CLAIM.replace(b"HTTP/1.1", b"HTTP/1.0") + b"\r\n",
        CLAIM.replace(b"/claim?", b"/claimed?") + b"\r\n",
        CLAIM.replace(b"/claim?", b"/cl%61im?") + b"\r\n",
        CLAIM,  # not whole yet
    ],
)
async def test_anything_else_goes_to_uvicorn(connection: Any, data: bytes) -> None:
    protocol, transport, quick = connection
    protocol.data_received(data)
    for _ in range(3):
        await asyncio.sleep(0)
    assert quick.asked == []
    if data.endswith(b"\r\n\r\n"):  # a whole request: the ASGI application answered
        assert transport.written[0].startswith(b"HTTP/1.1 418 ")


async def test_a_claim_inside_another_request_is_not_taken_for_one(connection: Any) -> None:
    protocol, _, quick = connection
    protocol.data_received(b"GET /ari/asterisk/info HTTP/1.1\r\nX-Note: ")
    protocol.data_received(CLAIM + b"\r\n")  # the rest of that request's head
    assert quick.asked == []
