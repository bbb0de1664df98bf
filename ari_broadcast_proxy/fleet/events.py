"""One client events socket over several Asterisk servers: the client's applications are
registered on every server, and every server's events reach the client on its one socket,
each server's in its order, each with that server's `asterisk_id` as Asterisk set it.

`FleetSocket` is what an events session relays to in place of one server's socket. A server
that goes away stops sending and is connected again (with backoff) until it is back, when
the applications are registered there again; the client's socket stays open meanwhile.
`RESTRequest` frames from the client are carried out over HTTP on the server(s) their
route names (fleet/rest.py), with the socket's credentials, one at a time in the order they
came (as Asterisk runs a socket's requests), and answered with a `RESTResponse` frame as
Asterisk writes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import orjson

from ..ari_request import registered_apps
from ..broadcast.handover import backoff
from ..broadcast.presentation import asterisk_timestamp
from ..client_rest import RestRequest, parse_rest_request, rest_response
from ..config import Upstream
from ..errors import BadRequest, ProxyError
from ..event_session import UpstreamSocket
from ..sessions import OpenUpstream, one_server
from ..upstream.websocket import HandshakeRefused
from .rest import FleetRest

__all__ = ["FleetSocket", "fleet_sockets"]

log = logging.getLogger(__name__)

MAX_PENDING_REQUESTS = 1000  # RESTRequest frames waiting on one socket; past it, 503


class FleetSocket:
    """The UpstreamSocket an EventSession relays to, over one socket per server."""

    def __init__(
        self,
        servers: Sequence[Upstream],
        query: str,
        headers: Mapping[str, str],
        subprotocols: list[str] | None,
        timeout: float,
        rest: FleetRest,
    ) -> None:
        self._servers = servers
        self._query = query
        params = parse_qsl(query, keep_blank_values=True)
        apps = registered_apps(params)
        self._application = apps[0] if apps else ""  # what Asterisk's RESTResponse names
        self._api_key = dict(params).get("api_key")  # the socket's credentials, over HTTP
        self._headers = dict(headers)
        self._subprotocols = subprotocols
        self._timeout = timeout
        self._rest = rest
        self._requests: asyncio.Queue[RestRequest] = asyncio.Queue(MAX_PENDING_REQUESTS)
        self._sockets: dict[str, UpstreamSocket] = {}
        self._on_text: Callable[[str], None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._paused = False
        self._replaced: set[str] = set()  # applications whose ApplicationReplaced went out
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.subprotocol: str | None = None

    # -- opening ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect to every server. A refusal (credentials, application names) is the
        client's answer, as from one server; servers that cannot be reached are tried again
        in the background, as long as one can."""
        names = [s.name for s in self._servers]
        results = await asyncio.gather(
            *(self._connect(s) for s in self._servers), return_exceptions=True
        )
        refused = next((r for r in results if isinstance(r, HandshakeRefused)), None)
        opened = {
            n: r for n, r in zip(names, results, strict=True) if not isinstance(r, BaseException)
        }
        unexpected = next(
            (r for r in results if isinstance(r, BaseException) and not isinstance(r, ProxyError)),
            None,
        )
        if refused is not None or not opened or unexpected is not None:
            for each in opened.values():
                each.close()
            if refused is not None:
                raise refused
            raise unexpected or next(r for r in results if isinstance(r, BaseException))
        self.subprotocol = next(iter(opened.values())).subprotocol
        self._spawn(self._carry_out_in_order(), "rest-over-ws")
        for server in self._servers:
            if server.name in opened:
                self._adopt(server, opened[server.name])
            else:
                log.warning("events socket: Asterisk %s unreachable; retrying", server.name)
                self._spawn(self._reconnect(server), f"reconnect-{server.name}")

    async def _connect(self, server: Upstream) -> UpstreamSocket:
        """The client's socket to one server, as with one server (sessions.one_server)."""
        open_upstream = one_server(server.ws, self._timeout)
        return await open_upstream(self._query, self._headers, self._subprotocols)

    def _adopt(self, server: Upstream, socket: UpstreamSocket) -> None:
        self._sockets[server.name] = socket
        if self._on_text is not None:  # else at `start` (each socket keeps what came)
            self._start(server.name, socket)
        if self._paused:
            socket.pause_reading()
        self._spawn(self._watch(server, socket), f"watch-{server.name}")

    async def _watch(self, server: Upstream, socket: UpstreamSocket) -> None:
        await socket.wait_closed()
        if self.closed.done():
            return
        self._sockets.pop(server.name, None)
        log.warning(
            "events socket: Asterisk %s went away (%s); reconnecting",
            server.name,
            socket.close_code,
        )
        await self._reconnect(server)

    async def _reconnect(self, server: Upstream) -> None:
        for delay in backoff(0.5, cap=5.0):
            await asyncio.sleep(delay)
            try:
                socket = await self._connect(server)
            except (ProxyError, HandshakeRefused) as exc:
                log.debug("events socket: Asterisk %s still unavailable: %s", server.name, exc)
                continue
            if self.closed.done():
                socket.close()
                return
            log.info("events socket: Asterisk %s is back; applications registered", server.name)
            self._adopt(server, socket)
            return

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def serves(self, server: str) -> bool:
        """Whether the client's applications are registered on `server` now."""
        return server in self._sockets

    # -- frames from the servers --------------------------------------------------------------

    def start(self, on_text: Callable[[str], None]) -> None:
        self._on_text = on_text
        for name, socket in self._sockets.items():
            self._start(name, socket)

    def _start(self, server: str, socket: UpstreamSocket) -> None:
        socket.start(lambda text: self._frame(server, text))

    def _frame(self, server: str, text: str) -> None:
        event = orjson.loads(text)
        if not isinstance(event, dict):
            return
        self._rest.learn(event, server)
        if event.get("type") == "ApplicationReplaced":
            app = str(event.get("application", ""))
            if app in self._replaced:
                return  # once for the fleet, not once per server
            self._replaced.add(app)
        self._deliver(text)

    def _deliver(self, text: str) -> None:
        if self._on_text is not None:  # always, once the session runs
            self._on_text(text)

    # -- frames from the client ---------------------------------------------------------------

    def send(self, text: str) -> None:
        """A client frame: a request is carried out where its route says; anything else
        Asterisk reads and ignores (or refuses) the same on every server: the first."""
        try:
            request = parse_rest_request(text)
        except BadRequest:
            request = None
        if request is None:
            if self._sockets:
                next(iter(self._sockets.values())).send(text)
            return
        try:
            self._requests.put_nowait(request)
        except asyncio.QueueFull:
            self._respond(request, 503, {"message": "too many requests waiting on this socket"})

    async def _carry_out_in_order(self) -> None:
        """One request at a time, in the order they came, as Asterisk runs a socket's."""
        while True:
            request = await self._requests.get()
            self._respond(request, *await self._answer(request))

    def _respond(self, request: RestRequest, status: int, payload: Any) -> None:
        self._deliver(
            rest_response(
                request,
                status,
                payload,
                timestamp=asterisk_timestamp(),
                asterisk_id=None,
                application=self._application,
            )
        )

    async def _answer(self, request: RestRequest) -> tuple[int, Any]:
        if request.body_error is not None:
            return 400, {"message": request.body_error}
        params = list(request.params)
        if self._api_key is not None:
            params.append(("api_key", self._api_key))
        target = "/" + "/".join(
            quote(s, safe="", errors="surrogateescape") for s in request.segments
        )
        if params:
            target += "?" + urlencode(params, errors="surrogateescape")
        authorization = self._headers.get("authorization")
        headers = [(b"authorization", authorization.encode("latin-1"))] if authorization else []
        body = b""
        if request.json_body is not None:
            body = orjson.dumps(request.json_body)
            headers.append((b"content-type", b"application/json"))
        method, encoded = request.method, target.encode("utf-8", "surrogateescape")
        try:
            answer = await self._rest.send(method, encoded, headers, body)
            content = await answer.read()
        except ProxyError as exc:
            return exc.status, {"message": exc.message}
        try:
            return answer.status_code, orjson.loads(content) if content else None
        except orjson.JSONDecodeError:
            return answer.status_code, None

    # -- flow control and closing -------------------------------------------------------------

    def pause_reading(self) -> None:
        self._paused = True
        for socket in self._sockets.values():
            socket.pause_reading()

    def resume_reading(self) -> None:
        self._paused = False
        for socket in self._sockets.values():
            socket.resume_reading()

    @property
    def close_code(self) -> int | None:
        return 1000 if self.closed.done() else None

    def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        for task in list(self._tasks):
            task.cancel()
        for socket in self._sockets.values():
            socket.close(code, reason)

    async def wait_closed(self, timeout: float | None = None) -> None:
        """Until `close` (no server's going away closes the client's socket); with a
        timeout, until every server's socket has closed too."""
        if timeout is None:
            await asyncio.shield(self.closed)
            return
        closing = [s.wait_closed(timeout) for s in self._sockets.values()]
        with contextlib.suppress(Exception):
            await asyncio.gather(*closing)


def fleet_sockets(servers: Sequence[Upstream], timeout: float, rest: FleetRest) -> OpenUpstream:
    """Each client events socket over every server (sessions.py's OpenUpstream)."""

    async def open_upstream(
        query: str, headers: Mapping[str, str], subprotocols: list[str] | None
    ) -> UpstreamSocket:
        socket = FleetSocket(servers, query, headers, subprotocols, timeout, rest)
        await socket.open()
        return socket

    return open_upstream
