"""Which Asterisk server holds which resource, learned from what passes through the proxy.

Events say where a channel, bridge, playback or recording lives (each server's events come
on its own socket), and so do the answers to the requests that create them. What was never
seen is asked of the servers by the shell (fleet/rest.py) and remembered here. The map is
bounded: the oldest entries go first, to be asked again if they are still wanted.

Two servers holding one id (channel ids are uniqueids, the same on two servers without
distinct `systemname`s) is a collision: `learn` reports it, and requests for that id are
refused rather than sent to either server.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from .routing import Resource

__all__ = ["Locator"]

MAX_ENTRIES = 200_000
# The resources an event names: its field -> (that object's id field, the family).
_EVENT_RESOURCES = {
    "channel": ("id", "channels"),
    "bridge": ("id", "bridges"),
    "playback": ("id", "playbacks"),
    "recording": ("name", "recordings/live"),
}
_ENDS = {
    "ChannelDestroyed": "channel",
    "BridgeDestroyed": "bridge",
    "PlaybackFinished": "playback",
    "RecordingFinished": "recording",
    "RecordingFailed": "recording",
}


class Locator:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._where: OrderedDict[Resource, str] = OrderedDict()
        self._collisions: OrderedDict[Resource, set[str]] = OrderedDict()
        self._max = max_entries

    def __len__(self) -> int:
        return len(self._where)

    def holder(self, resource: Resource) -> str | None:
        return self._where.get(resource)

    def colliding(self, resource: Resource) -> set[str]:
        """The servers that hold this same id (empty when only one does)."""
        return self._collisions.get(resource, set())

    def learn(self, resource: Resource, server: str) -> str | None:
        """`server` holds `resource`; returns the other server that holds it too when that
        is news (a collision already known is not reported again)."""
        known = self._where.get(resource)
        if known is not None and known != server:
            collided = self._collisions.setdefault(resource, {known})
            if server in collided:
                return None
            collided.add(server)
            while len(self._collisions) > self._max:
                self._collisions.popitem(last=False)
            return known
        self._where[resource] = server
        self._where.move_to_end(resource)
        while len(self._where) > self._max:
            self._where.popitem(last=False)
        return None

    def forget(self, resource: Resource, server: str) -> None:
        """The resource ended on `server`."""
        if self._where.get(resource) == server:
            del self._where[resource]
        others = self._collisions.get(resource)
        if others is not None:
            others.discard(server)
            if len(others) <= 1:
                del self._collisions[resource]
                if others:
                    self._where[resource] = next(iter(others))

    def event(self, event: Any, server: str) -> list[Resource]:
        """Learn from one event of `server`'s; returns the ids it found on two servers."""
        if not isinstance(event, dict):
            return []
        ends = _ENDS.get(str(event.get("type")))
        collided = []
        for field, (key, family) in _EVENT_RESOURCES.items():
            value = event.get(field)
            if not isinstance(value, dict) or not isinstance(value.get(key), str):
                continue
            resource = Resource(family, value[key])
            if field == ends:
                self.forget(resource, server)
            elif self.learn(resource, server) is not None:
                collided.append(resource)
        return collided

    def answer(self, family: str, body: Any, server: str) -> list[Resource]:
        """Learn from a creation's answer (a channel or bridge object, or a list of them)."""
        items = body if isinstance(body, list) else [body]
        collided = []
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                resource = Resource(family, item["id"])
                if self.learn(resource, server) is not None:
                    collided.append(resource)
        return collided
