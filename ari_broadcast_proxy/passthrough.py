"""REST passthrough: every /ari/ request goes to Asterisk and its answer comes back unchanged,
except the few the broadcast feature must answer or adjust (claims, control calls on channels
under broadcast, api-docs, snapshots of broadcast channels)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, unquote

import orjson
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Message
from starlette.websockets import WebSocket

from .apidocs import ApiDocsError, base_url_for, rewrite_document
from .auth import AccessDenied, Credentials, WriteAccess
from .broadcast.claims import ClaimAnswer, ClaimService, native_404_for_501
from .broadcast.controller import BroadcastController
from .broadcast.presentation import Presenter
from .errors import BadRequest, ProxyError, UpstreamError, json_error
from .upstream.rest import UpstreamRest

__all__ = ["Passthrough", "end_to_end_headers"]

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
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
# Operations Asterisk refuses with 409 "Channel not in Stasis application" (find_control()).
STASIS_CONTROL = frozenset(
    {
        "continue",
        "move",
        "redirect",
        "answer",
        "ring",
        "mute",
        "dtmf",
        "hold",
        "moh",
        "silence",
        "play",
        "record",
        "dial",
    }
)
_CHANNEL_OP = re.compile(r"^channels/([^/]+)/([^/]+)")


class Passthrough:
    def __init__(
        self,
        rest: UpstreamRest,
        controller: BroadcastController,
        claims: ClaimService,
        presenter: Presenter,
        access: WriteAccess,
        fallback_host: str,
    ) -> None:
        self._rest = rest
        self._controller = controller
        self._claims = claims
        self._presenter = presenter
        self._access = access
        self._fallback_host = fallback_host

    async def handle(self, request: Request) -> Response:
        raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
        path = unquote(raw_path.decode("latin-1"))[len("/ari/") :]
        try:
            if len(raw_path) + len(request.scope.get("query_string", b"")) > MAX_TARGET:
                raise ProxyError("Request-URI too long", 414)
            segments = path.split("/")
            if ".." in segments or "." in segments or "//" in path or path.startswith("/"):
                raise BadRequest("Invalid path")
            if path == "events/claim" and request.method == "POST":
                return await self._claim(request)
            if request.method != "GET" and (response := await self._refuse_control(request, path)):
                return response
            return await self._forward(request, path)
        except ProxyError as exc:
            log.warning("%s /ari/%s -> %d %s", request.method, path, exc.status, exc.message)
            return exc.response()

    async def handle_upgrade(self, websocket: WebSocket) -> None:
        """A WebSocket upgrade on a REST path: Asterisk ignores the upgrade and answers the
        GET, so the proxy does the same (instead of refusing the handshake)."""
        scope = {**websocket.scope, "type": "http", "method": "GET"}
        response = await self.handle(Request(scope, _no_body))
        await websocket.send_denial_response(response)

    # -- the broadcast feature's own answers --------------------------------------------------

    async def _claim(self, request: Request) -> Response:
        body = await self._body(request)
        params = list(parse_qsl(request.url.query, keep_blank_values=True))
        json_body = None
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/x-www-form-urlencoded":
            params = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True) + params
        elif content_type == "application/json" and body.strip():
            try:
                json_body = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise BadRequest("Error parsing request body") from None
        credentials = Credentials.from_request(request.headers, request.query_params)
        answer = await self._claims.answer(credentials, params, json_body)
        if answer is None:
            upstream = await self._send(request, "events/claim", body)
            status, content = native_404_for_501(upstream.status_code, upstream.content)
            return Response(content, status, media_type="application/json" if content else None)
        return _claim_response(answer)

    async def _refuse_control(self, request: Request, path: str) -> Response | None:
        match = _CHANNEL_OP.match(path)
        if match is None or match.group(2) not in STASIS_CONTROL:
            return None
        if not self._controller.is_locked(match.group(1)):
            return None
        try:
            await self._access.require(
                Credentials.from_request(request.headers, request.query_params)
            )
        except AccessDenied as denied:
            return _relay(denied.response, denied.response.content)
        log.info("%s /ari/%s -> 409: channel is under broadcast", request.method, path)
        return json_error(409, "Channel not in Stasis application")

    # -- plain forwarding ---------------------------------------------------------------------

    async def _body(self, request: Request) -> bytes:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        limit = ASTERISK_MAX_PARSED_BODY if content_type in _PARSED_BODY_TYPES else MAX_BODY
        length = request.headers.get("content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        if length is not None and (declared is None or declared > limit):
            if declared is not None and declared <= DRAIN_LIMIT:
                await _drain(request)
            raise ProxyError("Request body too large", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                await _drain(request, size)
                raise ProxyError("Request body too large", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _send(self, request: Request, path: str, body: bytes, stream: bool = False):  # type: ignore[no-untyped-def]
        raw_path = (request.scope.get("raw_path") or request.url.path.encode()).decode("latin-1")
        url = raw_path[len("/ari/") :] + ("?" + request.url.query if request.url.query else "")
        headers = end_to_end_headers(request.headers)
        upstream_request = self._rest.client.build_request(
            request.method, url, headers=headers, content=body
        )
        response = await self._rest.send(upstream_request, stream=stream)
        if not stream:
            await response.aread()
        return response

    async def _forward(self, request: Request, path: str) -> Response:
        body = await self._body(request)
        upstream = await self._send(request, path, body, stream=True)
        length = upstream.headers.get("content-length")
        if length is None or not length.isdigit() or int(length) > BUFFER_LIMIT:
            headers = dict(end_to_end_headers(upstream.headers))
            return StreamingResponse(
                upstream.aiter_raw(),
                upstream.status_code,
                headers,
                background=BackgroundTask(upstream.aclose),
            )
        try:
            content = await upstream.aread()
        finally:
            await upstream.aclose()
        if upstream.status_code >= 500:
            log.warning(
                "%s /ari/%s -> %d from Asterisk", request.method, path, upstream.status_code
            )
        if path.startswith("api-docs/") and upstream.status_code == 200:
            base = base_url_for(
                request.url.scheme, request.headers.get("host"), self._fallback_host
            )
            try:
                content = rewrite_document(path[len("api-docs/") :], content, base)
            except ApiDocsError as exc:
                raise UpstreamError(f"Asterisk sent an unusable api-docs document: {exc}") from exc
        elif path.startswith("channels") and len(self._presenter):
            content = self._presenter.body(content)
        return _relay(upstream, content)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _drain(request: Request, size: int = 0) -> None:
    """Read and drop a refused body (up to DRAIN_LIMIT, for DRAIN_SECONDS at most) so the
    client, still sending it, can read the 413 instead of having its connection reset; a
    client that declared a body and stalls gets its 413 when the time is up."""
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            async for chunk in request.stream():
                size += len(chunk)
                if size > DRAIN_LIMIT:
                    return
    except (TimeoutError, ClientDisconnect):
        return


def end_to_end_headers(headers: Mapping[str, str], *drop: str) -> list[tuple[str, str]]:
    """The headers a proxy passes on: not the hop-by-hop ones, neither the fixed set nor
    those the Connection header names (RFC 9110, 7.6.1), nor `drop`."""
    named = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    named.update(drop)
    return [
        (k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP and k.lower() not in named
    ]


def _relay(upstream, content: bytes) -> Response:  # type: ignore[no-untyped-def]
    headers = end_to_end_headers(upstream.headers, "content-encoding")
    return Response(content, upstream.status_code, dict(headers))


def _claim_response(answer: ClaimAnswer) -> Response:
    if answer.body is None:
        return Response(status_code=answer.status)
    return Response(
        orjson.dumps(answer.body), answer.status, answer.headers, media_type="application/json"
    )
