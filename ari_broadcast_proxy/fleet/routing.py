"""Where a client's ARI request goes when several Asterisk servers stand behind the proxy.

A pure decision on the request as Asterisk reads it (`AriCall`), one rule per resource
family (README, "Several Asterisk servers"):

- HOLDER: the request names a live resource (a channel, bridge, playback, live or stored
  recording, endpoint): the server that holds it;
- CREATE: it makes a new channel or bridge: the server of the channel it names (an
  originator), or the one its chosen id names, else the next ready server in turn;
- EVERY: a list (merged) or a fleet-wide setting (global variables, modules, logging,
  dynamic configuration, device states, mailboxes, application subscriptions): every server;
- ANY: the same answer from any server (system information, sounds, api-docs, reads of
  settings every server was given): the first ready one.

A request that names resources which must share a server (a bridge and the channels added
to it, a channel and the caller it dials) lists them in `together`; the shell refuses it
when they do not (a bridge cannot span servers).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

from ..ari_request import AriCall

__all__ = ["PER_SERVER", "Kind", "Resource", "Route", "route"]


class Kind(Enum):
    ANY = "any"
    HOLDER = "holder"
    CREATE = "create"
    EVERY = "every"


@dataclass(frozen=True)
class Resource:
    """A resource as the locator knows it: its family (`channels`, `bridges`, `playbacks`,
    `recordings/live`, `recordings/stored`, `endpoints`) and its id (`tech/resource` for
    an endpoint)."""

    family: str
    id: str

    @property
    def path(self) -> str:
        """Where a GET finds it on a server (below /ari)."""
        return f"{self.family}/{self.id}"

    def __str__(self) -> str:
        kind = "recording" if self.family.startswith("recordings") else self.family[:-1]
        return f"{kind} {self.id}"


@dataclass(frozen=True)
class Route:
    kind: Kind
    resource: Resource | None = None  # HOLDER: the one named; CREATE: the id chosen, if any
    together: tuple[Resource, ...] = ()  # must be on the same server as `resource`/created
    merge: bool = False  # EVERY: the answers are JSON lists (or applications) to merge


# Configuration and files each server has its own copy of (the same pjsip.conf behind a SIP
# proxy): found on several servers, they are no collision; a request goes to one of them.
PER_SERVER = frozenset({"endpoints", "recordings/stored"})
_ANY = Route(Kind.ANY)
_EVERY_WRITE = Route(Kind.EVERY)
_EVERY_LIST = Route(Kind.EVERY, merge=True)
# Families whose writes every server gets (reads of them: any server, which got them all).
_FLEET_WIDE = frozenset({"asterisk", "deviceStates", "mailboxes"})
_CREATIONS = frozenset({"create", "externalMedia"})


def route(call: AriCall) -> Route:
    segments, method = call.segments, call.method
    family = segments[0] if segments else ""
    if family in _FLEET_WIDE:
        return _ANY if method == "GET" else _EVERY_WRITE
    if family == "applications":
        if segments[2:] == ("subscription",) and method != "GET":
            return _subscription(call)
        return _EVERY_LIST  # a list, one application merged, its event filter
    if family == "channels":
        return _channels(call)
    if family == "bridges":
        return _bridges(call)
    if family == "playbacks" and len(segments) >= 2:
        return Route(Kind.HOLDER, Resource("playbacks", segments[1]))
    if family == "recordings" and len(segments) >= 3 and segments[1] in ("live", "stored"):
        return Route(Kind.HOLDER, Resource(f"recordings/{segments[1]}", segments[2]))
    if family == "recordings" and segments[1:] == ("stored",):
        return _EVERY_LIST
    if family == "endpoints":
        return _endpoints(call)
    if family == "events" and segments[1:2] == ("user",):
        return _user_event(call)
    return _ANY


def _channels(call: AriCall) -> Route:
    segments = call.segments
    if len(segments) == 1 and call.method == "GET":
        return _EVERY_LIST
    created = len(segments) == 2 and segments[1] in _CREATIONS and call.method == "POST"
    if len(segments) == 1 or created:  # originate, create, externalMedia
        return _creation(call, _chosen(call, "channels", "channelId"))
    channel = Resource("channels", segments[1])
    if len(segments) == 2 and call.method == "POST":  # originate with this id
        return _creation(call, channel)
    together = _channels_named(call, "caller") if segments[2:] == ("dial",) else ()
    return Route(Kind.HOLDER, channel, together)


def _creation(call: AriCall, asked: Resource | None) -> Route:
    """A new channel (or bridge): it goes where its originator is."""
    return Route(Kind.CREATE, asked, _channels_named(call, "originator"))


def _chosen(call: AriCall, family: str, parameter: str) -> Resource | None:
    """The id a client chose for what it creates (`channelId`, `bridgeId`), if any."""
    values = [v for v in call.values(parameter) if v]
    return Resource(family, values[0]) if values else None


def _bridges(call: AriCall) -> Route:
    segments = call.segments
    if len(segments) == 1:
        if call.method == "GET":
            return _EVERY_LIST
        return _creation(call, _chosen(call, "bridges", "bridgeId"))
    bridge = Resource("bridges", segments[1])
    if len(segments) == 2 and call.method == "POST":  # create with this id, or update it
        return Route(Kind.CREATE, bridge)
    together = _channels_named(call, "channel")
    if len(segments) >= 4 and segments[2] == "videoSource":
        together += (Resource("channels", segments[3]),)
    return Route(Kind.HOLDER, bridge, together)


def _endpoints(call: AriCall) -> Route:
    segments = call.segments
    if len(segments) >= 3:
        return Route(Kind.HOLDER, Resource("endpoints", f"{segments[1]}/{segments[2]}"))
    if call.method == "GET":
        return _EVERY_LIST  # all endpoints, or one technology's
    return _ANY  # endpoints/sendMessage, endpoints/refer: to a URI, from any server


def _user_event(call: AriCall) -> Route:
    """A user event goes to the server of its first source (one event for the apps that
    listen there: their sockets hear every server); without a source, to any one."""
    first = next(_sources(call, "source"), None)
    return _ANY if first is None else Route(Kind.HOLDER, first)


def _subscription(call: AriCall) -> Route:
    """An application's subscription to a channel or bridge is made where that lives; to
    endpoints, device states or every channel, on every server (each has its own)."""
    first = next(_sources(call, "eventSource"), None)
    if first is None or first.family == "endpoints":
        return _EVERY_LIST
    return Route(Kind.HOLDER, first)


def _sources(call: AriCall, parameter: str) -> Iterator[Resource]:
    """The resources an event source list names (`channel:X,bridge:Y`), in order."""
    families = {"channel": "channels", "bridge": "bridges", "endpoint": "endpoints"}
    for value in call.values(parameter):
        for source in value.split(","):
            kind, _, name = source.strip().partition(":")
            if kind in families and name:
                yield Resource(families[kind], name)


def _channels_named(call: AriCall, parameter: str) -> tuple[Resource, ...]:
    """The channels a list parameter names (`channel=a,b`), in order."""
    names = [n.strip() for value in call.values(parameter) for n in value.split(",")]
    return tuple(Resource("channels", n) for n in names if n)
