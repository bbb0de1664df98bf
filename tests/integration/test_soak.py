"""Soak: many calls, ten racing applications, through the proxy. Exactly one 204 per call,
every winner gets StasisStart, nothing left in the broadcast application, RSS flat.

SOAK_CALLS (default 10000) and SOAK_RATE (calls/s, default 40) size it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter, defaultdict
from typing import Any

import httpx
import orjson
import psutil

from ..ari import PASSWORD, USER, Ari, Asterisk, events
from ..conftest import ProxyProcess

CALLS = int(os.environ.get("SOAK_CALLS", "10000"))
RATE = float(os.environ.get("SOAK_RATE", "40"))
APPS = [f"soak-{i}" for i in range(10)]
WS_CLAIMERS = set(APPS[::2])


async def test_soak(asterisk: Asterisk, ari: Ari, proxy: ProxyProcess) -> None:
    await ari.set_native_modules(False)
    claims: dict[str, list[int]] = defaultdict(list)
    starts: Counter[str] = Counter()
    offers: Counter[str] = Counter()
    answered: Counter[str] = Counter()  # claims answered, per claiming application
    rss: dict[str, int] = {}
    process = psutil.Process(proxy.process.pid)
    limits = httpx.Limits(max_connections=40, max_keepalive_connections=40)
    try:
        async with (
            contextlib.AsyncExitStack() as stack,
            httpx.AsyncClient(
                base_url=proxy.base + "/ari/", auth=(USER, PASSWORD), limits=limits, timeout=30
            ) as http,
        ):
            sockets = [await stack.enter_async_context(events(proxy.base, app)) for app in APPS]
            await asyncio.sleep(0.2)
            tasks: set[asyncio.Task[Any]] = set()

            async def claim(channel_id: str, app: str, socket: Any) -> None:
                if app in WS_CLAIMERS:  # half the apps claim over REST-over-WebSocket
                    await socket.send(
                        orjson.dumps(
                            {
                                "type": "RESTRequest",
                                "transaction_id": channel_id,
                                "request_id": app,
                                "method": "POST",
                                "uri": f"events/claim?channelId={channel_id}&application={app}",
                            }
                        ).decode()
                    )
                    return
                try:
                    response = await http.post(
                        "events/claim", params={"channelId": channel_id, "application": app}
                    )
                except httpx.HTTPError:
                    claims[channel_id].append(0)  # no answer at all: fails the run below
                    answered[app] += 1
                    return
                claims[channel_id].append(response.status_code)
                answered[app] += 1

            async def originate() -> None:
                await ari.http.post(
                    "channels",
                    params={
                        "endpoint": "Local/s@soak-proxy",
                        "context": "tests-hold",
                        "extension": "s",
                        "priority": 1,
                        "timeout": 60,
                    },
                    json={"variables": {"__BCAST_DATA": "5000"}},
                )

            async def release(channel_id: str) -> None:
                await http.post(f"channels/{channel_id}/continue")

            async def app_loop(app: str, client: Any) -> None:
                async for frame in client.socket:
                    event = orjson.loads(frame)
                    kind = event["type"]
                    if kind == "CallBroadcast":
                        offers[event["channel"]["id"]] += 1
                        task = asyncio.create_task(
                            claim(event["channel"]["id"], app, client.socket)
                        )
                    elif kind == "RESTResponse":
                        claims[event["transaction_id"]].append(event["status_code"])
                        answered[app] += 1
                        continue
                    elif kind == "StasisStart":
                        starts[event["channel"]["id"]] += 1
                        task = asyncio.create_task(release(event["channel"]["id"]))
                    else:
                        continue
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)

            for client in sockets:
                client._reader.cancel()  # this test reads the sockets itself, faster
            loops = [
                asyncio.create_task(app_loop(app, c)) for app, c in zip(APPS, sockets, strict=True)
            ]
            started = time.monotonic()
            for n in range(CALLS):
                await asyncio.sleep(max(0.0, started + n / RATE - time.monotonic()))
                task = asyncio.create_task(originate())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                if n + 1 == min(1000, CALLS):
                    rss["1k"] = process.memory_info().rss
            elapsed = time.monotonic() - started
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (  # noqa: ASYNC110 - polling ARI state
                len(starts) < CALLS
                or sum(map(len, claims.values())) < CALLS * len(APPS)
                or (await ari.http.get("channels")).json()
            ):
                await asyncio.sleep(0.2)
            rss["end"] = process.memory_info().rss
            for loop in loops:
                loop.cancel()
    finally:
        await ari.set_native_modules(True)

    won = Counter(statuses.count(204) for statuses in claims.values())
    left = (await ari.http.get("applications/broadcast")).json()["channel_ids"]
    print(
        f"\nsoak: {CALLS} calls at {CALLS / elapsed:.1f}/s, {len(claims)} claimed, "
        f"{sum(len(s) for s in claims.values())} claims, winners per call {dict(won)}, "
        f"statuses {Counter(x for s in claims.values() for x in s)}, "
        f"answered per app {dict(answered)}, "
        f"StasisStart {sum(starts.values())}, left in broadcast {len(left)}, "
        f"proxy RSS {rss['1k'] / 2**20:.1f} MiB after 1k, {rss['end'] / 2**20:.1f} MiB at end"
    )
    assert len(offers) == CALLS
    assert Counter(offers.values()) == {len(APPS): CALLS}, "each app offered each call once"
    assert won == {1: CALLS}, "exactly one 204 per call"
    # Losers get 409 until the winner's session ends, 404 after (native's rule).
    assert all(set(s) <= {204, 409, 404} for s in claims.values())
    assert all(len(s) == len(APPS) for s in claims.values())
    assert len(starts) == CALLS and set(starts.values()) == {1}
    assert left == []
    assert (await ari.http.get("channels")).json() == []
    if CALLS >= 5000:
        assert rss["end"] <= rss["1k"] * 1.10, "proxy RSS must stay flat"
