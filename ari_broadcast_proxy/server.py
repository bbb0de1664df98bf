"""Run the proxy: bind, serve with uvicorn, shut down in order on SIGINT/SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from .app import Proxy, create_app
from .config import Config
from .errors import ConfigError
from .http_protocol import protocol_answering
from .logs import LogWriter, configure_logging

__all__ = ["bind", "run"]

log = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket up front so 'port in use' is a one-line config error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError("--listen", f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class ProxyServer(uvicorn.Server):
    """uvicorn's server with the proxy's shutdown order: stop accepting connections, return
    calls on offer to the dialplan, close client sockets with 1001 (uvicorn's own would be
    1012), then let uvicorn finish HTTP requests and run the lifespan shutdown."""

    def __init__(self, config: uvicorn.Config, proxy: Proxy, logs: LogWriter) -> None:
        super().__init__(config)
        self._proxy = proxy
        self._logs = logs

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """As uvicorn's, which re-raises a caught SIGTERM/SIGINT once the server is done
        (ending the process there): the last log lines are written before that."""
        with super().capture_signals():
            try:
                yield
            finally:
                self._logs.stop()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        await self._proxy.drain()
        await super().shutdown(sockets)


def run(config: Config) -> None:
    logs = configure_logging(config.log_level, config.log_json)
    try:
        _serve(config, logs)
    finally:
        logs.stop()


def _serve(config: Config, logs: LogWriter) -> None:
    sock = bind(config.listen_host, config.listen_port)
    app = create_app(config)
    server = ProxyServer(
        uvicorn.Config(
            app,
            log_config=None,
            lifespan="on",
            # httptools, with losing claims answered as they are read (http_protocol).
            http=protocol_answering(app.proxy.claims),
            # wsproto: uvicorn's websockets-sansio protocol never answers (nor closes) an
            # upgrade request whose request line exceeds 8 KiB; wsproto relays as fast here.
            ws="wsproto",
            ws_max_size=1024 * 1024,
            # Asterisk's ARI WebSocket never negotiates permessage-deflate; neither does the
            # proxy (it would cost zlib on every event frame, on both ends).
            ws_per_message_deflate=False,
            ws_ping_interval=None,
            proxy_headers=False,
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=10,
            # ARI clients keep pooled connections open; 5 s (uvicorn's default) makes them race
            # the server closing an idle connection (a reset instead of an answer).
            timeout_keep_alive=75,
            access_log=False,
        ),
        app.proxy,
        logs,
    )
    log.info(
        "ari-broadcast-proxy listening on http://%s:%d/ari, upstream %s, broadcast application %r",
        config.listen_host,
        config.listen_port,
        ", ".join(u.name for u in config.upstreams),
        config.broadcast_app,
    )
    server.run(sockets=[sock])
