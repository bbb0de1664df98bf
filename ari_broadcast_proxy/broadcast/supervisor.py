"""The broadcast application's own socket: connecting (with backoff), readiness, the guard
that keeps the application as the proxy needs it, and taking the application back after
another client registered it (ApplicationReplaced).

Every event on the socket goes to `on_event`; answers to REST over WebSocket go to the
connection's `RestOverWebSocket`. The events-socket factory, the guard, the channel gateway
and the clock are injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol

import orjson

from ..config import Config
from ..errors import ProxyError
from ..metrics import Metrics
from ..upstream.websocket import CLOSE_TIMEOUT, HandshakeRefused
from ..upstream.ws_rest import RestOverWebSocket
from .clock import Clock
from .handover import ChannelGateway, backoff
from .ownership import GUARD_INTERVAL, AppGuard

__all__ = ["EventsSocketLike", "OpenEventsSocket", "Supervisor"]

log = logging.getLogger(__name__)


class EventsSocketLike(Protocol):
    """What the supervisor needs of an upstream events socket (upstream.websocket's)."""

    @property
    def close_code(self) -> int | None: ...

    def start(self, on_text: Callable[[str], None]) -> None: ...

    def send(self, text: str) -> None: ...

    def close(self, code: int = 1000, reason: str = "") -> None: ...

    async def wait_closed(self, timeout: float | None = None) -> None: ...


class OpenEventsSocket(Protocol):
    def __call__(
        self, url: str, headers: Mapping[str, str], *, timeout: float
    ) -> Awaitable[EventsSocketLike]: ...


class Supervisor:
    def __init__(
        self,
        config: Config,
        guard: AppGuard,
        open_socket: OpenEventsSocket,
        gateway: ChannelGateway,
        metrics: Metrics,
        clock: Clock,
        on_event: Callable[[dict[str, Any]], None],
        while_connected: Callable[[], Coroutine[Any, Any, None]],
    ) -> None:
        self._config = config
        self._open = open_socket
        self._guard = guard
        self._gateway = gateway
        self._metrics = metrics
        self._clock = clock
        self._on_event = on_event
        self._while_connected = while_connected  # recovery, from before the first event
        self._socket: EventsSocketLike | None = None
        self._replaced = False  # another socket registered the broadcast application
        self._stopped = False
        self._ready = asyncio.Event()
        self.calls = RestOverWebSocket(None, config.upstream_timeout)  # replaced per connection

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def server(self) -> str:
        """The Asterisk server this socket is to (host:port)."""
        return self._guard.upstream.name

    def stop(self) -> None:
        """`run` ends at its next step: a cancellation alone can be lost on Python 3.11
        (`asyncio.wait_for` drops one that lands as its awaitable finishes), and a replica
        that lets the broadcast application go must not keep its socket."""
        self._stopped = True
        if self._socket is not None:
            self._socket.close()

    async def run(self) -> None:
        upstream = self._guard.upstream
        url = f"{upstream.ws}/events?app={self._config.broadcast_app}"
        headers = {"authorization": upstream.authorization}
        delays = backoff()
        self._stopped = False
        while not self._stopped:
            if self._replaced:
                await self._wait_released()
            try:
                socket = await self._open(url, headers, timeout=self._config.upstream_timeout)
            except HandshakeRefused as refused:
                log.error(
                    "Asterisk %s refused the broadcast application socket: %d %s; retrying",
                    self.server,
                    refused.status,
                    refused.body[:200].decode(errors="replace"),
                )
            except ProxyError as exc:
                log.warning(
                    "broadcast application not connected on %s: %s; retrying",
                    self.server,
                    exc.message,
                )
            else:
                if self._stopped:  # stopped while it was opening
                    socket.close()
                    return
                delays = backoff()
                await self._serve(socket)
            if not self._stopped:
                await self._clock.sleep(next(delays))

    async def _wait_released(self) -> None:
        """After ApplicationReplaced: wait (backoff) until the other client lets the
        broadcast application go, then take it back."""
        delays = backoff(0.5, cap=5.0)
        while True:
            with contextlib.suppress(ProxyError):
                if not await self._guard.registered():
                    break
            await self._clock.sleep(next(delays))
        self._replaced = False
        log.warning(
            "the other client released the broadcast application %r: taking it back",
            self._config.broadcast_app,
        )

    async def _serve(self, socket: EventsSocketLike) -> None:
        self.calls = RestOverWebSocket(socket, self._config.upstream_timeout)
        self._socket = socket
        log.info(
            "broadcast application %r registered on Asterisk %s",
            self._config.broadcast_app,
            self.server,
        )
        # Before the first event is handled: a filter set on Asterisk would drop calls.
        await self._enforce_ownership()
        self._ready.set()
        tasks = [
            asyncio.create_task(self._while_connected(), name="recovery"),
            asyncio.create_task(self._calls_over(self.calls), name="probe"),
            asyncio.create_task(self._guard_ownership(), name="guard"),
        ]
        socket.start(self._on_text)  # every event is handled as it arrives
        try:
            await socket.wait_closed()
        finally:
            for task in tasks:
                task.cancel()
            self._ready.clear()
            self._socket = None
            self._gateway.attach(None)
            self.calls.close()
            socket.close()
            await socket.wait_closed(CLOSE_TIMEOUT)
        log.warning(
            "broadcast application socket to %s closed (%s); reconnecting",
            self.server,
            socket.close_code,
        )

    def _on_text(self, text: str) -> None:
        event = self._parse(text)
        kind = event.get("type")
        if kind == "RESTResponse":
            self.calls.on_response(event)
        elif kind == "ApplicationReplaced":
            self.replaced()
        else:
            self._on_event(event)

    @staticmethod
    def _parse(text: str) -> dict[str, Any]:
        event = orjson.loads(text)
        return event if isinstance(event, dict) else {}

    def replaced(self) -> None:
        """Another client (a second proxy?) registered the broadcast application: calls now
        go to it. Not ready, so health checks show it, until that client lets it go and the
        proxy takes it back."""
        self._ready.clear()
        self._replaced = True
        self._metrics.app_replaced.inc()
        if self._socket is not None:
            self._socket.close()
        log.error(
            "another client registered the broadcast application %r on Asterisk: "
            "this proxy gets no calls (not ready) until that client lets it go",
            self._config.broadcast_app,
        )

    async def _enforce_ownership(self) -> None:
        """Put back what the proxy needs of its application on Asterisk (no event filter,
        no foreign subscription) and say what was changed behind its back."""
        try:
            async with asyncio.timeout(self._config.upstream_timeout):
                cleared = await self._guard.enforce()
        except ProxyError as exc:
            log.warning("could not check the broadcast application on Asterisk: %s", exc.message)
            return
        except TimeoutError:  # its message is empty
            log.warning(
                "could not check the broadcast application on Asterisk: no answer in %g s",
                self._config.upstream_timeout,
            )
            return
        if cleared:
            log.warning(
                "the broadcast application %r was changed on Asterisk by another client; "
                "cleared: %s",
                self._config.broadcast_app,
                ", ".join(cleared),
            )

    async def _guard_ownership(self) -> None:
        while True:
            await self._clock.sleep(GUARD_INTERVAL)
            await self._enforce_ownership()

    async def _calls_over(self, calls: RestOverWebSocket) -> None:
        """Carry hand-overs on the broadcast socket if this Asterisk does REST over WebSocket
        (one round trip for all of a hand-over's calls instead of one HTTP request each)."""
        if self._config.handover_transport == "http":
            log.info("hand-overs use HTTP (--handover-transport http)")
        elif len(self._config.upstreams) > 1:
            log.info("hand-overs use HTTP (several Asterisk servers: each call's own)")
        elif await calls.probe():
            self._gateway.attach(calls)
            log.info("hand-overs go over the broadcast application's socket (REST over WebSocket)")
        else:
            log.info("Asterisk does not answer REST over WebSocket: hand-overs use HTTP")
