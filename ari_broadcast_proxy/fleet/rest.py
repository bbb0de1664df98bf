"""Several Asterisk servers' ARI behind one client: each request goes to the server (or the
servers) its route names (fleet/routing.py), with the same interface as one server's
`UpstreamRest`, so the passthrough and the broadcast feature use either unchanged.

- HOLDER: the locator's server, else the one that answers a GET for the resource (asked of
  every server at once); none: the first ready server, so that Asterisk's own 404 answers
  (502 when a server could not be asked: the resource may be there).
- CREATE: the server the client pins with the `X-Asterisk-Server: host:port` header, or the
  server of the channel the request names (an `originator`), or the server whose
  `systemname` begins the id the client chose (`channelId=a-call-1`, `bridgeId=a-b1`: server
  `a`, as its own ids begin), else the next ready server in turn (round robin: no server
  state is needed to weigh them, and calls spread evenly).
- EVERY: every ready server at once; lists come back merged, a write answers as the first
  server that refused it, else as the first.
- ANY: the first ready server, the next if it cannot be reached.

A request naming resources on two servers (a bridge and a channel of another) is refused
with 422 naming both; an id held by two servers with 409 (their `systemname`s collide).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from ..ari_request import AriCall, parse_query, path_segments
from ..errors import BadRequest, ProxyError, UpstreamError, UpstreamTimeout
from ..upstream.http import HttpResponse
from ..upstream.rest import UpstreamRest
from .locator import Locator
from .routing import Kind, Resource, Route, route

__all__ = ["PIN_HEADER", "FleetRest"]

log = logging.getLogger(__name__)

PIN_HEADER = b"x-asterisk-server"
_JSON = [(b"content-type", b"application/json")]


class FleetRest:
    def __init__(self, servers: Sequence[UpstreamRest], locator: Locator) -> None:
        self.servers = {s.upstream.name: s for s in servers}
        self.locator = locator
        self.up = dict.fromkeys(self.servers, True)  # reachable at the last try
        self.systemnames: dict[str, str] = {}  # systemname -> server, read at start
        self._turn = itertools.cycle(list(self.servers))

    async def aclose(self) -> None:
        for server in self.servers.values():
            await server.aclose()

    # -- the UpstreamRest interface -----------------------------------------------------------

    async def send(
        self,
        method: str,
        target: bytes,
        headers: Iterable[tuple[bytes, bytes]] = (),
        body: bytes = b"",
        *,
        stream: bool = False,
    ) -> HttpResponse:
        headers = list(headers)
        path, _, query = target.partition(b"?")
        call = _call(method, path.decode("latin-1").lstrip("/"), query, body, headers)
        pinned = next((v.decode("latin-1") for k, v in headers if k.lower() == PIN_HEADER), None)
        forwarded = [(k, v) for k, v in headers if k.lower() != PIN_HEADER]

        async def send(server: UpstreamRest, whole: bool = False) -> HttpResponse:
            return await server.send(method, target, forwarded, body, stream=stream and not whole)

        return await self._routed(call, send, pinned)

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
        """`UpstreamRest.call` on the server(s) the request's route names; with the proxy's
        credentials, each server's own."""
        target = quote(path.lstrip("/"), safe="/", errors="surrogateescape")
        query = urlencode(params or {}, errors="surrogateescape").encode("latin-1")
        call = _call(method, target, query, json, _JSON if json else [])

        async def send(server: UpstreamRest, whole: bool = False) -> HttpResponse:
            return await server.call(
                method, path, params, as_proxy=as_proxy, authorization=authorization, json=json
            )

        return await self._routed(call, send, None)

    def learn(self, event: dict[str, Any], server: str) -> None:
        """An event from the broadcast application's socket on `server`."""
        for resource in self.locator.event(event, server):
            others = " and ".join(sorted(self.locator.colliding(resource)))
            log.error("%s is on %s: give each Asterisk its own systemname", resource, others)

    async def check_ids(self) -> None:
        """Warn when two servers could mint the same channel ids: no `systemname`, or the
        same one (ids are `systemname-epoch.sequence`, or `epoch.sequence` without)."""
        names = list(self.servers)
        answers = await asyncio.gather(
            *(self.servers[n].call("GET", "asterisk/info") for n in names), return_exceptions=True
        )
        seen: dict[str, str] = {}
        for name, answer in zip(names, answers, strict=True):
            if not isinstance(answer, HttpResponse) or answer.status_code != 200:
                log.warning("Asterisk %s did not say its systemname (it is checked once)", name)
                continue
            try:
                config = answer.json().get("config") or {}
            except (ValueError, AttributeError):
                config = {}
            systemname = str(config.get("name") or "")
            if not systemname:
                log.warning(
                    "Asterisk %s has no systemname: its channel ids can collide with another "
                    "server's; set systemname in asterisk.conf [options] on every server",
                    name,
                )
            elif systemname in seen:
                log.warning(
                    "Asterisks %s and %s share the systemname %r: their channel ids can "
                    "collide; give each server its own in asterisk.conf [options]",
                    seen[systemname],
                    name,
                    systemname,
                )
            seen.setdefault(systemname, name)
        self.systemnames = {s: n for s, n in seen.items() if s}

    # -- routing ------------------------------------------------------------------------------

    async def _routed(
        self, call: AriCall, send: Callable[..., Awaitable[HttpResponse]], pinned: str | None
    ) -> HttpResponse:
        where = route(call)
        if where.kind is Kind.EVERY:
            return await self._every(where, send)
        if where.kind is Kind.HOLDER:
            assert where.resource is not None
            server = await self._holder(where.resource)
            if server is None:
                return await self._any(send)  # Asterisk's own 404
            await self._check_together(where, server, where.resource)
            return await self._on(server, send)
        if where.kind is Kind.CREATE:
            server = await self._creation_server(where, pinned)
            response = await self._on(server, lambda s: send(s, whole=True))
            self._learn_created(call, response, server)
            return response
        return await self._any(send)

    async def _on(self, name: str, send: Callable[..., Awaitable[HttpResponse]]) -> HttpResponse:
        try:
            response = await send(self.servers[name])
        except UpstreamError as exc:
            if not isinstance(exc, UpstreamTimeout):
                self.up[name] = False
            raise UpstreamError(f"Asterisk {name}: {exc.message}") from exc
        self.up[name] = True
        return response

    def _ready(self) -> list[str]:
        """Servers to try, those reachable at the last try first."""
        return sorted(self.servers, key=lambda name: not self.up[name])

    async def _any(self, send: Callable[..., Awaitable[HttpResponse]]) -> HttpResponse:
        failure: UpstreamError | None = None
        for name in self._ready():
            try:
                return await self._on(name, send)
            except UpstreamTimeout:
                raise  # it may have acted: never twice
            except UpstreamError as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def _every(
        self, where: Route, send: Callable[..., Awaitable[HttpResponse]]
    ) -> HttpResponse:
        names = list(self.servers)
        results = await asyncio.gather(
            *(self._on(n, lambda s: send(s, whole=True)) for n in names), return_exceptions=True
        )
        answers = [
            (n, r) for n, r in zip(names, results, strict=True) if isinstance(r, HttpResponse)
        ]
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, ProxyError):
                    raise result
                log.warning("%s left out: %s", name, result.message)
        if not answers:
            first = results[0]
            assert isinstance(first, BaseException)
            raise first
        refused = [r for _, r in answers if r.status_code >= 300]
        if refused or not where.merge:
            return refused[0] if refused else answers[0][1]
        return _merged([r for _, r in answers])

    async def _holder(self, resource: Resource) -> str | None:
        """The server holding `resource` (asked of every server when not known)."""
        others = self.locator.colliding(resource)
        if others:
            raise ProxyError(
                f"{resource} exists on {' and '.join(sorted(others))}: give each Asterisk its "
                "own systemname in asterisk.conf",
                409,
            )
        known = self.locator.holder(resource)
        if known is not None:
            return known
        names = list(self.servers)
        asked = await asyncio.gather(
            *(self.servers[n].call("GET", resource.path) for n in names), return_exceptions=True
        )
        found = [
            n
            for n, a in zip(names, asked, strict=True)
            if isinstance(a, HttpResponse) and a.status_code == 200
        ]
        for name in found:
            self.locator.learn(resource, name)
        if len(found) > 1:
            return await self._holder(resource)  # the collision, refused
        silent = [n for n, a in zip(names, asked, strict=True) if not isinstance(a, HttpResponse)]
        if not found and silent:
            raise UpstreamError(
                f"{resource} is on no Asterisk that answered; {', '.join(silent)} did not"
            )
        return found[0] if found else None

    async def _check_together(self, where: Route, server: str, anchor: Resource | None) -> None:
        for other in where.together:
            holder = await self._holder(other)
            if holder is not None and holder != server:
                what = str(anchor) if anchor is not None else "the new resource"
                raise ProxyError(
                    f"{what} is on Asterisk {server} and {other} on Asterisk {holder}: "
                    "one request cannot span two servers",
                    422,
                )

    async def _creation_server(self, where: Route, pinned: str | None) -> str:
        if pinned is not None:
            if pinned not in self.servers:
                raise BadRequest(
                    f"{PIN_HEADER.decode()}: no Asterisk {pinned!r} here "
                    f"(one of {', '.join(self.servers)})"
                )
            server = pinned
        elif where.together and (holder := await self._holder(where.together[0])):
            server = holder  # where the originator is
        elif where.resource is not None and (named := self._named_by(where.resource.id)):
            server = named  # an id that starts with a server's systemname
        elif where.resource is not None and (known := await self._existing(where.resource)):
            server = known  # an update of an existing bridge, or Asterisk's own refusal
        else:
            server = self._next_ready()
        await self._check_together(where, server, None)
        return server

    def _named_by(self, chosen: str) -> str | None:
        """The server whose systemname begins a chosen id (`a-call-1`: server `a`), as
        its own channel ids begin."""
        systemname = chosen.partition("-")[0]
        return self.systemnames.get(systemname) if systemname != chosen else None

    async def _existing(self, resource: Resource) -> str | None:
        """Who holds an id chosen for a creation; a server that cannot be asked counts as
        not holding it (it cannot take the creation either)."""
        try:
            return await self._holder(resource)
        except UpstreamError:
            return None

    def _next_ready(self) -> str:
        for _ in range(len(self.servers)):
            name = next(self._turn)
            if self.up[name]:
                return name
        return next(self._turn)  # none answered last time: try anyway

    def _learn_created(self, call: AriCall, response: HttpResponse, server: str) -> None:
        if response.status_code != 200 or not response.content:
            return
        family = call.segments[0]
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return
        for resource in self.locator.answer(family, body, server):
            log.error("%s created on Asterisk %s exists on another server too", resource, server)


def _call(
    method: str, path: str, query: bytes, body: bytes, headers: list[tuple[bytes, bytes]]
) -> AriCall:
    """The request as routing reads it (what cannot be read routes as ANY: Asterisk refuses)."""
    try:
        segments = path_segments(path)
        params = parse_query(query)
    except BadRequest:
        return AriCall(method, ())
    json_body: Any = None
    content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
    if body and content_type.split(b";")[0].strip().lower() == b"application/json":
        with contextlib.suppress(orjson.JSONDecodeError):
            json_body = orjson.loads(body)
    elif body and content_type.startswith(b"application/x-www-form-urlencoded"):
        with contextlib.suppress(BadRequest):
            params = parse_query(body) + params
    return AriCall(method.upper(), segments, tuple(params), json_body)


def _merged(answers: list[HttpResponse]) -> HttpResponse:
    """Several servers' 200 lists as one (applications: one entry per name)."""
    items: list[Any] = []
    for answer in answers:
        body = orjson.loads(answer.content) if answer.content else []
        items.extend(body if isinstance(body, list) else [body])
    apps = [i for i in items if isinstance(i, dict) and "channel_ids" in i and "name" in i]
    merged: Any = items
    if apps and len(apps) == len(items):
        merged = _merged_applications(apps)
        if not isinstance(orjson.loads(answers[0].content), list):
            merged = merged[0]
    content = orjson.dumps(merged)
    first = answers[0]
    headers = [(k, v) for k, v in first.raw_headers if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(content)).encode()))
    return HttpResponse.composed(first.status_code, headers, content, first.timeout)


def _merged_applications(apps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name: dict[str, dict[str, Any]] = {}
    for app in apps:
        into = by_name.setdefault(app["name"], {**app})
        if into is app or into == app:
            continue
        for key, value in app.items():
            if isinstance(value, list) and isinstance(into.get(key), list):
                into[key] = into[key] + [v for v in value if v not in into[key]]
    return list(by_name.values())
