"""The two events the proxy writes itself, CallBroadcast and CallClaimed, in native's shape
(fields and key order of res_stasis_broadcast), and their fan-out to application sockets."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from ..registry import AppRegistry

__all__ = ["call_broadcast", "call_claimed", "fan_out"]


def call_broadcast(
    channel: dict[str, Any], called: str, timestamp: str, asterisk_id: str | None
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "CallBroadcast",
        "timestamp": timestamp,
        "channel": channel,
        "caller": (channel.get("caller") or {}).get("number", ""),
        "called": called,
    }
    if asterisk_id is not None:
        event["asterisk_id"] = asterisk_id
    return event


def call_claimed(
    channel: dict[str, Any], winner: str, timestamp: str, asterisk_id: str | None
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "CallClaimed",
        "timestamp": timestamp,
        "channel": channel,
        "winner_app": winner,
    }
    if asterisk_id is not None:
        event["asterisk_id"] = asterisk_id
    return event


def fan_out(event: dict[str, Any], apps: Iterable[str], registry: AppRegistry) -> int:
    """Serialize once, stamp `application` per recipient (as Asterisk's websocket layer
    does), queue it on each app's socket without waiting. Returns how many were queued."""
    prefix = orjson.dumps(event)[:-1].decode() + ',"application":'
    sent = 0
    for app in apps:
        sink = registry.sink_for(app)
        if sink is not None:
            sink.send_event(prefix + orjson.dumps(app).decode() + "}")
            sent += 1
    return sent
