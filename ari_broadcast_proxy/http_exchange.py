"""One HTTP exchange of the pass-through: the client's request, read within Asterisk's limits
and as Asterisk reads it, and the answer written back, whole or streamed in pieces."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from .ari_request import AriAnswer, AriCall, parse_query
from .auth import Credentials
from .errors import ProxyError
from .upstream.rest import HttpResponse

__all__ = [
    "BUFFER_LIMIT",
    "JSON_TYPE",
    "REQUEST_ONLY",
    "Answer",
    "ClientGone",
    "Headers",
    "Request",
    "content_length",
    "end_to_end_headers",
    "error",
    "no_body",
    "own_answer",
    "relay",
]

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
REQUEST_ONLY = (b"expect",)
MAX_BODY = 1024 * 1024  # ARI request bodies are small JSON/form documents
# Refused bodies up to this size, arriving within this time, are read so the 413 arrives.
DRAIN_LIMIT = 8 * 1024 * 1024
DRAIN_SECONDS = 2.0
# Asterisk answers a JSON or form body over 40960 bytes with 413 before reading it and closes
# the connection, which races with the proxy still writing that body (a 502 about half the
# time): the proxy gives Asterisk's answer itself instead of forwarding such a body.
ASTERISK_MAX_PARSED_BODY = 40960
_PARSED_BODY_TYPES = frozenset({"application/json", "application/x-www-form-urlencoded"})
STREAM_PIECE = 16 * 1024  # streamed answers go to the client in pieces of at most this
BUFFER_LIMIT = 256 * 1024  # larger answers (recordings, sounds) are streamed
JSON_TYPE = [(b"content-type", b"application/json")]


class ClientGone(Exception):
    """The client disconnected before its request body arrived: nobody to answer."""


@dataclass
class Answer:
    """What goes back to the client: a whole body, or an upstream answer still streaming."""

    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    stream: HttpResponse | None = None
    length: int | None = None  # Content-Length when not the body's (an answer to HEAD)

    @classmethod
    def json(cls, status: int, document: object, headers: Headers | None = None) -> Answer:
        return cls(status, [*JSON_TYPE, *(headers or [])], orjson.dumps(document))

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


def error(exc: ProxyError) -> Answer:
    return Answer.json(exc.status, {"message": exc.message})


class Request:
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
        """The query's parameters as Asterisk reads them, parsed once per request."""
        return parse_query(self._query)

    def content_type(self) -> str:
        return (self.header(b"content-type") or "").split(";")[0].strip().lower()

    def credentials(self) -> Credentials:
        api_key = dict(self._params).get("api_key")  # the last one, as a query mapping has it
        return Credentials(self.header(b"authorization"), api_key)

    def call(self, segments: tuple[str, ...], body: bytes) -> AriCall:
        """The request as Asterisk reads it (`AriCall.read`)."""
        return AriCall.read(self.method, segments, self._params, body, self.content_type())

    async def body(self) -> bytes:
        """The whole body, within Asterisk's limits (else 413, once the client has sent it)."""
        limit = ASTERISK_MAX_PARSED_BODY if self.content_type() in _PARSED_BODY_TYPES else MAX_BODY
        length = self.header(b"content-length")
        declared = content_length(length)
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
            raise ClientGone
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
        except (TimeoutError, ClientGone):
            return


async def no_body() -> Message:
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


def content_length(value: str | None) -> int | None:
    """A Content-Length value as a number; None when absent or not a plain number."""
    return int(value) if value is not None and value.isdigit() else None


def relay(upstream: HttpResponse, content: bytes, method: str = "GET") -> Answer:
    headers = end_to_end_headers(upstream.raw_headers)
    # A HEAD answer's Content-Length is the GET body's, which is not here (RFC 9110, 8.6).
    length = content_length(upstream.header("content-length")) if method == "HEAD" else None
    return Answer(upstream.status_code, headers, content, length=length)


def own_answer(answer: AriAnswer) -> Answer:
    if answer.body is None:
        return Answer(answer.status)
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers.items()]
    return Answer.json(answer.status, answer.body, extra)
