"""How a proxied broadcast looks to applications: exactly as native StasisBroadcast.

The channel really sits in `Stasis(<broadcast app>,...)` (direct form) or in the drop-in
subroutine's context, and after the hand-over in `Stasis(<winner>)` there. Native shows the
dialplan location where `StasisBroadcast()` runs, with `app_name` `StasisBroadcast` and the
raw application data. `Invocation` records that location; `Presenter` rewrites every channel
snapshot of a broadcast channel in events and REST bodies, and drops the proxy's own
`ARI_BROADCAST_*` variable events and the subroutine's own steps (plumbing.py).
"""

from __future__ import annotations

import base64
import functools
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from .plumbing import Plumbing

__all__ = ["Invocation", "Presenter", "asterisk_timestamp", "parse_invocation"]

INTERNAL_VARIABLE_PREFIX = "ARI_BROADCAST_"
_MAX_NATIVE_FIELDS = 4


class InvocationError(ValueError):
    """A StasisStart in the broadcast application that neither form produced."""


@dataclass(frozen=True)
class Invocation:
    """Where and how the dialplan asked for the broadcast."""

    form: Literal["subroutine", "direct"]
    raw_data: str  # StasisBroadcast()'s application data, as native would have received it
    context: str
    exten: str
    priority: int

    def dialplan(self) -> dict[str, Any]:
        return {
            "context": self.context,
            "exten": self.exten,
            "priority": self.priority,
            "app_name": "StasisBroadcast",
            "app_data": self.raw_data,
        }


def parse_invocation(event: dict[str, Any], subroutine_context: str) -> Invocation:
    """Read the invocation from the broadcast application's StasisStart event."""
    dialplan = event["channel"]["dialplan"]
    args: list[str] = event.get("args") or []
    if dialplan["context"] != subroutine_context:
        _, _, raw = dialplan.get("app_data", "").partition(",")
        return Invocation(
            "direct", raw, dialplan["context"], dialplan["exten"], dialplan["priority"]
        )
    return _subroutine_invocation(tuple(args), subroutine_context)


@functools.lru_cache(maxsize=1024)
def _subroutine_invocation(args: tuple[str, ...], subroutine_context: str) -> Invocation:
    """The subroutine's Stasis() arguments: ARGC, caller context, b64("=" + caller exten),
    caller priority, b64("=" + ARG1) .. b64("=" + ARG4)."""
    if len(args) != 8 or not args[0].isdigit() or not args[3].isdigit():
        raise InvocationError(
            f"unexpected arguments from the {subroutine_context} subroutine: {args!r}"
        )
    argc = int(args[0])
    fields = [_unwrap(a) for a in args[4:]][: min(argc, _MAX_NATIVE_FIELDS)]
    raw = ",".join(fields)
    if argc > _MAX_NATIVE_FIELDS:
        raw += ","  # native's notify_claimed field would hold the rest, so it cannot be true
    return Invocation("subroutine", raw, args[1], _unwrap(args[2]), int(args[3]))


@functools.lru_cache(maxsize=1024)
def _unwrap(value: str) -> str:
    """Undo the subroutine's BASE64_ENCODE(=...) (remembered: the same few values repeat)."""
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise InvocationError(f"argument is not the subroutine's base64: {value!r}") from None
    if not decoded.startswith("="):
        raise InvocationError(f"argument lacks the subroutine's '=' prefix: {value!r}")
    return decoded[1:]


def asterisk_timestamp(now: float | None = None) -> str:
    """Asterisk's event timestamp format, local time: 2026-11-22T03:31:44.347+0000."""
    now = time.time() if now is None else now
    local = time.localtime(now)
    millis = int((now % 1) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", local) + f".{millis:03d}" + time.strftime("%z", local)


class Presenter:
    """Rewrites snapshots of channels under broadcast so they read as native's."""

    def __init__(self, broadcast_app: str, subroutine_context: str) -> None:
        self._invocations: dict[str, Invocation] = {}
        self._broadcast_app = broadcast_app
        self._subroutine_context = subroutine_context
        # Substrings a snapshot of ours must contain; cheap to test on every frame. Inside a
        # RESTResponse's message_body (a JSON string) the quotes are escaped.
        self._markers = (f'"{subroutine_context}"', f'"{broadcast_app},', f'"{broadcast_app}"')
        self._escaped = tuple(m.replace('"', '\\"') for m in self._markers)
        self.plumbing = Plumbing(broadcast_app, subroutine_context)

    def __len__(self) -> int:
        return len(self._invocations)

    def remember(self, channel_id: str, invocation: Invocation) -> None:
        self._invocations[channel_id] = invocation

    def forget(self, channel_id: str, invocation: Invocation | None = None) -> None:
        """Stop rewriting the channel's snapshots (only if they are still those of
        `invocation`, when given: the channel may have entered a broadcast again)."""
        if invocation is None or self._invocations.get(channel_id) is invocation:
            self._invocations.pop(channel_id, None)

    def channel(self, channel: dict[str, Any]) -> dict[str, Any]:
        """Rewrite one snapshot in place (if it belongs to a broadcast) and return it."""
        dialplan = channel.get("dialplan")
        if not isinstance(dialplan, dict):
            return channel
        invocation = self._invocations.get(channel.get("id", "")) or self._entering(dialplan)
        if invocation is not None and self._is_ours(dialplan):
            channel["dialplan"] = invocation.dialplan()
        return channel

    def _entering(self, dialplan: dict[str, Any]) -> Invocation | None:
        """The invocation of a snapshot taken at the subroutine's Stasis(<broadcast app>)
        line, read from that line's own data: its first events come before the proxy has
        seen the channel's StasisStart."""
        data = dialplan.get("app_data", "")
        if (
            dialplan.get("context") != self._subroutine_context
            or dialplan.get("app_name") != "Stasis"
            or not isinstance(data, str)
            or not data.startswith(self._broadcast_app + ",")
        ):
            return None
        try:
            return _subroutine_invocation(tuple(data.split(",")[1:]), self._subroutine_context)
        except InvocationError:
            return None

    def _is_ours(self, dialplan: dict[str, Any]) -> bool:
        if dialplan.get("context") == self._subroutine_context:
            return True
        app_data = dialplan.get("app_data", "")
        return dialplan.get("app_name") == "Stasis" and (
            app_data == self._broadcast_app or app_data.startswith(self._broadcast_app + ",")
        )

    def _has_snapshots_of_ours(self, text: str) -> bool:
        return bool(self._invocations) and (
            any(marker in text for marker in self._markers)
            or ('"RESTResponse"' in text and any(marker in text for marker in self._escaped))
        )

    def frame(self, text: str, message: Any = None) -> str | None:
        """An upstream events frame as the client must see it; None drops it. `message` is
        `text` already parsed, if the caller has it (it may be rewritten in place)."""
        internal = INTERNAL_VARIABLE_PREFIX in text
        plumbing = self._subroutine_context in text
        if not internal and not plumbing and not self._has_snapshots_of_ours(text):
            return text
        if message is None:
            message = orjson.loads(text)
        if not isinstance(message, dict):
            return text
        variable = str(message.get("variable", "")).removeprefix("LOCAL(")
        if internal and variable.startswith(INTERNAL_VARIABLE_PREFIX):
            return None  # ChannelVarset of the proxy's own variables (LOCAL() ones too)
        if plumbing and self.plumbing.drops(message):
            return None  # the drop-in subroutine's own steps
        body = message.get("message_body")
        if message.get("type") == "RESTResponse" and isinstance(body, str):
            message["message_body"] = self.body(body.encode()).decode()  # REST over WebSocket
        else:
            self._walk(message)
        return orjson.dumps(message).decode()

    def body(self, content: bytes) -> bytes:
        """A REST response body (a channel or a list of channels) as the client must see it."""
        if not self._has_snapshots_of_ours(content.decode("utf-8", "replace")):
            return content
        data = orjson.loads(content)
        self._walk(data)
        return orjson.dumps(data)

    def _walk(self, value: Any) -> None:
        if isinstance(value, dict):
            if "dialplan" in value and "id" in value:
                self.channel(value)
            for item in value.values():
                if isinstance(item, dict | list):
                    self._walk(item)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict | list):
                    self._walk(item)
