"""REST passthrough: every /ari/ request goes to Asterisk and its answer comes back unchanged,
except what a feature answers or adjusts through its `RequestHook` (the broadcast feature's
gate: claims, refusals, listings) and the api-docs (basePath, the claim operation).

A raw ASGI application: every ARI call of every application passes here, so it works on the
scope's bytes and writes the answer itself, with no request or response objects in between.
Requests are read as Asterisk reads them (`AriCall`), so that what a hook decides on is what
Asterisk executes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qsl

import orjson
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from .apidocs import ApiDocsError, base_url_for, rewrite_document
from .ari_request import BODY_PARSE_ERROR, AriAnswer, AriCall, parse_query, path_segments
from .auth import Credentials
from .errors import BadRequest, ProxyError, UpstreamError
from .upstream.rest import HttpResponse, UpstreamRest

__all__ = ["Passthrough", "RequestHook", "end_to_end_headers"]

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)
# The proxy's own server answered any `Expect: 100-continue`; Asterisk must not answer again.
_REQUEST_ONLY = (b"expect",)
MAX_BODY = 1024 * 1024  # ARI request bodies are small JSON/form documents
# Asterisk refuses request lines over 4096 bytes with an HTML 400 ("Request line too long");
# the proxy answers longer request targets itself, with a JSON 414.
MAX_TARGET = 4000
# Refused bodies up to this size, arriving within this time, are read so the 413 arrives.
DRAIN_LIMIT = 8 * 1024 * 1024
DRAIN_SECONDS = 2.0
# Asterisk answers a JSON or form body over 40960 bytes with 413 before reading it and closes
# the connection, which races with the proxy still writing that body (a 502 about half the
# time): the proxy gives Asterisk's answer itself instead of forwarding such a body.
ASTERISK_MAX_PARSED_BODY = 40960
_PARSED_BODY_TYPES = frozenset({"application/json", "application/x-www-form-urlencoded"})
BUFFER_LIMIT = 256 * 1024  # larger answers (recordings, sounds) are streamed
STREAM_PIECE = 16 * 1024  # streamed answers go to the client in pieces of at most this
# Answers the proxy may have to rewrite (api-docs, channel snapshots while broadcasts run)
# are read whole however large, up to this (a channel list of some 50 000 channels).
REWRITE_LIMIT = 64 * 1024 * 1024
_JSON = [(b"content-type", b"application/json")]


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


class _ClientGone(Exception):
    """The client disconnected before its request body arrived: nobody to answer."""


@dataclass
class _Answer:
    """What goes back to the client: a whole body, or an upstream answer still streaming."""

    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    stream: HttpResponse | None = None
    length: int | None = None  # Content-Length when not the body's (an answer to HEAD)

    @classmethod
    def json(cls, status: int, document: object, headers: Headers | None = None) -> _Answer:
        return cls(status, [*_JSON, *(headers or [])], orjson.dumps(document))

    async def send(self, send: Send, receive: Receive) -> None:
        if self.stream is None:
            headers = self.headers
            if self.status >= 200 and self.status not in (204, 304):  # those carry no body
                length = len(self.body) if self.length is None else self.length
                headers = [*headers, (b"content-length", str(length).encode())]
            await send({"type": "http.response.start", "status": self.status, "headers": headers})
            await send({"type": "http.response.body", "body": self.body})
            return
        # The request was read: the next message is the client going away, if it does (the
        # server's send then returns silently, and Asterisk's answer would be read for nobody).
        # A client that stays but stops reading holds a connection to Asterisk: each piece
        # of STREAM_PIECE bytes gets as long as Asterisk would (the upstream timeout) to be
        # taken, so a client reading slower than about 5 KB/s (the server's write buffer
        # drains from 64 to 16 KiB before its send returns) loses the answer.
        gone = asyncio.ensure_future(receive())
        stall = self.stream.timeout
        try:
            start = {"type": "http.response.start", "status": self.status, "headers": self.headers}
            await send(start)
            async for chunk in self.stream.iter_body():
                for at in range(0, len(chunk), STREAM_PIECE):
                    if gone.done():
                        return  # the connection to Asterisk is dropped with the unread rest
                    piece = chunk[at : at + STREAM_PIECE]
                    async with asyncio.timeout(stall):
                        await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except TimeoutError:
            log.warning("client stopped reading a streamed answer for %g s: dropped", stall)
        finally:
            gone.cancel()
            self.stream.release()

    async def buffered(self) -> Response:
        """As a Starlette response (for refusing a WebSocket upgrade with it); an answer
        that would have been streamed is refused (UpstreamError) past BUFFER_LIMIT."""
        if self.stream is not None:
            self.body = await self.stream.read(limit=BUFFER_LIMIT)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in self.headers}
        return Response(self.body, self.status, headers)


def _error(exc: ProxyError) -> _Answer:
    return _Answer.json(exc.status, {"message": exc.message})


class Passthrough:
    def __init__(self, rest: UpstreamRest, hook: RequestHook, fallback_host: str) -> None:
        self._rest = rest
        self._hook = hook
        self._fallback_host = fallback_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry for HTTP requests under /ari/."""
        try:
            answer = await self._answer(scope, receive)
        except _ClientGone:
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
        answer = await self._answer(scope, _no_body)
        try:
            response = await answer.buffered()
        except ProxyError as exc:
            log.warning("GET %s with an upgrade: %s", scope["path"], exc.message)
            response = exc.response()
        await websocket.send_denial_response(response)

    async def _answer(self, scope: Scope, receive: Receive) -> _Answer:
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
            request = _Request(scope, receive, raw_path)
            body = await request.body()
            call = request.call(segments, body)
            own = await self._hook.own_answer(call, request.credentials(), rewritable=True)
            if own is not None:
                return _own_answer(own)
            return await self._forward(request, call, body)
        except ProxyError as exc:
            log.warning("%s /ari/%s -> %d %s", method, path, exc.status, exc.message)
            return _error(exc)

    # -- plain forwarding ---------------------------------------------------------------------

    async def _send(
        self, request: _Request, body: bytes, stream: bool = False, target: bytes | None = None
    ) -> HttpResponse:
        return await self._rest.send(
            request.method,
            request.target() if target is None else target,
            end_to_end_headers(request.headers, *_REQUEST_ONLY),
            body,
            stream=stream,
        )

    async def _forward(self, request: _Request, call: AriCall, body: bytes) -> _Answer:
        path = call.path
        upstream = await self._send(request, body, stream=True, target=self._hook.target(call))
        length = upstream.header("content-length")
        declared = _length(length)
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
            return _Answer(upstream.status_code, headers, stream=upstream)
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
                return _Answer(status, _JSON if content else [], content)
            content = answered[1]
        return _relay(upstream, content, request.method)


class _Request:
    """The parts of an ASGI HTTP scope the passthrough reads, taken as they are needed."""

    def __init__(self, scope: Scope, receive: Receive, raw_path: bytes) -> None:
        self._receive = receive
        self._raw_path = raw_path
        self.method: str = scope["method"]
        self.headers: Headers = scope["headers"]
        self.scheme: str = scope.get("scheme", "http")
        self._query: bytes = scope.get("query_string", b"")

    @functools.cached_property
    def _first_values(self) -> dict[bytes, bytes]:
        values: dict[bytes, bytes] = {}
        for key, value in self.headers:  # ASGI names are lowercase
            values.setdefault(key, value)
        return values

    def header(self, name: bytes) -> str | None:
        value = self._first_values.get(name)
        return None if value is None else value.decode("latin-1")

    def target(self) -> bytes:
        """The request target below /ari, byte for byte (Asterisk decodes it itself)."""
        rest = self._raw_path[len(b"/ari") :]
        return rest + b"?" + self._query if self._query else rest

    @functools.cached_property
    def _params(self) -> list[tuple[str, str]]:
        return parse_qsl(self._query.decode("latin-1"), keep_blank_values=True)

    def content_type(self) -> str:
        return (self.header(b"content-type") or "").split(";")[0].strip().lower()

    def credentials(self) -> Credentials:
        api_key = dict(self._params).get("api_key")  # the last one, as a query mapping has it
        return Credentials(self.header(b"authorization"), api_key)

    def call(self, segments: tuple[str, ...], body: bytes) -> AriCall:
        """The request as Asterisk reads it: form parameters before the query's, and the
        JSON body (BadRequest for an escape Asterisk would read its own way)."""
        params = parse_query(self._query)
        json_body, body_error = None, None
        content_type = self.content_type()
        if content_type == "application/x-www-form-urlencoded":
            params = parse_query(body) + params
        elif content_type == "application/json" and body.strip():
            try:
                json_body = orjson.loads(body)
            except orjson.JSONDecodeError:
                body_error = BODY_PARSE_ERROR
        return AriCall(self.method.upper(), segments, tuple(params), json_body, body_error)

    async def body(self) -> bytes:
        """The whole body, within Asterisk's limits (else 413, once the client has sent it)."""
        limit = ASTERISK_MAX_PARSED_BODY if self.content_type() in _PARSED_BODY_TYPES else MAX_BODY
        length = self.header(b"content-length")
        declared = _length(length)
        if length is not None and (declared is None or declared > limit):
            if declared is not None and declared <= DRAIN_LIMIT:
                await self._drain()
            raise ProxyError("Request body too large", 413)
        chunks, size, more = [], 0, True
        while more:
            chunk, more = await self._chunk()
            size += len(chunk)
            if size > limit:
                await self._drain(size)
                raise ProxyError("Request body too large", 413)
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _chunk(self) -> tuple[bytes, bool]:
        """The next piece of the body, and whether more follows."""
        message = await self._receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        return message.get("body", b""), message.get("more_body", False)

    async def _drain(self, size: int = 0) -> None:
        """Read and drop a refused body (up to DRAIN_LIMIT, for DRAIN_SECONDS at most) so the
        client, still sending it, can read the 413 instead of having its connection reset; a
        client that declared a body and stalls gets its 413 when the time is up."""
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                more = True
                while more and size <= DRAIN_LIMIT:
                    chunk, more = await self._chunk()
                    size += len(chunk)
        except (TimeoutError, _ClientGone):
            return


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def end_to_end_headers(headers: Iterable[tuple[bytes, bytes]], *drop: bytes) -> Headers:
    """The headers a proxy passes on, names lowercased: not the hop-by-hop ones, neither the
    fixed set nor those the Connection header names (RFC 9110, 7.6.1), nor `drop`."""
    headers = [(name.lower(), value) for name, value in headers]
    named = set(drop)
    for name, value in headers:
        if name == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    return [(k, v) for k, v in headers if k not in HOP_BY_HOP and k not in named]


def _length(value: str | None) -> int | None:
    """A Content-Length value as a number; None when absent or not a plain number."""
    return int(value) if value is not None and value.isdigit() else None


def _relay(upstream: HttpResponse, content: bytes, method: str = "GET") -> _Answer:
    headers = end_to_end_headers(upstream.raw_headers)
    # A HEAD answer's Content-Length is the GET body's, which is not here (RFC 9110, 8.6).
    length = _length(upstream.header("content-length")) if method == "HEAD" else None
    return _Answer(upstream.status_code, headers, content, length=length)


def _own_answer(answer: AriAnswer) -> _Answer:
    if answer.body is None:
        return _Answer(answer.status)
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers.items()]
    return _Answer.json(answer.status, answer.body, extra)
