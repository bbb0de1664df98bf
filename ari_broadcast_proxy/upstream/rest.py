"""The one pooled HTTP client to Asterisk's ARI, with timeouts and error mapping.

Both the REST passthrough (clients' own credentials, streamed) and the proxy's own control
calls (move/continue/variable with the proxy's credentials) share this pool, sized below
Asterisk's http.conf `sessionlimit` so the proxy never trips it. The pool keeps no cookies
(one client serves every application) and follows no redirects.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Mapping
from typing import Protocol
from urllib.parse import quote, urlencode, urlsplit

from ..config import Config, Upstream
from ..errors import UpstreamError, UpstreamTimeout
from ..metrics import Metrics
from .http import HttpPool, HttpResponse

__all__ = ["JSON_CONTENT", "AriRest", "HttpResponse", "UpstreamRest", "call_target"]

# Asterisk closes idle HTTP connections after http.conf `session_keep_alive` (15 s by
# default): the pool forgets them before that, so a request never races the close.
KEEPALIVE_EXPIRY = 10.0
JSON_CONTENT = (b"content-type", b"application/json")


class AriRest(Protocol):
    """Asterisk's ARI as the proxy uses it: one server (UpstreamRest) or several behind one
    (fleet/rest.py's FleetRest)."""

    async def send(
        self,
        method: str,
        target: bytes,
        headers: Iterable[tuple[bytes, bytes]] = (),
        body: bytes = b"",
        *,
        stream: bool = False,
    ) -> HttpResponse: ...

    async def call(
        self,
        method: str,
        path: str,
        params: Mapping[str, str | int] | None = None,
        *,
        as_proxy: bool = True,
        authorization: str | None = None,
        json: bytes = b"",
    ) -> HttpResponse: ...

    async def aclose(self) -> None: ...


class UpstreamRest:
    """One Asterisk server's ARI."""

    def __init__(self, upstream: Upstream, config: Config, metrics: Metrics) -> None:
        self.upstream = upstream
        self._metrics = metrics
        url = urlsplit(upstream.ari)
        secure = url.scheme == "https"
        self._pool = HttpPool(
            url.hostname or "127.0.0.1",
            url.port or (443 if secure else 80),
            max_connections=config.upstream_connections,
            timeout=config.upstream_timeout,
            connect_timeout=min(5.0, config.upstream_timeout),
            keepalive_expiry=KEEPALIVE_EXPIRY,
            tls=ssl.create_default_context() if secure else None,
        )
        self.ari_path = url.path.encode("latin-1")  # b"/ari", or under http.conf's prefix
        self._authorization = upstream.authorization

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def send(
        self,
        method: str,
        target: bytes,
        headers: Iterable[tuple[bytes, bytes]] = (),
        body: bytes = b"",
        *,
        stream: bool = False,
    ) -> HttpResponse:
        """Send a request to `ari_path + target`; failures are counted and raised as
        UpstreamError (502) / UpstreamTimeout (504)."""
        try:
            return await self._pool.request(
                method.encode("latin-1"), self.ari_path + target, headers, body, stream=stream
            )
        except UpstreamError as exc:
            kind = "timeout" if isinstance(exc, UpstreamTimeout) else "unreachable"
            self._metrics.upstream_errors.labels(kind).inc()
            raise

    async def call(
        self,
        method: str,
        path: str,
        params: Mapping[str, str | int] | None = None,
        *,
        as_proxy: bool = True,
        authorization: str | None = None,
        json: bytes = b"",
    ) -> HttpResponse:
        """One small ARI call, body read. `path` has no /ari/. With the proxy's credentials,
        or (`as_proxy=False`) with only the client's `authorization`, if any; `json`, an
        encoded JSON document, goes as the body."""
        if as_proxy:
            authorization = self._authorization
        headers = [(b"authorization", authorization.encode("latin-1"))] if authorization else []
        if json:
            headers.append(JSON_CONTENT)
        return await self.send(method, call_target(path, params), headers, json)


def call_target(path: str, params: Mapping[str, str | int] | None) -> bytes:
    """The request target (below /ari) of a `call`: `path` quoted, `params` as a query."""
    target = (
        "/"
        + quote(path.lstrip("/"), safe="/", errors="surrogateescape")
        + ("?" + urlencode(params, errors="surrogateescape") if params else "")
    )
    return target.encode("latin-1")
