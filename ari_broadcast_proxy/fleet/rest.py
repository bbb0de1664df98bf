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
- EVERY: every server at once; lists come back merged (the answers of the servers that have
  the thing: an application not registered on one server is no 404), a write answers as the
  first server that refused it, else as the first. A client's list leaves out a server that
  cannot be reached; the proxy's own calls (its sweeps) fail instead.
- ANY: the first ready server, the next if it cannot be reached.

A server that could not be reached is left aside for RETRY_AFTER seconds. Resources are
looked up with the client's own credentials, so that Asterisk refuses whom it would refuse
before the proxy says where anything is.

A request naming resources on two servers (a bridge and a channel of another) is refused
with 422 naming both; an id held by two servers with 409 (their `systemname`s collide).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..ari_request import AriCall, parse_query, path_segments
from ..errors import BadRequest, ProxyError, UpstreamError, UpstreamTimeout
from ..upstream.http import HttpResponse
from ..upstream.rest import JSON_CONTENT, UpstreamRest, call_target
from .locator import Locator
from .routing import PER_SERVER, Kind, Resource, Route, route

__all__ = ["PIN_HEADER", "FleetRest"]

log = logging.getLogger(__name__)

PIN_HEADER = b"x-asterisk-server"
RETRY_AFTER = 5.0  # a server that could not be reached is left aside this long


@dataclass(frozen=True)
class Asker:
    """Whose credentials look a resource up on the servers: the client's own (so that
    Asterisk refuses a client it would refuse, before the proxy says anything), or the
    proxy's for its own calls."""

    authorization: str | None = None
    api_key: str | None = None
    as_proxy: bool = False

    async def get(self, server: UpstreamRest, path: str) -> HttpResponse:
        params = {"api_key": self.api_key} if self.api_key is not None else None
        return await server.call(
            "GET", path, params, as_proxy=self.as_proxy, authorization=self.authorization
        )


PROXY = Asker(as_proxy=True)


class FleetRest:
    def __init__(
        self,
        servers: Sequence[UpstreamRest],
        locator: Locator,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.servers = {s.upstream.name: s for s in servers}
        self.locator = locator
        self.systemnames: dict[str, str] = {}  # systemname -> server, read at start
        self._clock = clock
        self._failed: dict[str, float] = {}  # server -> when it last could not be reached
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
        """A client's request: its own credentials throughout; a list leaves out a server
        that cannot be reached (the others keep serving)."""
        headers = list(headers)
        call = _call(method, target, body, headers)
        pinned = next((v.decode("latin-1") for k, v in headers if k.lower() == PIN_HEADER), None)
        forwarded = [(k, v) for k, v in headers if k.lower() != PIN_HEADER]
        authorization = next(
            (v.decode("latin-1") for k, v in headers if k.lower() == b"authorization"), None
        )
        asker = Asker(authorization, next((v for k, v in call.params if k == "api_key"), None))

        async def send(server: UpstreamRest, whole: bool = False) -> HttpResponse:
            return await server.send(method, target, forwarded, body, stream=stream and not whole)

        return await self._routed(call, send, asker, pinned, strict=False)

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
        credentials, each server's own. The proxy's own lists are whole or fail: a sweep
        must not take a server that did not answer for one without channels."""
        call = _call(method, call_target(path, params), json, [JSON_CONTENT] if json else [])
        asker = PROXY if as_proxy else Asker(authorization)

        async def send(server: UpstreamRest, whole: bool = False) -> HttpResponse:
            return await server.call(
                method, path, params, as_proxy=as_proxy, authorization=authorization, json=json
            )

        return await self._routed(call, send, asker, None, strict=True)

    def learn(self, event: dict[str, Any], server: str) -> None:
        """An event from one of `server`'s sockets (the broadcast application's, a client's)."""
        for resource in self.locator.event(event, server):
            others = " and ".join(sorted(self.locator.colliding(resource)))
            log.error("%s is on %s: give each Asterisk its own systemname", resource, others)

    async def check_ids(self) -> None:
        """Warn when two servers could mint the same channel ids: no `systemname`, or the
        same one (ids are `systemname-epoch.sequence`, or `epoch.sequence` without)."""
        answers = await self._each(
            self.servers, lambda n: self.servers[n].call("GET", "asterisk/info")
        )
        seen: dict[str, str] = {}
        for name, answer in answers:
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
        self,
        call: AriCall,
        send: Callable[..., Awaitable[HttpResponse]],
        asker: Asker,
        pinned: str | None,
        *,
        strict: bool,
    ) -> HttpResponse:
        where = route(call)
        if where.kind is Kind.EVERY:
            return await self._every(where, send, strict)
        if where.kind is Kind.HOLDER:
            assert where.resource is not None
            return await self._to_holder(call, where, where.resource, send, asker)
        if where.kind is Kind.CREATE:
            server = await self._creation_server(where, pinned, asker)
            response = await self._on(server, lambda s: send(s, whole=True))
            self._learn_created(call, response, server)
            return response
        return await self._any(send)

    async def _to_holder(
        self,
        call: AriCall,
        where: Route,
        resource: Resource,
        send: Callable[..., Awaitable[HttpResponse]],
        asker: Asker,
    ) -> HttpResponse:
        remembered = self.locator.holder(resource)
        server = await self._holder(resource, asker)
        if server is None:
            return await self._any(send)  # Asterisk's own 404
        await self._check_together(where, server, resource, asker)
        response = await self._on(server, send)
        if response.status_code == 404 and remembered == server:
            # Gone from there since (its end was not seen): look again, once.
            response.release()
            self.locator.forget(resource, server)
            server = await self._holder(resource, asker)
            return await (self._any(send) if server is None else self._on(server, send))
        ended = call.method == "DELETE" and len(call.segments) == len(resource.path.split("/"))
        if ended and 200 <= response.status_code < 300:
            self.locator.forget(resource, server)
        return response

    async def _on(self, name: str, send: Callable[..., Awaitable[HttpResponse]]) -> HttpResponse:
        try:
            response = await send(self.servers[name])
        except UpstreamError as exc:
            if not isinstance(exc, UpstreamTimeout):
                self._failed[name] = self._clock()
            raise type(exc)(f"Asterisk {name}: {exc.message}", exc.status) from exc
        self._failed.pop(name, None)
        return response

    @staticmethod
    async def _each(
        names: Iterable[str], ask: Callable[[str], Awaitable[HttpResponse]]
    ) -> list[tuple[str, HttpResponse | BaseException]]:
        """`ask` every named server at once: each one's answer, or what it raised."""
        names = list(names)
        results = await asyncio.gather(*(ask(n) for n in names), return_exceptions=True)
        return list(zip(names, results, strict=True))

    def _reachable(self, name: str) -> bool:
        """Not known unreachable: it answered last time, or failed long enough ago to be
        tried again."""
        failed = self._failed.get(name)
        return failed is None or self._clock() - failed >= RETRY_AFTER

    def _ready(self) -> list[str]:
        """Servers to try, the reachable ones first."""
        return sorted(self.servers, key=lambda name: not self._reachable(name))

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
        self, where: Route, send: Callable[..., Awaitable[HttpResponse]], strict: bool
    ) -> HttpResponse:
        """Every server (for a client, those reachable; a list without the others)."""
        names = [n for n in self.servers if strict or self._reachable(n)] or list(self.servers)
        results = await self._each(names, lambda n: self._on(n, lambda s: send(s, whole=True)))
        answers: list[HttpResponse] = []
        for name, result in results:
            if isinstance(result, HttpResponse):
                answers.append(result)
            elif not isinstance(result, ProxyError) or strict:
                raise result
            else:
                log.warning("%s left out: %s", name, result.message)
        if not answers:
            failure = results[0][1]
            assert isinstance(failure, BaseException)  # nobody answered
            raise failure
        found = [r for r in answers if r.status_code == 200]
        if where.merge and found:  # lists, or what the servers that have it say
            return _merged(found)
        refused = [r for r in answers if r.status_code >= 300]
        return refused[0] if refused else answers[0]

    async def _holder(self, resource: Resource, asker: Asker) -> str | None:
        """The server holding `resource` (asked of every server when not known). One of
        several servers with their own copy (an endpoint, a stored recording) will do."""
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
        names = [n for n in self.servers if self._reachable(n)] or list(self.servers)
        asked = await self._each(names, lambda n: asker.get(self.servers[n], resource.path))
        found = [n for n, a in asked if isinstance(a, HttpResponse) and a.status_code == 200]
        if resource.family in PER_SERVER:
            return found[0] if found else None
        for name in found:
            self.locator.learn(resource, name)
        if len(found) > 1:
            return await self._holder(resource, asker)  # the collision, refused
        silent = [n for n, a in asked if not isinstance(a, HttpResponse)]
        if not found and silent:
            raise UpstreamError(
                f"{resource} is on no Asterisk that answered; {', '.join(silent)} did not"
            )
        return found[0] if found else None

    async def _check_together(
        self, where: Route, server: str, anchor: Resource | None, asker: Asker
    ) -> None:
        for other in where.together:
            holder = await self._holder(other, asker)
            if holder is not None and holder != server:
                what = str(anchor) if anchor is not None else "the new resource"
                raise ProxyError(
                    f"{what} is on Asterisk {server} and {other} on Asterisk {holder}: "
                    "one request cannot span two servers",
                    422,
                )

    async def _creation_server(self, where: Route, pinned: str | None, asker: Asker) -> str:
        if pinned is not None:
            if pinned not in self.servers:
                raise BadRequest(f"{PIN_HEADER.decode()}: no such Asterisk server here")
            server = pinned
        elif where.together and (holder := await self._holder(where.together[0], asker)):
            server = holder  # where the originator is
        elif where.resource is not None and (named := self._named_by(where.resource.id)):
            server = named  # an id that starts with a server's systemname
        elif where.resource is not None and (known := await self._existing(where.resource, asker)):
            server = known  # an update of an existing bridge, or Asterisk's own refusal
        else:
            server = self._next_ready()
        await self._check_together(where, server, None, asker)
        return server

    def _named_by(self, chosen: str) -> str | None:
        """The server whose systemname and a dash begin a chosen id (`a-call-1`: server
        `a`), as its own channel ids begin; the longest such systemname."""
        names = [n for n in self.systemnames if chosen.startswith(n + "-")]
        return self.systemnames[max(names, key=len)] if names else None

    async def _existing(self, resource: Resource, asker: Asker) -> str | None:
        """Who holds an id chosen for a creation; a server that cannot be asked counts as
        not holding it (it cannot take the creation either)."""
        try:
            return await self._holder(resource, asker)
        except UpstreamError:
            return None

    def _next_ready(self) -> str:
        for _ in range(len(self.servers)):
            name = next(self._turn)
            if self._reachable(name):
                return name
        return next(self._turn)  # none answered lately: try anyway

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


def _call(method: str, target: bytes, body: bytes, headers: list[tuple[bytes, bytes]]) -> AriCall:
    """The request as routing reads it (what cannot be read routes as ANY: Asterisk refuses)."""
    path, _, query = target.partition(b"?")
    content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
    try:
        return AriCall.read(
            method,
            path_segments(path.lstrip(b"/")),
            parse_query(query),
            body,
            content_type.decode("latin-1").split(";")[0].strip().lower(),
        )
    except BadRequest:
        return AriCall(method, ())


def _merged(answers: list[HttpResponse]) -> HttpResponse:
    """Several servers' 200 answers as one: lists joined (an endpoint or a stored recording
    that several servers have, once, online first), applications one per name."""
    bodies = [orjson.loads(a.content) if a.content else [] for a in answers]
    items: list[Any] = []
    for body in bodies:
        items.extend(body if isinstance(body, list) else [body])
    apps = [i for i in items if isinstance(i, dict) and "channel_ids" in i and "name" in i]
    merged: Any = _unique(items)
    if apps and len(apps) == len(items):
        merged = _merged_applications(apps)
        if not isinstance(bodies[0], list):
            merged = merged[0]
    content = orjson.dumps(merged)
    first = answers[0]
    headers = [(k, v) for k, v in first.raw_headers if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(content)).encode()))
    return HttpResponse.composed(first.status_code, headers, content, first.timeout)


def _unique(items: list[Any]) -> list[Any]:
    """Endpoints (technology/resource) and stored recordings (name) each servers has a copy
    of, once: an online endpoint's copy over an offline one. Anything else as it came."""
    kept: dict[Any, int] = {}
    out: list[Any] = []
    for item in items:
        key = _copy_key(item)
        if key is None:
            out.append(item)
        elif key not in kept:
            kept[key] = len(out)
            out.append(item)
        elif item.get("state") == "online" and out[kept[key]].get("state") != "online":
            out[kept[key]] = item
    return out


def _copy_key(item: Any) -> Any:
    if not isinstance(item, dict):
        return None
    if "technology" in item and "resource" in item and "channel_ids" in item:
        return ("endpoint", item["technology"], item["resource"])
    if "format" in item and "name" in item and set(item) <= {"format", "name"}:
        return ("recording", item["name"])
    return None


def _merged_applications(apps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per application name, its id lists joined (each id once)."""
    by_name: dict[str, dict[str, Any]] = {}
    for app in apps:
        into = by_name.get(app["name"])
        if into is None:
            by_name[app["name"]] = {
                k: list(v) if isinstance(v, list) else v for k, v in app.items()
            }
            continue
        for key, value in app.items():
            if isinstance(value, list) and isinstance(into.get(key), list):
                have = set(map(_hashable, into[key]))
                into[key] += [v for v in value if _hashable(v) not in have]
    return list(by_name.values())


def _hashable(value: Any) -> Any:
    return orjson.dumps(value) if isinstance(value, (dict, list)) else value
