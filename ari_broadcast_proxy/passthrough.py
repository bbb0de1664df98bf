"""REST passthrough: every /ari/ request goes to Asterisk and its answer comes back unchanged,
except what a feature answers or adjusts through its `RequestHook` (the broadcast feature's
gate: claims, refusals, listings) and the api-docs (basePath, the claim operation).

A raw ASGI application: every ARI call of every application passes here, so it works on the
scope's bytes and writes the answer itself, with no request or response objects in between.
Requests are read as Asterisk reads them (`AriCall`), so that what a hook decides on is what
Asterisk executes.
"""

from __future__ import annotations

import logging
from typing import Protocol

from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from .apidocs import ApiDocsError, base_url_for, rewrite_document
from .ari_request import AriAnswer, AriCall, path_segments
from .auth import Credentials
from .errors import BadRequest, ProxyError, UpstreamError
from .http_exchange import (
    BUFFER_LIMIT,
    JSON_TYPE,
    REQUEST_ONLY,
    Answer,
    ClientGone,
    Request,
    content_length,
    end_to_end_headers,
    error,
    no_body,
    own_answer,
    relay,
)
from .upstream.rest import AriRest, HttpResponse

__all__ = ["Passthrough", "RequestHook"]

log = logging.getLogger(__name__)

# Asterisk refuses request lines over 4096 bytes with an HTML 400 ("Request line too long");
# the proxy answers longer request targets itself, with a JSON 414.
MAX_TARGET = 4000
# Answers the proxy may have to rewrite (api-docs, channel snapshots while broadcasts run)
# are read whole however large, up to this (a channel list of some 50 000 channels).
REWRITE_LIMIT = 64 * 1024 * 1024


class RequestHook(Protocol):
    """What a feature answers itself, or adjusts, of the requests passing through."""

    async def own_answer(
        self, call: AriCall, credentials: Credentials, *, rewritable: bool
    ) -> AriAnswer | None:
        """The feature's answer, or None to forward the request."""

    def target(self, call: AriCall) -> bytes | None:
        """The request target (below /ari) to send instead of the client's, or None."""

    def follows(self, call: AriCall) -> bool:
        """Whether `answered` must see Asterisk's answer."""

    def rewrites(self, call: AriCall) -> bool:
        """Whether `answered` may change the answer's body (so it is read whole)."""

    def answered(
        self, call: AriCall, status: int, content: bytes, *, snapshots: bool
    ) -> tuple[int, bytes]:
        """Asterisk's answer as the client gets it."""


class Passthrough:
    def __init__(self, rest: AriRest, hook: RequestHook, fallback_host: str) -> None:
        self._rest = rest
        self._hook = hook
        self._fallback_host = fallback_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry for HTTP requests under /ari/."""
        try:
            answer = await self._answer(scope, receive)
        except ClientGone:
            return
        try:
            await answer.send(send, receive)
        except RuntimeError as exc:
            # uvicorn on uvloop runs a pipelined request even when the client has closed
            # the connection, and writing its answer then raises instead of doing nothing.
            if "closed" not in str(exc):
                raise
            log.debug("%s %s: the client left before its answer", scope["method"], scope["path"])

    async def handle_upgrade(self, websocket: WebSocket) -> None:
        """A WebSocket upgrade on a REST path: Asterisk ignores the upgrade and answers the
        GET, so the proxy does the same (instead of refusing the handshake)."""
        scope = {**websocket.scope, "type": "http", "method": "GET"}
        answer = await self._answer(scope, no_body)
        try:
            response = await answer.buffered()
        except ProxyError as exc:
            log.warning("GET %s with an upgrade: %s", scope["path"], exc.message)
            response = exc.response()
        await websocket.send_denial_response(response)

    async def _answer(self, scope: Scope, receive: Receive) -> Answer:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        method: str = scope["method"]
        path = raw_path[len(b"/ari/") :].decode("latin-1")  # for log lines until decoded
        try:
            if len(raw_path) + len(scope.get("query_string", b"")) > MAX_TARGET:
                raise ProxyError("Request-URI too long", 414)
            if not raw_path.startswith(b"/ari/") or b"//" in raw_path:
                raise BadRequest("Invalid path")
            segments = path_segments(raw_path[len(b"/ari/") :])
            if any(s in (".", "..") or "/" in s for s in segments):
                raise BadRequest("Invalid path")  # never a walk out of a resource
            path = "/".join(segments)
            request = Request(scope, receive, raw_path)
            body = await request.body()
            call = request.call(segments, body)
            own = await self._hook.own_answer(call, request.credentials(), rewritable=True)
            if own is not None:
                return own_answer(own)
            return await self._forward(request, call, body)
        except ProxyError as exc:
            log.warning("%s /ari/%s -> %d %s", method, path, exc.status, exc.message)
            return error(exc)

    # -- plain forwarding ---------------------------------------------------------------------

    async def _send(
        self, request: Request, body: bytes, stream: bool = False, target: bytes | None = None
    ) -> HttpResponse:
        return await self._rest.send(
            request.method,
            request.target() if target is None else target,
            end_to_end_headers(request.headers, *REQUEST_ONLY),
            body,
            stream=stream,
        )

    async def _forward(self, request: Request, call: AriCall, body: bytes) -> Answer:
        path = call.path
        upstream = await self._send(request, body, stream=True, target=self._hook.target(call))
        length = upstream.header("content-length")
        declared = content_length(length)
        rewrite = path.startswith("api-docs/") or self._hook.rewrites(call)
        if declared is None or declared > (REWRITE_LIMIT if rewrite else BUFFER_LIMIT):
            if rewrite and upstream.status_code == 200:
                log.warning(
                    "%s /ari/%s: answer too large to rewrite (%s bytes), relayed as it came",
                    request.method,
                    path,
                    length or "unknown",
                )
            headers = end_to_end_headers(upstream.raw_headers)
            return Answer(upstream.status_code, headers, stream=upstream)
        status, content = upstream.status_code, await upstream.read()
        if status >= 500:
            log.warning("%s /ari/%s -> %d from Asterisk", request.method, path, status)
        if path.startswith("api-docs/") and status == 200:
            base = base_url_for(request.scheme, request.header(b"host"), self._fallback_host)
            try:
                content = rewrite_document(path[len("api-docs/") :], content, base)
            except ApiDocsError as exc:
                raise UpstreamError(f"Asterisk sent an unusable api-docs document: {exc}") from exc
        elif rewrite or self._hook.follows(call):
            answered = self._hook.answered(call, status, content, snapshots=True)
            if answered[0] != status:  # the hook answers instead (a claim's 501)
                status, content = answered
                return Answer(status, JSON_TYPE if content else [], content)
            content = answered[1]
        return relay(upstream, content, request.method)
