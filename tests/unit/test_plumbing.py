"""The drop-in subroutine's own steps, dropped or rewritten from each event's snapshot (the
live comparison with native is tests/integration/test_subscribe_all.py)."""

from __future__ import annotations

from typing import Any

import pytest

from ari_broadcast_proxy.broadcast.plumbing import Plumbing

CALL = "stasis-broadcast,s,1(5000,,a:b)"
ENTRY = "broadcast,3,caller,PXM=,2,PTUwMDA=,PQ==,PWE6Yg==,PQ=="


def event(kind: str, context: str, app: str, data: str, exten: str = "s", **extra: Any) -> dict:
    dialplan = {
        "context": context,
        "exten": exten,
        "priority": 1,
        "app_name": app,
        "app_data": data,
    }
    return {"type": kind, "channel": {"id": "1.1", "dialplan": dialplan}, **extra}


def varset(context: str, app: str, data: str, name: str, value: str, exten: str = "s") -> dict:
    return event("ChannelVarset", context, app, data, exten, variable=name, value=value)


@pytest.mark.parametrize(
    ("message", "dropped"),
    [
        (event("ChannelDialplan", "stasis-broadcast", "Stasis", ENTRY), True),
        (event("ChannelDialplan", "stasis-broadcast", "Return", ""), True),
        (varset("caller", "Gosub", CALL, "LOCAL(ARG1)", "5000"), True),
        (varset("caller", "Gosub", CALL, "LOCAL(ARGC)", "3"), True),
        (varset("stasis-broadcast", "Return", "", "GOSUB_RETVAL", ""), True),
        (varset("stasis-broadcast", "Stasis", ENTRY, "STASISSTATUS", ""), False),
        # Stasis(broadcast) returning after a `continue` (or a hangup): not the verdict.
        (varset("stasis-broadcast", "Stasis", ENTRY, "STASISSTATUS", "SUCCESS"), True),
        (
            varset("stasis-broadcast", "Set", "STASISSTATUS=TIMEOUT", "STASISSTATUS", "TIMEOUT"),
            False,
        ),
        (varset("stasis-broadcast", "Stasis", "winner,a", "STASISSTATUS", ""), True),
        (varset("stasis-broadcast", "Stasis", "winner,a", "STASISSTATUS", "SUCCESS"), False),
        (varset("stasis-broadcast", "Set", "x", "STASISSTATUS", "TIMEOUT", exten="h"), False),
        (varset("stasis-broadcast", "Set", "x", "STASISSTATUS", "SUCCESS", exten="h"), True),
        (varset("caller", "Set", "X=1", "X", "1"), False),
        (event("ChannelDialplan", "caller", "Gosub", "other,s,1(x)"), False),
    ],
)
def test_the_subroutines_steps(message: dict, dropped: bool) -> None:
    assert Plumbing("broadcast", "stasis-broadcast").drops(message) is dropped


def test_stasis_returning_after_a_move_is_the_verdict() -> None:
    plumbing = Plumbing("broadcast", "stasis-broadcast")
    plumbing.moved("1.1")
    assert not plumbing.drops(
        varset("stasis-broadcast", "Stasis", ENTRY, "STASISSTATUS", "SUCCESS")
    )
    # Once: a later broadcast of the same channel that is continued drops it again.
    assert plumbing.drops(varset("stasis-broadcast", "Stasis", ENTRY, "STASISSTATUS", "SUCCESS"))


def test_the_gosub_line_reads_as_native_stasis_broadcast() -> None:
    message = event("ChannelDialplan", "caller", "Gosub", CALL)
    message |= {"dialplan_app": "Gosub", "dialplan_app_data": CALL}
    assert not Plumbing("broadcast", "stasis-broadcast").drops(message)
    assert message["dialplan_app"] == "StasisBroadcast"
    assert message["dialplan_app_data"] == "5000,,a:b"
    assert message["channel"]["dialplan"]["app_name"] == "StasisBroadcast"
    assert message["channel"]["dialplan"]["app_data"] == "5000,,a:b"
