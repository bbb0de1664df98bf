"""What a `subscribeAll` application sees of a broadcast call, natively and through the proxy.

Natively the call runs one dialplan line, `StasisBroadcast()`; through the proxy it runs the
drop-in subroutine (a Gosub, Stasis(broadcast), labels, a Return). An application that
watches every channel must see the same channel events either way: the same dialplan steps,
the same variables set, each snapshot where native's is.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from ..ari import Ari, events
from .scenarios import Target, claim, place_call, result

CHANNEL_EVENTS = {
    "ChannelCreated",
    "ChannelVarset",
    "ChannelDialplan",
    "ChannelStateChange",
    "ChannelHangupRequest",
    "ChannelDestroyed",
}


def seen(event: dict[str, Any], target: Target, token: str) -> tuple[Any, ...]:
    """One channel event, with what differs by construction (context, token) masked."""

    def mask(value: Any) -> Any:
        text = str(value).replace(target.context, "<caller>").replace(token, "<token>")
        return re.sub(r"(native|proxied) broadcast", "broadcast", text)

    dialplan = event["channel"]["dialplan"]
    where = tuple(
        mask(dialplan[k]) for k in ("context", "exten", "priority", "app_name", "app_data")
    )
    if event["type"] == "ChannelVarset":
        return ("ChannelVarset", event["variable"], mask(event["value"]), where)
    if event["type"] == "ChannelDialplan":
        return ("ChannelDialplan", event["dialplan_app"], mask(event["dialplan_app_data"]), where)
    return (event["type"], where)


async def watch(target: Target, data: str, end: str) -> list[tuple[Any, ...]]:
    """Place a call offered to `worker` only; end its broadcast by `end` (claim, timeout,
    hangup); everything a subscribeAll observer saw of the channel, until it was destroyed."""
    async with (
        events(target.app_base, "observer", subscribeAll="true") as observer,
        events(target.app_base, "worker") as worker,
    ):
        await asyncio.sleep(0.05)  # registration is asynchronous on Asterisk's side
        timeout, _, args = data.partition(",")
        call = await place_call(target, f"{timeout},^worker$,{args}")
        offer = await worker.wait_for("CallBroadcast")
        channel_id = offer["channel"]["id"]
        if end == "claim":
            assert (await claim(target.apps_ari, channel_id, "worker"))["status"] == 204
            await worker.wait_for("StasisStart")
            await target.apps_ari.http.post(f"channels/{channel_id}/continue")
        elif end == "hangup":
            await target.ari.http.delete(f"channels/{channel_id}")
        if end != "hangup":
            await result(target, call)
            await target.ari.http.delete(f"channels/{channel_id}")
        await observer.wait_for(
            lambda e: (
                e["type"] == "ChannelDestroyed" and e.get("channel", {}).get("id") == channel_id
            )
        )
        return [
            seen(e, target, call.token)
            for e in observer.received
            if e["type"] in CHANNEL_EVENTS and e.get("channel", {}).get("id") == channel_id
        ]


@pytest.mark.parametrize(
    ("data", "end"),
    [
        ("5000,a:b", "claim"),  # handed over with `move`
        ("5000,a::b", "claim"),  # an empty argument: handed over with `continue`
        ("300,", "timeout"),
        ("5000,", "hangup"),
    ],
    ids=["claimed-move", "claimed-continue", "timeout", "hangup"],
)
async def test_a_subscribe_all_observer_sees_what_it_sees_natively(
    targets: dict[str, Target], ari: Ari, data: str, end: str
) -> None:
    await ari.set_native_modules(True)
    native = await watch(targets["native"], data, end)
    await ari.set_native_modules(False)
    proxied = await watch(targets["proxy"], data, end)
    assert ("ChannelDialplan", "StasisBroadcast") in [e[:2] for e in native]
    if end == "hangup":
        # The one difference left: the subroutine's h extension sets STASISSTATUS=TIMEOUT
        # after Asterisk's second ChannelHangupRequest; native sets it just before.
        native, proxied = (
            [e for e in events if e[0] != "ChannelHangupRequest"]
            + sorted(e for e in events if e[0] == "ChannelHangupRequest")
            for events in (native, proxied)
        )
    assert proxied == native, "\n".join(
        ["native:", *map(str, native), "proxy:", *map(str, proxied)]
    )
