"""The drop-in subroutine's own dialplan steps, which native does not have.

Natively a broadcast is one dialplan line: `StasisBroadcast(data)` sets STASISSTATUS to
empty when it starts and to its verdict when it ends. Through the proxy the same line is a
`Gosub(<subroutine>,s,1(data))` that sets LOCAL(ARGn), runs Stasis(<broadcast app>), a label
and a Return that clears the arguments and sets GOSUB_RETVAL. An application that watches
every channel (`subscribeAll`) sees those steps as ChannelDialplan and ChannelVarset events.

`Plumbing` tells which of them to drop and rewrites the Gosub line as native's line, from
each event's own snapshot (the subroutine's steps can run before the proxy has seen the
channel). Of the STASISSTATUS values set inside the subroutine only native's two remain:
the empty one when Stasis(<broadcast app>) starts, and the verdict. The value Stasis() leaves
as it returns is the verdict only when the proxy handed the call over with `move` (the
winner's session then ran in place); the proxy says which calls those are.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

__all__ = ["Plumbing"]

_GOSUB_ARGUMENT = re.compile(r"^LOCAL\(ARG(?:\d+|C)\)$")
_MOVED_KEPT = 4096  # channels handed over with `move` whose Stasis() exit is still due


class Plumbing:
    def __init__(self, broadcast_app: str, subroutine_context: str) -> None:
        self._app = broadcast_app
        self._context = subroutine_context
        self._call = f"{subroutine_context},s,1"
        self._moved: OrderedDict[str, None] = OrderedDict()

    def marker(self) -> str:
        """A substring every event this concerns contains (cheap to test on every frame)."""
        return self._context

    def moved(self, channel_id: str) -> None:
        """The proxy hands the channel over with `move`: the STASISSTATUS that
        Stasis(<broadcast app>) sets as it returns is the winner's verdict."""
        self._moved[channel_id] = None
        if len(self._moved) > _MOVED_KEPT:
            self._moved.popitem(last=False)

    def drops(self, event: dict[str, Any]) -> bool:
        """Whether the event is the subroutine's plumbing (rewrites a Gosub line in place)."""
        kind = event.get("type")
        channel = event.get("channel")
        if not isinstance(channel, dict):
            return False
        dialplan = channel.get("dialplan")
        if not isinstance(dialplan, dict):
            return False
        if dialplan.get("context") == self._context:
            if kind == "ChannelDialplan":
                return True
            if kind == "ChannelVarset":
                return self._inner_variable(str(channel.get("id", "")), dialplan, event)
            return False
        if dialplan.get("app_name") == "Gosub" and self._is_call(dialplan.get("app_data")):
            if kind == "ChannelVarset" and _GOSUB_ARGUMENT.match(str(event.get("variable"))):
                return True
            self._rewrite_call(event, dialplan)
        return False

    def _inner_variable(
        self, channel_id: str, dialplan: dict[str, Any], event: dict[str, Any]
    ) -> bool:
        if event.get("variable") != "STASISSTATUS":
            return True  # Return's ARGn and GOSUB_RETVAL, the h extension's own
        value = str(event.get("value", ""))
        app, data = dialplan.get("app_name"), str(dialplan.get("app_data", ""))
        if dialplan.get("exten") == "h":
            return value != "TIMEOUT"  # only a hangup during the broadcast sets one natively
        if app != "Stasis":
            return False  # the timeout and failed labels: the verdict
        if data == self._app or data.startswith(self._app + ","):
            if value == "":
                return False  # as native's StasisBroadcast() starting
            if channel_id in self._moved:
                del self._moved[channel_id]
                return False  # the winner's session ended in place: the verdict
            return True  # Stasis() returning to a label (continued) or for a hangup
        return value == ""  # Stasis(<winner>) starting after the claimed label

    def _is_call(self, data: Any) -> bool:
        text = str(data or "")
        return text == self._call or (text.startswith(self._call + "(") and text.endswith(")"))

    def _rewrite_call(self, event: dict[str, Any], dialplan: dict[str, Any]) -> None:
        data = str(dialplan.get("app_data", ""))
        native = data[len(self._call) + 1 : -1] if data != self._call else ""
        dialplan["app_name"] = "StasisBroadcast"
        dialplan["app_data"] = native
        if event.get("type") == "ChannelDialplan":
            event["dialplan_app"] = "StasisBroadcast"
            event["dialplan_app_data"] = native
