"""Which applications are connected through the proxy, and on which downstream socket."""

from __future__ import annotations

from typing import Protocol

__all__ = ["AppRegistry", "EventSink"]


class EventSink(Protocol):
    """A downstream events socket, as the broadcast feature sees it."""

    def send_event(self, text: str) -> None:
        """Queue one event frame for the client without waiting."""


class AppRegistry:
    """App name -> the socket that registered it last (Asterisk's ApplicationReplaced rule)."""

    def __init__(self) -> None:
        self._apps: dict[str, EventSink] = {}

    def __len__(self) -> int:
        return len(self._apps)

    def register(self, sink: EventSink, apps: list[str]) -> None:
        for app in apps:
            self._apps[app] = sink

    def unregister(self, sink: EventSink, apps: list[str]) -> None:
        for app in apps:
            if self._apps.get(app) is sink:
                del self._apps[app]

    def sink_for(self, app: str) -> EventSink | None:
        return self._apps.get(app)

    def apps(self) -> list[str]:
        return list(self._apps)
