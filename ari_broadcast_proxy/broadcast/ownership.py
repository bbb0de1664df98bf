"""The broadcast application is the proxy's alone, on Asterisk too.

Clients cannot reach it through the proxy, but anyone with ARI access straight to Asterisk
can: an event filter or a subscription set there survives the proxy's reconnects (Asterisk
keeps them on the application), and a second socket registering the name takes the calls.
The guard reads what Asterisk holds for the application and puts back what the proxy needs:
no event filter, no subscription besides its own calls. The controller runs it each time it
registers the application and every GUARD_INTERVAL seconds after.
"""

from __future__ import annotations

import logging

import orjson

from ..config import Upstream
from ..errors import ProxyError
from ..upstream.rest import UpstreamRest

__all__ = ["GUARD_INTERVAL", "AppGuard"]

log = logging.getLogger(__name__)

GUARD_INTERVAL = 5.0
# How Asterisk lists a subscription to every channel (eventSource `channel:`).
_ALL_CHANNELS = "__AST_CHANNEL_ALL_TOPIC"
_NO_FILTER = orjson.dumps({"allowed": [], "disallowed": []})
_SOURCES = (("endpoint_ids", "endpoint"), ("bridge_ids", "bridge"), ("device_names", "deviceState"))


class AppGuard:
    def __init__(self, rest: UpstreamRest, app: str) -> None:
        self._rest = rest
        self._app = app
        self._path = f"applications/{app}"

    @property
    def upstream(self) -> Upstream:
        """The server this guard keeps the application on."""
        return self._rest.upstream

    async def parked(self) -> list[str]:
        """The channels in the application on this server (ProxyError if it cannot say)."""
        response = await self._rest.call("GET", self._path)
        if response.status_code == 404:
            return []
        if response.status_code != 200:
            raise ProxyError(f"GET {self._path} -> {response.status_code}", 502)
        return list(response.json().get("channel_ids", []))

    async def registered(self) -> bool:
        """Whether any socket holds the application on Asterisk right now."""
        response = await self._rest.call("GET", self._path)
        if response.status_code not in (200, 404):
            raise ProxyError(f"GET {self._path} -> {response.status_code}", 502)
        return response.status_code == 200

    async def enforce(self) -> list[str]:
        """Clear any event filter and any subscription that is not the proxy's own; what
        was cleared (empty when all was as it should be or the application is not there)."""
        response = await self._rest.call("GET", self._path)
        if response.status_code != 200:
            return []
        state = response.json()
        cleared: list[str] = []
        if state.get("events_allowed") or state.get("events_disallowed"):
            await self._put_no_filter()
            cleared.append("event filter")
        sources = [f"{kind}:{name}" for key, kind in _SOURCES for name in state.get(key) or ()]
        if _ALL_CHANNELS in (state.get("channel_ids") or ()):
            sources.append(f"channel:{_ALL_CHANNELS}")  # "channel:" subscribes, not this
        for source in sources:
            await self._rest.call("DELETE", f"{self._path}/subscription", {"eventSource": source})
            cleared.append(f"subscription {source}")
        return cleared

    async def _put_no_filter(self) -> None:
        response = await self._rest.call("PUT", f"{self._path}/eventFilter", json=_NO_FILTER)
        if response.status_code != 200:
            raise ProxyError(f"PUT {self._path}/eventFilter -> {response.status_code}", 502)
