"""The composition root: builds every component once and wires the ASGI application."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from .auth import WriteAccess
from .broadcast.claims import ClaimService
from .broadcast.controller import BroadcastController
from .broadcast.presentation import Presenter
from .broadcast.session_hooks import BroadcastHooks
from .config import Config
from .passthrough import Passthrough
from .registry import AppRegistry
from .sessions import SessionManager
from .upstream.rest import UpstreamRest

__all__ = ["Proxy", "create_app"]

log = logging.getLogger(__name__)

ALL_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


class Proxy:
    """Every long-lived component of one proxy instance."""

    def __init__(self, config: Config, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.rest = UpstreamRest(config, transport)
        self.registry = AppRegistry()
        self.presenter = Presenter(config.broadcast_app, config.subroutine_context)
        self.controller = BroadcastController(config, self.rest, self.registry, self.presenter)
        self.access = WriteAccess(self.rest)
        self.claims = ClaimService(self.controller, self.access)
        self.sessions = SessionManager(
            config.upstream_ws,
            config.upstream_timeout,
            config.session_queue,
            self.registry,
            BroadcastHooks(self.controller, self.claims, self.registry),
            config.broadcast_app,
        )
        self.passthrough = Passthrough(
            self.rest,
            self.controller,
            self.claims,
            self.presenter,
            self.access,
            f"{config.listen_host}:{config.listen_port}",
        )

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self.controller.start()
        try:
            yield
        finally:
            # Ordered shutdown: calls on offer go back to the dialplan first, then the
            # client sockets close (1001), then the upstream pool.
            await self.controller.stop()
            self.sessions.close_all()
            await self.sessions.wait_closed(3.0)
            await self.rest.aclose()
            log.info("proxy stopped")

    async def healthz(self, _request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(self, _request: Request) -> Response:
        ready = self.controller.ready
        return JSONResponse(
            {
                "ready": ready,
                "broadcast_app": self.config.broadcast_app,
                "connected_applications": len(self.registry),
                "broadcasts_in_flight": len(self.controller.core),
            },
            status_code=200 if ready else 503,
        )


def create_app(config: Config, transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    proxy = Proxy(config, transport)
    app = Starlette(
        routes=[
            Route("/healthz", proxy.healthz),
            Route("/readyz", proxy.readyz),
            WebSocketRoute("/ari/events", proxy.sessions.endpoint),
            Route("/ari/{path:path}", proxy.passthrough.handle, methods=ALL_METHODS),
        ],
        lifespan=proxy.lifespan,
    )
    app.state.proxy = proxy
    return app
