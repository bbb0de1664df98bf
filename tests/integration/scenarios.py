"""Broadcast scenarios written once and run against two targets on the same Asterisk:

- native: applications connect to Asterisk itself, the dialplan runs StasisBroadcast(),
  res_stasis_broadcast/app_stasis_broadcast are loaded;
- proxy:  applications connect to the proxy, the dialplan runs the drop-in subroutine,
  the native modules are unloaded.

Each scenario returns an observation: what every application saw (event types and fields,
with ids and timestamps replaced), what every claim got (status and body), the winner's
StasisStart args, the final STASISSTATUS and coarse timings. The test asserts the two
observations are equal, and checks the native one against the spec.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..ari import Ari, Events, events, token

Observation = dict[str, Any]


@dataclass
class Target:
    name: str
    app_base: str  # where applications connect (Asterisk or the proxy)
    context: str  # dialplan context that runs the broadcast
    ari: Ari  # straight to Asterisk: originate, globals
    apps_ari: Ari  # the applications' own REST client (claims, control calls)
    # Inherited by the call's channels, e.g. __ARI_BROADCAST_APP for a second proxy.
    call_variables: dict[str, str] = field(default_factory=dict)


@dataclass
class Call:
    token: str
    started: float
    channel_id: str = ""


async def place_call(target: Target, data: str, context: str | None = None) -> Call:
    """Originate Local/s@<context>; the ;2 leg runs the broadcast with `data`."""
    call = Call(token(), time.monotonic())
    await target.ari.originate(
        f"Local/s@{context or target.context}",
        variables={**target.call_variables, "__BCAST_DATA": data, "__BCAST_TOKEN": call.token},
    )
    return call


async def result(target: Target, call: Call, timeout: float = 10) -> tuple[str, float]:
    """STASISSTATUS after the broadcast, and seconds from origination to it."""
    value = await target.ari.wait_global(f"BCAST_RESULT_{call.token}", timeout)
    return value, time.monotonic() - call.started


async def win_and_let_go(
    target: Target, client: Events, channel_id: str, app: str, call: Call
) -> dict[str, Any]:
    """Claim the call for `app` (204), wait for its StasisStart, let the channel go with
    `continue` and check that the dialplan got SUCCESS; the StasisStart event."""
    assert (await claim(target.apps_ari, channel_id, app))["status"] == 204
    start = await client.wait_for("StasisStart")
    await target.apps_ari.http.post(f"channels/{channel_id}/continue")
    assert (await result(target, call))[0] == "SUCCESS"
    return start


def bucket(seconds: float) -> str:
    """Coarse timing: what an application could notice, not scheduler noise."""
    for limit in (0.3, 0.8, 1.6, 3.0):
        if seconds < limit:
            return f"<{limit}s"
    return ">=3s"


def shape(event: dict[str, Any], target: Target, ids: dict[str, str]) -> dict[str, Any]:
    """The parts of an event an application depends on, comparable across targets."""
    out: dict[str, Any] = {
        "type": event["type"],
        "keys": sorted(k for k in event if k != "_received"),
    }
    for key in ("application", "caller", "called", "winner_app", "args"):
        if key in event:
            out[key] = event[key]
    channel = event.get("channel")
    if isinstance(channel, dict):
        dialplan = dict(channel.get("dialplan", {}))
        if dialplan.get("context", "").startswith(target.context):
            dialplan["context"] = "<caller context>"
        out["channel"] = {
            "id": ids.setdefault(channel["id"], f"<channel {len(ids) + 1}>"),
            "state": channel.get("state"),
            "keys": sorted(channel),
            "dialplan": dialplan,
        }
    return out


async def claim(
    client: Ari, channel_id: str | None, app: str | None, **extra: Any
) -> dict[str, Any]:
    params = {k: v for k, v in (("channelId", channel_id), ("application", app)) if v is not None}
    response = await client.http.post("events/claim", params=params, **extra)
    body = response.json() if response.content else None
    return {"status": response.status_code, "body": body}


@contextlib.asynccontextmanager
async def apps(target: Target, *names: str, **query: str) -> AsyncIterator[dict[str, Events]]:
    """One events socket per name ("a,b" puts two apps on one socket)."""
    async with contextlib.AsyncExitStack() as stack:
        sockets = {
            n: await stack.enter_async_context(events(target.app_base, n, **query)) for n in names
        }
        await asyncio.sleep(0.05)  # registration is asynchronous on Asterisk's side
        yield sockets


def seen(
    sockets: dict[str, Events], target: Target, ids: dict[str, str], kinds: tuple[str, ...]
) -> dict[str, list]:
    """Per socket, the shaped events of the given types, in arrival order."""
    return {
        name: [shape(e, target, ids) for e in client.received if e["type"] in kinds]
        for name, client in sorted(sockets.items())
    }


BROADCAST_EVENTS = (
    "CallBroadcast",
    "CallClaimed",
    "StasisStart",
    "StasisEnd",
    "ChannelVarset",
    "ChannelStateChange",
    "ChannelDialplan",
)

Scenario = Callable[[Target], Awaitable[Observation]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(func: Scenario) -> Scenario:
    SCENARIOS[func.__name__] = func
    return func


async def _claim_and_release(target: Target, data: str, *, release: bool = True) -> Observation:
    """One app, one call: claim it, let it go with `continue`."""
    ids: dict[str, str] = {}
    async with apps(target, "solo") as sockets:
        call = await place_call(target, data)
        offer = await sockets["solo"].wait_for("CallBroadcast")
        won = await claim(target.apps_ari, offer["channel"]["id"], "solo")
        start = await sockets["solo"].wait_for("StasisStart")
        answered = await target.apps_ari.http.post(f"channels/{start['channel']['id']}/answer")
        if release:
            await target.apps_ari.http.post(f"channels/{start['channel']['id']}/continue")
        status, _ = await result(target, call)
        late = await claim(target.apps_ari, offer["channel"]["id"], "solo")
        await asyncio.sleep(0.1)
        return {
            "claim": won,
            "answer_after_claim": answered.status_code,
            "late_claim": late,
            "status": status,
            "events": seen(sockets, target, ids, BROADCAST_EVENTS),
        }


@scenario
async def success(target: Target) -> Observation:
    return await _claim_and_release(target, "5000")


@scenario
async def args_several(target: Target) -> Observation:
    return await _claim_and_release(target, "5000,,queue-a:vip:x y")


@scenario
async def args_empty_middle(target: Target) -> Observation:
    return await _claim_and_release(target, "5000,,a::c:")


@scenario
async def args_none(target: Target) -> Observation:
    return await _claim_and_release(target, "5000,,,no")


@scenario
async def race_of_six(target: Target) -> Observation:
    names = [f"racer-{i}" for i in range(6)]
    async with apps(target, *names) as sockets:
        call = await place_call(target, "5000")
        offers = await asyncio.gather(*(sockets[n].wait_for("CallBroadcast") for n in names))
        channel_id = offers[0]["channel"]["id"]
        claims = await asyncio.gather(*(claim(target.apps_ari, channel_id, n) for n in names))
        winners = [n for n, c in zip(names, claims, strict=True) if c["status"] == 204]
        start = await sockets[winners[0]].wait_for("StasisStart")
        await asyncio.sleep(0.2)
        starts = {n: len(sockets[n].of_type("StasisStart")) for n in names}
        await target.apps_ari.http.post(f"channels/{start['channel']['id']}/continue")
        status, _ = await result(target, call)
        return {
            "statuses": sorted(c["status"] for c in claims),
            "bodies": sorted(str(c["body"]) for c in claims),
            "broadcasts_per_app": {n: len(sockets[n].of_type("CallBroadcast")) for n in names},
            "stasis_starts": sorted(starts.values()),
            "winner_started": starts[winners[0]],
            "status": status,
        }


@scenario
async def filter_selects(target: Target) -> Observation:
    ids: dict[str, str] = {}
    async with apps(target, "ivr-main", "support", "my-ivr-app", "IVR-upper") as sockets:
        call = await place_call(target, "5000,^ivr-")
        offer = await sockets["ivr-main"].wait_for("CallBroadcast")
        refused = await claim(target.apps_ari, offer["channel"]["id"], "ivr-main")
        await sockets["ivr-main"].wait_for("StasisStart")
        await target.apps_ari.http.post(f"channels/{offer['channel']['id']}/continue")
        status, _ = await result(target, call)
        return {
            "claim": refused,
            "status": status,
            "events": seen(sockets, target, ids, ("CallBroadcast", "StasisStart")),
        }


@scenario
async def filter_unanchored_and_case_sensitive(target: Target) -> Observation:
    ids: dict[str, str] = {}
    async with apps(target, "ivr-main", "my-ivr-app", "IVR-upper", "sales|support") as sockets:
        call = await place_call(target, "600,ivr|sales")
        status, elapsed = await result(target, call)
        return {
            "status": status,
            "timing": bucket(elapsed),
            "events": seen(sockets, target, ids, ("CallBroadcast",)),
        }


@scenario
async def dangerous_regex_goes_to_everyone(target: Target) -> Observation:
    ids: dict[str, str] = {}
    async with apps(target, "alpha", "beta") as sockets:
        call = await place_call(target, "600,(a+)+(b+)+(c+)+(d+)+")
        status, _ = await result(target, call)
        return {"status": status, "events": seen(sockets, target, ids, ("CallBroadcast",))}


@scenario
async def uncompilable_regex_goes_to_everyone(target: Target) -> Observation:
    ids: dict[str, str] = {}
    async with apps(target, "alpha", "beta") as sockets:
        call = await place_call(target, "600,[unclosed")
        status, _ = await result(target, call)
        return {"status": status, "events": seen(sockets, target, ids, ("CallBroadcast",))}


@scenario
async def no_matching_application(target: Target) -> Observation:
    ids: dict[str, str] = {}
    async with apps(target, "alpha") as sockets:
        call = await place_call(target, "1000,^nobody$")
        status, elapsed = await result(target, call)
        return {
            "status": status,
            "timing": bucket(elapsed),
            "events": seen(sockets, target, ids, BROADCAST_EVENTS),
        }


@scenario
async def timeout_then_late_claim(target: Target) -> Observation:
    ids: dict[str, str] = {}
    async with apps(target, "sleepy") as sockets:
        call = await place_call(target, "550")  # 250 ms inside its timing bucket
        offer = await sockets["sleepy"].wait_for("CallBroadcast")
        status, elapsed = await result(target, call)
        late = await claim(target.apps_ari, offer["channel"]["id"], "sleepy")
        return {
            "status": status,
            "timing": bucket(elapsed),
            "late_claim": late,
            "events": seen(sockets, target, ids, BROADCAST_EVENTS),
        }


async def _timeout_value(target: Target, data: str) -> Observation:
    async with apps(target, "sleepy") as sockets:
        call = await place_call(target, data)
        await sockets["sleepy"].wait_for("CallBroadcast")
        status, elapsed = await result(target, call)
        return {"status": status, "timing": bucket(elapsed)}


@scenario
async def timeout_invalid_letters(target: Target) -> Observation:
    return await _timeout_value(target, "abc")


@scenario
async def timeout_invalid_negative(target: Target) -> Observation:
    return await _timeout_value(target, "-1")


@scenario
async def timeout_invalid_too_large(target: Target) -> Observation:
    return await _timeout_value(target, "60001")


@scenario
async def timeout_with_unit_suffix(target: Target) -> Observation:
    return await _timeout_value(target, "1200ms")


@scenario
async def timeout_zero(target: Target) -> Observation:
    return await _timeout_value(target, "0")


async def _notify(target: Target, flag: str) -> Observation:
    ids: dict[str, str] = {}
    async with apps(target, "agent-1", "agent-2", "other") as sockets:
        call = await place_call(target, f"5000,^agent-,,{flag}")
        offer = await sockets["agent-2"].wait_for("CallBroadcast")
        won = await claim(target.apps_ari, offer["channel"]["id"], "agent-2")
        await sockets["agent-2"].wait_for("StasisStart")
        await asyncio.sleep(0.2)
        await target.apps_ari.http.post(f"channels/{offer['channel']['id']}/continue")
        status, _ = await result(target, call)
        shaped = seen(sockets, target, ids, ("CallBroadcast", "CallClaimed", "StasisStart"))
        # CallClaimed and the winner's StasisStart race (native sends CallClaimed inside the
        # claim request): compare each socket's events as a sorted list.
        return {
            "claim": won,
            "status": status,
            "events": {k: sorted(v, key=str) for k, v in shaped.items()},
        }


@scenario
async def notify_on(target: Target) -> Observation:
    return await _notify(target, "yes")


@scenario
async def notify_on_uppercase_true(target: Target) -> Observation:
    return await _notify(target, "TRUE")


@scenario
async def notify_off(target: Target) -> Observation:
    return await _notify(target, "no")


@scenario
async def notify_leading_space_is_off(target: Target) -> Observation:
    return await _notify(target, " yes")


@scenario
async def bad_claims(target: Target) -> Observation:
    async with apps(target, "checker") as sockets:
        call = await place_call(target, "3000")
        offer = await sockets["checker"].wait_for("CallBroadcast")
        channel_id = offer["channel"]["id"]
        out = {
            "no_params": await claim(target.apps_ari, None, None),
            "no_channel": await claim(target.apps_ari, None, "checker"),
            "empty_channel": await claim(target.apps_ari, "", "checker"),
            "no_application": await claim(target.apps_ari, channel_id, None),
            "empty_application": await claim(target.apps_ari, channel_id, ""),
            "unknown_channel": await claim(target.apps_ari, "no-such-channel", "checker"),
            "channel_name": await claim(target.apps_ari, offer["channel"]["name"], "checker"),
            "bad_json": await claim(
                target.apps_ari,
                None,
                None,
                content=b"{nope",
                headers={"content-type": "application/json"},
            ),
            "json_body": await claim(
                target.apps_ari,
                None,
                None,
                json={"channelId": channel_id, "application": "checker"},
            ),
        }
        await sockets["checker"].wait_for("StasisStart")
        await target.apps_ari.http.post(f"channels/{channel_id}/continue")
        out["status"] = (await result(target, call))[0]
        return out


@scenario
async def hangup_during_broadcast(target: Target) -> Observation:
    async with apps(target, "watcher") as sockets:
        call = await place_call(target, "5000")
        offer = await sockets["watcher"].wait_for("CallBroadcast")
        channel_id = offer["channel"]["id"]
        hung_at = time.monotonic()
        await target.ari.http.delete(f"channels/{channel_id}")
        status = await target.ari.wait_global(f"BCAST_HANGUP_{call.token}")
        freed = time.monotonic() - hung_at
        late = await claim(target.apps_ari, channel_id, "watcher")
        return {
            "status": status,
            "freed": bucket(freed),
            "late_claim": late,
            "starts": len(sockets["watcher"].of_type("StasisStart")),
        }


@scenario
async def one_socket_several_apps(target: Target) -> Observation:
    ids: dict[str, str] = {}
    async with apps(target, "one,two") as sockets:
        call = await place_call(target, "5000")
        await sockets["one,two"].wait_for(
            lambda e: (
                len([x for x in sockets["one,two"].received if x["type"] == "CallBroadcast"]) == 2
            )
        )
        offers = sockets["one,two"].of_type("CallBroadcast")
        channel_id = offers[0]["channel"]["id"]
        first = await claim(target.apps_ari, channel_id, "two")
        second = await claim(target.apps_ari, channel_id, "one")
        start = await sockets["one,two"].wait_for("StasisStart")
        await target.apps_ari.http.post(f"channels/{channel_id}/continue")
        status, _ = await result(target, call)
        return {
            "claims": [first, second],
            "start_app": start["application"],
            "status": status,
            "applications": sorted(o["application"] for o in offers),
            "events": {
                k: sorted(v, key=str)
                for k, v in seen(sockets, target, ids, ("CallBroadcast",)).items()
            },
        }


@scenario
async def claim_over_rest_websocket(target: Target) -> Observation:
    async with apps(target, "wsclaim") as sockets:
        client = sockets["wsclaim"]
        call = await place_call(target, "5000")
        offer = await client.wait_for("CallBroadcast")
        channel_id = offer["channel"]["id"]
        import json

        for n, app in enumerate(("wsclaim", "wsclaim")):
            await client.socket.send(
                json.dumps(
                    {
                        "type": "RESTRequest",
                        "transaction_id": f"t{n}",
                        "request_id": f"r{n}",
                        "method": "POST",
                        "uri": f"events/claim?channelId={channel_id}&application={app}",
                    }
                )
            )
        await client.wait_for(lambda e: len(client.of_type("RESTResponse")) == 2)
        await client.socket.send(
            json.dumps(
                {
                    "type": "RESTRequest",
                    "transaction_id": "t9",
                    "request_id": "r9",
                    "method": "POST",
                    "uri": "events/claim?application=wsclaim",
                }
            )
        )
        await client.wait_for(lambda e: len(client.of_type("RESTResponse")) == 3)
        await client.wait_for("StasisStart")
        await target.apps_ari.http.post(f"channels/{channel_id}/continue")
        status, _ = await result(target, call)
        responses = [
            {
                k: r.get(k)
                for k in (
                    "transaction_id",
                    "request_id",
                    "status_code",
                    "reason_phrase",
                    "uri",
                    "content_type",
                    "message_body",
                    "application",
                )
            }
            | {"keys": sorted(k for k in r if k != "_received")}
            for r in client.of_type("RESTResponse")
        ]
        return {"responses": responses, "status": status}


@scenario
async def control_calls_before_the_claim(target: Target) -> Observation:
    async with apps(target, "eager") as sockets:
        call = await place_call(target, "5000")
        offer = await sockets["eager"].wait_for("CallBroadcast")
        channel_id = offer["channel"]["id"]
        out: dict[str, Any] = {}
        for action in ("answer", "ring", "hold", "moh", "continue", "play?media=sound:beep"):
            response = await target.apps_ari.http.post(f"channels/{channel_id}/{action}")
            out[action] = {"status": response.status_code, "body": response.json()}
        got = await target.apps_ari.http.get(f"channels/{channel_id}")
        dialplan = got.json()["dialplan"]
        dialplan["context"] = (
            "<caller context>" if dialplan["context"] == target.context else dialplan["context"]
        )
        out["get"] = {"status": got.status_code, "dialplan": dialplan}
        out["events_before_claim"] = sorted({e["type"] for e in sockets["eager"].received})
        out["claim"] = await claim(target.apps_ari, channel_id, "eager")
        await sockets["eager"].wait_for("StasisStart")
        out["answer_after"] = (
            await target.apps_ari.http.post(f"channels/{channel_id}/answer")
        ).status_code
        await target.apps_ari.http.post(f"channels/{channel_id}/continue")
        out["status"] = (await result(target, call))[0]
        return out


@scenario
async def repeat_broadcast_on_the_same_channel(target: Target) -> Observation:
    """Failover: the dialplan broadcasts again after a TIMEOUT: a fresh offer, a fresh race."""
    ids: dict[str, str] = {}
    async with apps(target, "second-chance") as sockets:
        client = sockets["second-chance"]
        call = await place_call(target, "400", context=target.context + "-twice")
        first = await client.wait_for("CallBroadcast")
        first_status = await target.ari.wait_global(f"BCAST_FIRST_{call.token}")
        late = await claim(target.apps_ari, first["channel"]["id"], "second-chance")
        await client.wait_for(lambda e: len(client.of_type("CallBroadcast")) == 2)
        won = await claim(target.apps_ari, first["channel"]["id"], "second-chance")
        await client.wait_for("StasisStart")
        await target.apps_ari.http.post(f"channels/{first['channel']['id']}/continue")
        status, _ = await result(target, call)
        return {
            "first_status": first_status,
            "late_claim": late,
            "claim": won,
            "status": status,
            "events": seen(sockets, target, ids, ("CallBroadcast", "StasisStart")),
        }
