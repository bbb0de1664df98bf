"""The composition root: builds every component once and wires the ASGI application."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from .auth import WriteAccess
from .broadcast.claims import ClaimService
from .broadcast.clock import LoopClock
from .broadcast.controller import BroadcastController
from .broadcast.gate import BroadcastGate
from .broadcast.handover import ChannelGateway
from .broadcast.ownership import AppGuard
from .broadcast.presentation import Presenter
from .broadcast.request_rules import RequestRules
from .broadcast.session_hooks import BroadcastHooks
from .config import Config
from .direct_frames import DirectFrames
from .fleet.events import FleetSocket, fleet_sockets
from .fleet.locator import Locator
from .fleet.rest import FleetRest
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .passthrough import Passthrough
from .registry import AppRegistry
from .sessions import SessionManager, one_server
from .subscribe_all import DeviceStatesRelease
from .upstream.rest import AriRest, UpstreamRest

if TYPE_CHECKING:
    from .cluster.replica import Replica

__all__ = ["Proxy", "ProxyApp", "create_app"]

log = logging.getLogger(__name__)


class Proxy:
    """Every long-lived component of one proxy instance."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        servers = [UpstreamRest(u, config, self.metrics) for u in config.upstreams]
        self.fleet: FleetRest | None = None
        self.rest: AriRest = servers[0]
        open_upstream = one_server(config.upstream.ws, config.upstream_timeout)
        if len(servers) > 1:
            self.rest = self.fleet = FleetRest(servers, Locator())
            open_upstream = fleet_sockets(config.upstreams, config.upstream_timeout, self.fleet)
        self.registry = AppRegistry()
        self.presenter = Presenter(config.broadcast_app, config.subroutine_context)
        self.controller = BroadcastController(
            config,
            ChannelGateway(self.rest, config.broadcast_app, config.subroutine_context),
            [AppGuard(server, config.broadcast_app) for server in servers],
            self.registry,
            self.presenter,
            self.metrics,
        )
        if self.fleet is not None:
            self.controller.on_server_event = self.fleet.learn
            self.controller.reaches = self._reaches
        self.replica: Replica | None = None
        if config.cluster_url is not None:
            from .cluster.replica import Replica
            from .cluster.store import SharedStore

            store = SharedStore(config.cluster_url, config.cluster_scope, config.replica_id)
            self.replica = Replica(self.controller, store, self.registry, self.metrics, LoopClock())
            self.metrics.gauge(
                "ari_proxy_cluster_operations",
                "Round trips to Redis (claims, offers, verdicts, leases, announcements)",
                lambda: store.operations,
            )
        else:
            self.metrics.leader.set(1)
        self.access = WriteAccess(self.rest)
        self.rules = RequestRules(config.broadcast_app, self.controller.is_locked)
        self.claims = ClaimService(self.controller, self.access, self.metrics)
        self.gate = BroadcastGate(self.controller, self.claims, self.rules, self.presenter)
        self.sessions = SessionManager(
            open_upstream,
            config.session_queue,
            self.registry,
            BroadcastHooks(self.controller, self.gate, self.registry),
            config.broadcast_app,
            on_overflow=self.metrics.slow_consumers.inc,
            before_close=DeviceStatesRelease(self.rest, self.registry),
        )
        self.passthrough = Passthrough(
            self.rest, self.gate, f"{config.listen_host}:{config.listen_port}"
        )
        self._drained = False
        gauge = self.metrics.gauge
        gauge(
            "ari_proxy_connected_applications",
            "Applications connected through the proxy",
            lambda: len(self.registry),
        )
        gauge("ari_proxy_client_sockets", "Client events sockets open", lambda: len(self.sessions))
        gauge(
            "ari_proxy_broadcasts_in_flight",
            "Calls on offer or being handed over",
            lambda: len(self.controller.core),
        )
        gauge(
            "ari_proxy_upstream_connected",
            "1 while the broadcast application is registered (on one server at least)",
            lambda: float(self.controller.connected),
        )
        self.metrics.gauges(
            "ari_proxy_upstream_server_connected",
            "1 while the broadcast application is registered on this Asterisk server",
            "server",
            {
                s.server: functools.partial(lambda s: float(s.ready), s)
                for s in self.controller.supervisors
            },
        )

    def _reaches(self, app: str, server: str) -> bool:
        """Several servers: whether `app`'s socket through the proxy is registered on
        `server` (a server that just came back is reconnected socket by socket)."""
        sink = self.registry.sink_for(app)
        upstream = getattr(sink, "upstream", None)
        return not isinstance(upstream, FleetSocket) or upstream.serves(server)

    async def drain(self, timeout: float = 5.0) -> None:
        """Graceful shutdown, in order: calls on offer go back to the dialplan (TIMEOUT),
        then client sockets are closed with 1001 so applications reconnect."""
        if self._drained:
            return
        self._drained = True
        await self.controller.stop(timeout)
        self.sessions.close_all()
        # A session's queue flush (1 s) and Asterisk's close (2 s), with some room.
        await self.sessions.wait_closed(4.0)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self.controller.start()
        if self.fleet is not None:
            await self.fleet.check_ids()
        try:
            yield
        finally:
            await self.drain()
            await self.rest.aclose()
            log.info("proxy stopped")

    async def healthz(self, _request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(self, _request: Request) -> Response:
        ready = self.controller.ready and not self._drained
        body = {
            "ready": ready,
            "broadcast_app": self.config.broadcast_app,
            "servers": {s.server: s.ready for s in self.controller.supervisors},
            "connected_applications": len(self.registry),
            "broadcasts_in_flight": len(self.controller.core),
        }
        if self.replica is not None:
            body["replica"] = self.replica.name
            body["leader"] = self.replica.leading
            # What offers reach: the applications of every live replica, as this one knows.
            body["cluster_applications"] = len(self.replica.audience.apps())
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics_endpoint(self, _request: Request) -> Response:
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


class ProxyApp:
    """The ASGI application. The hot paths go straight to their handler, with no routing or
    middleware in between (every frame of an events socket would pass the middleware's
    wrappers): ARI REST calls to the passthrough, /ari/events to the sessions. Starlette
    serves the rest (health, metrics, upgrades on REST paths, lifespan)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self._passthrough = proxy.passthrough
        self._sessions = proxy.sessions
        self._routes = Starlette(
            routes=[
                Route("/healthz", proxy.healthz),
                Route("/readyz", proxy.readyz),
                Route("/metrics", proxy.metrics_endpoint),
                WebSocketRoute("/ari/{path:path}", proxy.passthrough.handle_upgrade),
            ],
            lifespan=proxy.lifespan,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/ari/"):
            await self._passthrough(scope, receive, send)
        elif scope["type"] == "websocket" and scope["path"] == "/ari/events":
            await self._sessions.endpoint(WebSocket(scope, receive, send), DirectFrames.of(send))
        else:
            await self._routes(scope, receive, send)


def create_app(config: Config) -> ProxyApp:
    return ProxyApp(Proxy(config))
