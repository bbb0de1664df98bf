"""Downstream events WebSockets: accepted, refused (the proxy's application, bad queries), and
paired with an upstream socket each (event_session.py relays them); every running session
owned, closed in order at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from starlette.responses import Response
from starlette.websockets import WebSocket

from .ari_request import app_parameter_values, parse_query, registered_apps, split_app_names
from .direct_frames import DirectFrames
from .errors import BadRequest, ProxyError, Reserved, json_error
from .event_session import (
    CLOSE_SHUTDOWN,
    FORWARDED_HEADERS,
    EventSession,
    Interceptor,
    UpstreamSocket,
)
from .registry import AppRegistry
from .upstream.websocket import CLOSE_TIMEOUT, HandshakeRefused, open_events_socket
from .upstream_order import UpstreamOrder

__all__ = ["OpenUpstream", "SessionManager", "one_server"]

log = logging.getLogger(__name__)

MAX_QUERY = 4000  # as passthrough.MAX_TARGET: Asterisk's request-line limit


class OpenUpstream(Protocol):
    """Opens the upstream side of a client's events socket: its query (as the client sent
    it), forwarded headers, subprotocols. Raises HandshakeRefused or ProxyError."""

    def __call__(
        self, query: str, headers: Mapping[str, str], subprotocols: list[str] | None
    ) -> Awaitable[UpstreamSocket]: ...


def one_server(upstream_ws: str, timeout: float) -> OpenUpstream:
    """The client's socket relayed to one Asterisk's `/ari/events`, same query."""

    async def open_upstream(
        query: str, headers: Mapping[str, str], subprotocols: list[str] | None
    ) -> UpstreamSocket:
        url = upstream_ws + "/events" + ("?" + query if query else "")
        return await open_events_socket(url, headers, timeout=timeout, subprotocols=subprotocols)

    return open_upstream


class SessionManager:
    """Accepts client sockets, opens their upstream twins, owns every running session."""

    def __init__(
        self,
        open_upstream: OpenUpstream,
        queue_size: int,
        registry: AppRegistry,
        interceptor: Interceptor,
        reserved_app: str,
        on_overflow: Callable[[], None] = lambda: None,
        before_close: Callable[[EventSession], Awaitable[None]] | None = None,
    ) -> None:
        self._before_close = before_close
        self._on_overflow = on_overflow
        self._open_upstream = open_upstream
        self._queue_size = queue_size
        self._registry = registry
        self._interceptor = interceptor
        self._reserved_app = reserved_app
        self._sessions: set[EventSession] = set()
        self._none_left = asyncio.Event()
        self._none_left.set()
        self._order = UpstreamOrder()

    def __len__(self) -> int:
        return len(self._sessions)

    async def endpoint(self, websocket: WebSocket, direct: DirectFrames | None = None) -> None:
        """Starlette WebSocket endpoint for /ari/events."""
        if len(websocket.url.query) > MAX_QUERY:
            log.warning("refused events socket: query string of %d bytes", len(websocket.url.query))
            await websocket.send_denial_response(json_error(414, "Request-URI too long"))
            return
        try:
            query = parse_query(websocket.scope.get("query_string", b""))
        except BadRequest as exc:
            log.warning("refused events socket: %s in the query", exc.message)
            await websocket.send_denial_response(exc.response())
            return
        apps = registered_apps(query)
        # Any `app` parameter, not only the first that Asterisk registers: never the proxy's.
        if any(self._reserved_app in split_app_names(v) for v in app_parameter_values(query)):
            log.warning("refused events socket: application %r is reserved", self._reserved_app)
            await websocket.send_denial_response(
                Reserved("Application", self._reserved_app).response()
            )
            return
        headers = {k: v for k, v in websocket.headers.items() if k in FORWARDED_HEADERS}
        subprotocols = [
            p.strip()
            for p in websocket.headers.get("sec-websocket-protocol", "").split(",")
            if p.strip()
        ]
        # Opening the upstream socket is a step on its application names: after the sockets
        # for them that started closing before (the client's previous one), see UpstreamOrder.
        async with self._order.take(apps):
            try:
                upstream = await self._open_upstream(
                    websocket.url.query, headers, subprotocols or None
                )
            except HandshakeRefused as refused:
                log.info(
                    "Asterisk refused events socket for %s with %d", ",".join(apps), refused.status
                )
                keep = {"content-type", "www-authenticate"}
                await websocket.send_denial_response(
                    Response(
                        refused.body,
                        status_code=refused.status,
                        headers={k: v for k, v in refused.headers if k.lower() in keep},
                    )
                )
                return
            except ProxyError as exc:
                log.error("events socket for %s failed: %s", ",".join(apps), exc.message)
                await websocket.send_denial_response(exc.response())
                return
            session = EventSession(
                websocket,
                upstream,
                apps,
                self._queue_size,
                self._interceptor,
                self._on_overflow,
                self._order,
                self._before_close,
                direct,
            )
            try:
                await websocket.accept(subprotocol=upstream.subprotocol)
            except Exception:
                upstream.close()  # still this step: the next one waits for the close
                with contextlib.suppress(Exception):
                    await upstream.wait_closed(CLOSE_TIMEOUT)
                raise
            self._sessions.add(session)
            self._none_left.clear()
            self._registry.register(session, apps)
        log.info("events socket open for %s", ",".join(apps))
        try:
            await session.run()
        finally:
            self._registry.unregister(session, apps)
            self._sessions.discard(session)
            if not self._sessions:
                self._none_left.set()
            log.info("events socket closed for %s", ",".join(apps))

    def close_all(self, code: int = CLOSE_SHUTDOWN, reason: str = "proxy shutting down") -> None:
        for session in list(self._sessions):
            session.close(code, reason)

    async def wait_closed(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._none_left.wait(), timeout)
