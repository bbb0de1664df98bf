"""Closing a client's `subscribeAll` events socket without wedging Asterisk's ARI.

Asterisk 22.10 deadlocks ARI when a `subscribeAll` application's socket closes while a
device-state event is still queued for it (asterisk/asterisk#2170): the socket's teardown
holds the ARI session lock while it joins the application's subscription to every device
state, and the queued event's delivery waits for that same lock. From then on every
`GET /applications` and every `subscribeAll` registration hangs, for every client and for
the proxy's own guard, until Asterisk restarts. Device states change on every call (a
channel's endpoint goes in use and back), so busy servers hit it.

Unsubscribed over REST first, the join happens without the session lock, and the teardown
then has nothing to join. The proxy does that for each application a client's
`subscribeAll` socket still holds (not one another socket replaced: that subscription is
the other socket's now), just before it closes the upstream socket. Bounded: a server that
does not answer in time gets the close anyway.
"""

from __future__ import annotations

import asyncio
import logging

from .broadcast.dialplan import ast_true
from .errors import ProxyError
from .event_session import EventSession
from .registry import AppRegistry
from .upstream.rest import AriRest

__all__ = ["ALL_DEVICE_STATES", "DeviceStatesRelease"]

log = logging.getLogger(__name__)

# How Asterisk names a subscribeAll application's subscription to every device's state.
ALL_DEVICE_STATES = "deviceState:__AST_DEVICE_STATE_ALL_TOPIC"
RELEASE_TIMEOUT = 2.0


class DeviceStatesRelease:
    """EventSession's `before_close` for subscribeAll sockets."""

    def __init__(self, rest: AriRest, registry: AppRegistry) -> None:
        self._rest = rest
        self._registry = registry

    async def __call__(self, session: EventSession) -> None:
        if not ast_true(session.query.get("subscribeAll", "")):
            return
        for app in session.apps:
            if self._registry.sink_for(app) is not session:
                continue  # replaced: the subscription belongs to the other socket
            try:
                async with asyncio.timeout(RELEASE_TIMEOUT):
                    await self._rest.call(
                        "DELETE",
                        f"applications/{app}/subscription",
                        {"eventSource": ALL_DEVICE_STATES},
                    )
            except (ProxyError, TimeoutError) as exc:
                log.warning("%s: device states not released before the close: %s", app, exc)
