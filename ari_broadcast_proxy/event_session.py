"""Downstream events WebSockets: one upstream socket per client socket, relayed both ways.

    client <-> EventSession <-> Asterisk /ari/events (same query, same credentials)

Frames from Asterisk pass through `Interceptor.upstream_frame` (the broadcast feature
rewrites or drops some) as they arrive, into a queue bounded in frames and in bytes and
drained by one writer task, so a client that stops reading never blocks anyone else: when
its queue is full the session is closed with 1013. A session that ends otherwise (Asterisk
closed its side, the proxy shuts down) first lets the client take what is queued. Frames
from the client pass through `Interceptor.client_frame` (which answers claims itself) or go
to Asterisk unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol
from urllib.parse import parse_qsl

from starlette.websockets import WebSocket, WebSocketDisconnect

from .direct_frames import DirectFrames
from .errors import UpstreamError
from .upstream.websocket import CLOSE_TIMEOUT
from .upstream_order import UpstreamOrder, UpstreamStep

__all__ = ["CLOSE_SHUTDOWN", "FORWARDED_HEADERS", "EventSession", "Interceptor", "UpstreamSocket"]

log = logging.getLogger(__name__)

CLOSE_SLOW_CONSUMER = 1013  # "try again later": the client should reconnect
CLOSE_UPSTREAM_GONE = 1001
CLOSE_SHUTDOWN = 1001
# When Asterisk or the proxy ends a session, the client still gets what was queued for it
# (the last StasisEnd, ApplicationReplaced...) within this time.
FLUSH_TIMEOUT = 1.0
# Besides its frame count, a client's queue may hold this many characters (ARI events are a
# few KiB of ASCII JSON; user events with large variables reach 40 KiB each).
MAX_QUEUED_BYTES = 16 * 1024 * 1024
FORWARDED_HEADERS = ("authorization", "origin")


class UpstreamSocket(Protocol):
    """What a session relays to: one server's events socket (upstream/websocket.py), or one
    over several servers (fleet/events.py)."""

    subprotocol: str | None

    @property
    def close_code(self) -> int | None: ...

    def start(self, on_text: Callable[[str], None]) -> None: ...

    def send(self, text: str) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self, code: int = 1000, reason: str = "") -> None: ...

    async def wait_closed(self, timeout: float | None = None) -> None: ...


class Interceptor(Protocol):
    def upstream_frame(self, session: EventSession, text: str) -> str | None:
        """The frame to send to the client (None drops it)."""

    async def client_frame(self, session: EventSession, text: str) -> bool:
        """True if the frame was answered by the proxy and must not reach Asterisk."""


class EventSession:
    """One client events socket and its upstream twin."""

    def __init__(
        self,
        websocket: WebSocket,
        upstream: UpstreamSocket,
        apps: list[str],
        queue_size: int,
        interceptor: Interceptor,
        on_overflow: Callable[[], None] = lambda: None,
        order: UpstreamOrder | None = None,
        before_close: Callable[[EventSession], Awaitable[None]] | None = None,
        direct: DirectFrames | None = None,
    ) -> None:
        self.websocket = websocket
        self._direct = direct  # frames written at once while nothing is queued
        self._writing = False  # the writer task holds a frame it has not written yet
        self._before_close = before_close  # with the upstream socket still open
        self._on_overflow = on_overflow
        self.upstream = upstream
        self.apps = apps
        self.query = dict(parse_qsl(websocket.url.query, keep_blank_values=True))
        self.headers = {k: v for k, v in websocket.headers.items() if k in FORWARDED_HEADERS}
        self._queue: asyncio.Queue[str] = asyncio.Queue(queue_size)
        self._queued_bytes = 0
        self._high_water = max(1, queue_size // 2)
        self._reading_paused = False
        self._interceptor = interceptor
        self._closing: tuple[int, str] | None = None
        self._client_gone = False
        self._done = asyncio.Event()
        self._order = order or UpstreamOrder()
        self._close_step: UpstreamStep | None = None  # taken when the session starts ending

    @property
    def first_app(self) -> str:
        return self.apps[0] if self.apps else ""

    def __repr__(self) -> str:
        return f"<EventSession apps={','.join(self.apps)}>"

    # -- output -------------------------------------------------------------------------------

    def send_event(self, text: str) -> None:
        """Queue a frame for the client; a full queue closes the session (slow consumer)."""
        if self._closing is not None:
            return
        direct = self._direct
        if direct is not None and not self._writing and self._queue.empty() and direct.send(text):
            return
        if self._queued_bytes + len(text) <= MAX_QUEUED_BYTES:
            try:
                self._queue.put_nowait(text)
            except asyncio.QueueFull:
                pass
            else:
                self._queued_bytes += len(text)
                return
        log.warning(
            "closing events socket for %s: client stopped reading (%d frames, %d bytes queued)",
            ",".join(self.apps),
            self._queue.qsize(),
            self._queued_bytes,
        )
        self._on_overflow()
        self.close(CLOSE_SLOW_CONSUMER, "slow consumer: event queue full")

    def close(self, code: int, reason: str) -> None:
        """Ask the session to end; `run` closes both sockets with `code`."""
        if self._closing is None:
            self._closing = (code, reason)
        self._take_close_step()
        self._done.set()

    def _take_close_step(self) -> UpstreamStep:
        """Closing the upstream socket comes after the steps on the same names decided
        before this session started ending (a socket opening for one of them), before
        those decided after (the client's next socket)."""
        if self._close_step is None:
            self._close_step = self._order.take(self.apps)
        return self._close_step

    # -- the relay ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Relay until either side closes or `close` is called; then close both sides."""
        self.upstream.start(self._from_upstream)
        writer = asyncio.create_task(self._to_client(), name="to-client")
        reader = asyncio.create_task(self._from_client(), name="from-client")
        tasks = [
            asyncio.create_task(self._upstream_closed(), name="upstream-closed"),
            reader,
            writer,
            asyncio.create_task(self._done.wait(), name="done"),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if self._flushes() and not writer.done():
                # Until the queue is sent, or the writer fails, or the client leaves.
                flushed = asyncio.create_task(self._queue.join(), name="flushed")
                tasks.append(flushed)
                await asyncio.wait(
                    {flushed, writer, reader},
                    timeout=FLUSH_TIMEOUT,
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            code, reason = self._closing or (1000, "")
            async with self._take_close_step():
                try:
                    if self._before_close is not None and self.upstream.close_code is None:
                        await self._before_close(self)
                finally:  # cancelled meanwhile (shutdown): the socket closes all the same
                    self.upstream.close()
                with contextlib.suppress(Exception):
                    await self.upstream.wait_closed(CLOSE_TIMEOUT)
            with contextlib.suppress(Exception):
                await self.websocket.close(code, reason)

    def _flushes(self) -> bool:
        """Whether the frames still queued go out before the close: not to a client that
        left or that was too slow to take them."""
        return not self._client_gone and (self._closing or (0, ""))[0] != CLOSE_SLOW_CONSUMER

    def _from_upstream(self, text: str) -> None:
        """Each frame from Asterisk, as it arrives (called from the socket's protocol).

        One loop iteration can read megabytes of a flood of events before the writer gets
        a turn: past half the queue, reading stops until that turn is over (not until the
        client has read: a client that does not drain still fills its queue and is closed)."""
        out = self._interceptor.upstream_frame(self, text)
        if out is None:
            return
        self.send_event(out)
        if not self._reading_paused and self._queue.qsize() >= self._high_water:
            self._reading_paused = True
            self.upstream.pause_reading()
            asyncio.get_running_loop().call_soon(self._resume_reading)  # after the writer

    def _resume_reading(self) -> None:
        self._reading_paused = False
        self.upstream.resume_reading()

    async def _upstream_closed(self) -> None:
        await self.upstream.wait_closed()
        rcvd = self.upstream.close_code
        code = rcvd if rcvd in (1000, 1001, 1008, 1011) else CLOSE_UPSTREAM_GONE
        log.info("Asterisk closed the events socket for %s (%s)", ",".join(self.apps), rcvd)
        self.close(code, "Asterisk closed the connection")

    async def _from_client(self) -> None:
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    self._client_gone = True
                    self.close(1000, "")
                    return
                text = message.get("text")
                if text is None:
                    data = message.get("bytes") or b""
                    try:
                        text = data.decode()
                    except UnicodeDecodeError:
                        self.close(1007, "frames must be UTF-8 JSON")
                        return
                if not await self._interceptor.client_frame(self, text):
                    self.upstream.send(text)
        except WebSocketDisconnect:
            self._client_gone = True
            self.close(1000, "")
        except UpstreamError:
            self.close(CLOSE_UPSTREAM_GONE, "Asterisk closed the connection")

    async def _to_client(self) -> None:
        send = self.websocket.send_text
        get = self._queue.get
        done = self._queue.task_done
        while True:
            text = await get()
            self._writing = True
            self._queued_bytes -= len(text)
            await send(text)
            self._writing = False
            done()
