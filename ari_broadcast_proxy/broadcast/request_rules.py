"""What a client may not do through the proxy, over HTTP and REST over WebSocket alike.

Natively a call on offer belongs to no Stasis application, the broadcast application does
not exist and the ARI_BROADCAST_* variables are never set. Through the proxy all three exist
on Asterisk, so the proxy answers for Asterisk where they would show:

- an operation that needs Stasis control of a channel on offer gets native's refusal (409,
  or 422 from the bridge operations), measured operation by operation against native;
- a request naming the proxy's application: `applications/<it>` answers as for an
  application that does not exist, an `app`/`application` parameter gets 403;
- ARI_BROADCAST_* variables (any case, also inside a function such as GLOBAL()) cannot be
  written (403), and read as if they did not exist.

Decisions are made on the request as Asterisk reads it (`AriCall`, see ari_request.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import orjson

from ..ari_request import AriCall
from ..errors import ProxyError, Reserved
from .dialplan import separate_args
from .presentation import INTERNAL_VARIABLE_PREFIX

__all__ = [
    "APP_NOT_FOUND",
    "NOT_IN_STASIS",
    "UNSET_VARIABLE",
    "VARIABLE_NOT_FOUND",
    "RequestRules",
    "hides_variable",
    "unset_reserved",
    "without_reserved_variables",
]

NOT_IN_STASIS = "Channel not in Stasis application"  # Asterisk's message for both codes
APP_NOT_FOUND = "Application not found"
VARIABLE_NOT_FOUND = "Provided variable was not found"
# A name no client can set (writes of the prefix are refused) and the proxy never sets: a
# read of a reserved variable is sent to Asterisk as a read of this one, so the client gets
# Asterisk's own answer for a variable that does not exist.
UNSET_VARIABLE = "ARI_BROADCAST_UNSET"

# channels/{id}/<op>: operations Asterisk refuses with 409 on a channel in no Stasis
# application (any method but GET; measured natively, see test_offer_ownership.py).
_CHANNEL_CONTROL = frozenset(
    {
        "continue",
        "move",
        "redirect",
        "answer",
        "ring",
        "progress",
        "dtmf",
        "mute",
        "hold",
        "moh",
        "silence",
        "play",
        "record",
        "variable",
        "variables",
        "dial",
        "transfer_progress",
    }
)
# bridges/{id}/<op>: operations Asterisk refuses with 422 for a channel in no application.
_BRIDGE_CHANNEL_PARAM = frozenset({"addChannel", "removeChannel"})
_BRIDGE_CHANNEL_PATH = "videoSource"


def hides_variable(name: str) -> bool:
    return INTERNAL_VARIABLE_PREFIX in name.upper()


def unset_reserved(name: str, value: str) -> str:
    """A `variable`/`variables` parameter with every reserved name made UNSET_VARIABLE."""
    if name == "variable":
        return UNSET_VARIABLE if hides_variable(value) else value
    if name == "variables":
        return ",".join(UNSET_VARIABLE if hides_variable(v) else v for v in value.split(","))
    return value


class RequestRules:
    def __init__(self, reserved_app: str, is_locked: Callable[[str], bool]) -> None:
        self._app = reserved_app
        self._is_locked = is_locked

    def names_reserved_app(self, call: AriCall) -> bool:
        """`applications/<the proxy's application>[/...]`: answered as if it did not exist."""
        return len(call.segments) >= 2 and call.segments[:2] == ("applications", self._app)

    def refusal(self, call: AriCall) -> ProxyError | None:
        """The proxy's answer instead of Asterisk's, or None to forward the request."""
        claim = call.segments == ("events", "claim")
        for param in ("app",) if claim else ("app", "application"):
            if any(self._names_app(value) for value in call.values(param)):
                return Reserved("Application", self._app)
        if call.method != "GET":
            for name in call.variable_names():
                if hides_variable(name):
                    return Reserved("Variable", name)
        return self._on_offer(call)

    def _names_app(self, value: str) -> bool:
        """Whether an `app` value reaches the proxy's application: originate, create and
        external media run the Stasis dialplan application on "<app>,<appArgs>", which
        splits it (quotes and backslashes removed) and takes the first part."""
        first = separate_args(value, 2)
        return value == self._app or (bool(first) and first[0] == self._app)

    def reads_reserved_variable(self, call: AriCall) -> bool:
        """A GET of an ARI_BROADCAST_* variable (to be read as one that does not exist)."""
        return call.method == "GET" and any(hides_variable(n) for n in call.variable_names())

    def _on_offer(self, call: AriCall) -> ProxyError | None:
        segments = call.segments
        if call.method == "GET" or len(segments) < 3:
            return None
        if segments[0] == "channels" and segments[2] in _CHANNEL_CONTROL:
            return self._locked(409, [segments[1]])
        if segments[0] != "bridges":
            return None
        if segments[2] in _BRIDGE_CHANNEL_PARAM:
            return self._locked(422, _channel_list(call.values("channel")))
        if segments[2] == _BRIDGE_CHANNEL_PATH and len(segments) >= 4:
            return self._locked(422, [segments[3]])
        return None

    def _locked(self, status: int, channel_ids: Iterable[str]) -> ProxyError | None:
        if any(self._is_locked(channel_id) for channel_id in channel_ids):
            return ProxyError(NOT_IN_STASIS, status)
        return None

    def without_reserved_app(self, content: bytes) -> bytes:
        """A `GET applications` list without the proxy's application."""
        try:
            apps = orjson.loads(content)
        except orjson.JSONDecodeError:
            return content
        if not isinstance(apps, list):
            return content
        kept = [a for a in apps if not (isinstance(a, dict) and a.get("name") == self._app)]
        return content if len(kept) == len(apps) else orjson.dumps(kept)

    @staticmethod
    def released_channel(call: AriCall) -> str | None:
        """The channel whose Stasis session a successful `continue` or hangup ends."""
        segments = call.segments
        if call.method == "POST" and len(segments) == 3 and segments[2] == "continue":
            return segments[1] if segments[0] == "channels" else None
        if call.method == "DELETE" and len(segments) == 2 and segments[0] == "channels":
            return segments[1]
        return None


def _channel_list(values: list[str]) -> set[str]:
    """Every channel id a list parameter may name: Asterisk splits it with
    ast_app_separate_args (quotes removed, nothing trimmed); plain commas too, to be safe.
    Asterisk refuses the whole list at its first bad channel, in order: a list naming a
    call on offer after a missing channel gets 422 here where native says 400 about the
    missing one (the proxy cannot tell without asking)."""
    names: set[str] = set()
    for value in values:
        names.update(value.split(","))
        names.update(separate_args(value, 1024))
    return names


def without_reserved_variables(content: bytes) -> bytes:
    """A `GET channels/{id}/variables` answer without the proxy's variables."""
    try:
        document = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content
    variables = document.get("variables") if isinstance(document, dict) else None
    if not isinstance(variables, dict) or not any(hides_variable(k) for k in variables):
        return content
    document["variables"] = {k: v for k, v in variables.items() if not hides_variable(k)}
    return orjson.dumps(document)
