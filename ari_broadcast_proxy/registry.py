"""Which applications are connected through the proxy, and on which downstream socket."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["AppRegistry", "Audience", "EventSink"]


class EventSink(Protocol):
    """A downstream events socket, as the broadcast feature sees it."""

    def send_event(self, text: str) -> None:
        """Queue one event frame for the client without waiting."""


class Audience(Protocol):
    """The applications a broadcast may be offered to: this proxy's, or every replica's."""

    def apps(self) -> list[str]: ...

    def connected(self, app: str) -> bool: ...


class AppRegistry:
    """App name -> the socket that registered it last (Asterisk's ApplicationReplaced rule).
    `on_change` callbacks run when the set of names changes (replicas announce it)."""

    def __init__(self) -> None:
        self._apps: dict[str, EventSink] = {}
        self.on_change: list[Callable[[], None]] = []

    def __len__(self) -> int:
        return len(self._apps)

    def register(self, sink: EventSink, apps: list[str]) -> None:
        new = any(app not in self._apps for app in apps)
        for app in apps:
            self._apps[app] = sink
        if new:
            self._changed()

    def unregister(self, sink: EventSink, apps: list[str]) -> None:
        gone = False
        for app in apps:
            if self._apps.get(app) is sink:
                del self._apps[app]
                gone = True
        if gone:
            self._changed()

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()

    def connected(self, app: str) -> bool:
        return app in self._apps

    def sink_for(self, app: str) -> EventSink | None:
        return self._apps.get(app)

    def apps(self) -> list[str]:
        return list(self._apps)
