"""Events WebSockets to Asterisk: websockets' sans-I/O `ClientProtocol` under a thin asyncio
layer of the proxy's own.

Every event of every application crosses one of these sockets, so each text frame is handed
to its consumer from `data_received` itself, synchronously: no reader task, no message queue
and no task wake-up per frame (asyncio's streams layer cost one of each). Consumers must not
block: a downstream session queues what it relays, bounded. Writes are synchronous too (the
frames are small ARI requests). A ping goes out every PING_INTERVAL seconds; no pong within
PING_TIMEOUT aborts the connection, as does a write buffer Asterisk stops draining.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable, Mapping

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from ..errors import UpstreamError, UpstreamTimeout

__all__ = ["EventsSocket", "HandshakeRefused", "open_events_socket"]

log = logging.getLogger(__name__)

# Frames from Asterisk can carry large snapshots (bridges with many channels); the
# downstream side applies its own limits.
MAX_FRAME = 16 * 1024 * 1024
PING_INTERVAL = 20.0
PING_TIMEOUT = 20.0
CLOSE_TIMEOUT = 2.0  # for Asterisk to close the TCP connection after the close handshake
MAX_WRITE_BUFFER = 4 * 1024 * 1024
EARLY_FRAMES = 1024  # frames kept until the consumer starts (it is set up right after open)


class HandshakeRefused(Exception):
    """Asterisk answered the upgrade with an HTTP error: relayed to the client as is."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        super().__init__(f"upstream refused the WebSocket upgrade with {status}")
        self.status = status
        self.headers = headers
        self.body = body


class EventsSocket(asyncio.Protocol):
    """One events WebSocket. `start(on_text)` begins delivering text frames; `closed`
    resolves once the connection is gone (`close_code` then says how it ended)."""

    def __init__(self, protocol: ClientProtocol) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._protocol = protocol
        self._transport: asyncio.Transport | None = None
        self._handshake: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._on_text: Callable[[str], None] | None = None
        self._early: list[str] = []
        self._fragments: list[bytes] | None = None
        self._failed = False
        self._ping: bytes | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self.subprotocol: str | None = None

    @property
    def close_code(self) -> int | None:
        """The close code once the connection is closed (1006 if it just broke)."""
        return self._protocol.close_code if self.closed.done() else None

    def start(self, on_text: Callable[[str], None]) -> None:
        """Deliver text frames to `on_text` from now on (those already received first)."""
        self._on_text = on_text
        early, self._early = self._early, []
        for text in early:
            self._deliver(text)

    def send(self, text: str) -> None:
        """Write one text frame; UpstreamError if the socket is not open."""
        if self._protocol.state is not State.OPEN or self._transport is None:
            raise UpstreamError("the events socket to Asterisk is closed")
        self._protocol.send_text(text.encode())
        self._flush()
        if self._transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self._abort("Asterisk stopped reading")
            raise UpstreamError("Asterisk stopped reading the events socket")

    def pause_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (bounded by CLOSE_TIMEOUT)."""
        state = self._protocol.state
        if state is State.OPEN:
            self._protocol.send_close(code, reason)
            self._flush()
        elif state is State.CONNECTING and self._transport is not None:
            self._transport.abort()
        # CLOSING: the handshake is under way (bounded by CLOSE_TIMEOUT); CLOSED: nothing.

    async def wait_closed(self, timeout: float | None = None) -> None:
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.closed)
        except TimeoutError:
            self._abort("closing took too long")
            await asyncio.shield(self.closed)

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._flush()  # the handshake request

    def data_received(self, data: bytes) -> None:
        self._protocol.receive_data(data)
        self._process()

    def eof_received(self) -> None:
        self._protocol.receive_eof()
        self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._timer, self._abort_timer):
            if timer is not None:
                timer.cancel()
        if self._protocol.state is not State.CLOSED:
            self._protocol.receive_eof()  # a connection that just broke: 1006
            self._protocol.events_received()
        if not self._handshake.done():
            why = f"{type(exc).__name__}: {exc}" if exc else "connection closed"
            self._handshake.set_exception(UpstreamError(f"Asterisk closed the socket ({why})"))
        if not self.closed.done():
            self.closed.set_result(None)

    # -- frames ---------------------------------------------------------------------------------

    def _process(self) -> None:
        for event in self._protocol.events_received():
            if isinstance(event, Response):
                self._handshake_done(event)
            elif isinstance(event, Frame):
                self._frame(event)
        self._flush()

    def _handshake_done(self, response: Response) -> None:
        if self._handshake.done():  # nobody waits any more (the connect was abandoned)
            self.close()
            return
        error = self._protocol.handshake_exc
        if error is None:
            self.subprotocol = self._protocol.subprotocol
            self._handshake.set_result(None)
            self._timer = self._loop.call_later(PING_INTERVAL, self._send_ping)
        elif isinstance(error, InvalidStatus):
            refused = error.response
            self._handshake.set_exception(
                HandshakeRefused(
                    refused.status_code,
                    list(refused.headers.raw_items()),
                    bytes(refused.body or b""),
                )
            )
        else:
            self._handshake.set_exception(UpstreamError(f"Asterisk's handshake failed: {error}"))

    def _frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.TEXT:
            if frame.fin:
                self._text(frame.data)
            else:
                self._fragments = [bytes(frame.data)]
        elif frame.opcode is Opcode.CONT and self._fragments is not None:
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                data, self._fragments = b"".join(self._fragments), None
                self._text(data)
        elif frame.opcode is Opcode.PONG and bytes(frame.data) == self._ping:
            self._ping = None
        # Pings are answered and closes handled by the protocol; ARI sends no binary frames.

    def _text(self, data: bytes | bytearray | memoryview) -> None:
        if self._failed:
            return  # the connection failed on an earlier frame of the same read
        try:
            text = bytes(data).decode()
        except UnicodeDecodeError:
            self._failed = True
            self._protocol.fail(1007, "invalid UTF-8")
            return
        if self._on_text is None:
            if len(self._early) < EARLY_FRAMES:
                self._early.append(text)
            return
        self._deliver(text)

    def _deliver(self, text: str) -> None:
        assert self._on_text is not None
        try:
            self._on_text(text)
        except Exception:  # a consumer's bug must not take the connection down
            log.exception("events frame could not be handled")

    def _flush(self) -> None:
        transport = self._transport
        if transport is None:
            return
        for data in self._protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()
        if self._protocol.close_expected() and self._abort_timer is None:
            self._abort_timer = self._loop.call_later(
                CLOSE_TIMEOUT, self._abort, "Asterisk did not close the connection"
            )

    def _send_ping(self) -> None:
        if self._protocol.state is not State.OPEN:
            return
        if self._ping is not None:
            self._abort("no pong from Asterisk")
            return
        self._ping = os.urandom(4)
        self._protocol.send_ping(self._ping)
        self._flush()
        self._timer = self._loop.call_later(PING_TIMEOUT, self._send_ping)

    def _abort(self, why: str) -> None:
        if self._transport is not None and not self.closed.done():
            log.warning("events socket to Asterisk aborted: %s", why)
            self._transport.abort()

    async def handshake(self) -> None:
        await self._handshake


async def open_events_socket(
    url: str,
    headers: Mapping[str, str],
    *,
    timeout: float,
    subprotocols: list[str] | None = None,
) -> EventsSocket:
    """Connect to `ws://asterisk/ari/events?...`; raise HandshakeRefused or UpstreamError."""
    uri = parse_uri(url)
    protocol = ClientProtocol(
        uri,
        subprotocols=[Subprotocol(p) for p in subprotocols] if subprotocols else None,
        max_size=MAX_FRAME,
    )
    request = protocol.connect()
    for name, value in headers.items():
        request.headers[name] = value
    protocol.send_request(request)
    loop = asyncio.get_running_loop()
    socket: EventsSocket | None = None
    try:
        async with asyncio.timeout(timeout):
            _, socket = await loop.create_connection(
                lambda: EventsSocket(protocol),
                uri.host,
                uri.port,
                ssl=ssl.create_default_context() if uri.secure else None,
            )
            await socket.handshake()
    except TimeoutError as exc:
        if socket is not None:
            socket.close()
        raise UpstreamTimeout("Asterisk did not complete the WebSocket handshake in time") from exc
    except OSError as exc:
        raise UpstreamError(f"Asterisk is unreachable ({type(exc).__name__}: {exc})") from exc
    except BaseException:  # refused, failed or cancelled: nothing is left open
        if socket is not None:
            socket.close()
        raise
    return socket
