"""Soak: many calls, ten racing applications, through the proxy. Exactly one 204 per call,
every winner gets StasisStart, nothing left in the broadcast application, RSS flat.

SOAK_CALLS (default 10000), SOAK_RATE (at most this many calls/s, default 40) and
SOAK_IN_FLIGHT (at most this many calls at once, default 40) size it. The bound on calls in
flight makes the load follow what the machine can do: a slower machine takes longer instead
of piling up originations that then time out in the test's own HTTP pool."""

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
import pytest

from ..ari import PASSWORD, USER, Ari, Asterisk, Tasks, events, send_claim, token
from ..conftest import ProxyProcess

CALLS = int(os.environ.get("SOAK_CALLS", "10000"))
RATE = float(os.environ.get("SOAK_RATE", "40"))
IN_FLIGHT = int(os.environ.get("SOAK_IN_FLIGHT", "40"))
CALL_DEADLINE = 30.0  # originate -> the winner's continue answered
APPS = [f"soak-{i}" for i in range(10)]
WS_CLAIMERS = set(APPS[::2])


@pytest.mark.timeout(600 + CALLS // 4)  # the calls at 4/s at worst, aiming at 40/s
async def test_soak(asterisk: Asterisk, ari: Ari, proxy: ProxyProcess) -> None:
    await ari.set_native_modules(False)
    run = token()
    claims: dict[str, list[int]] = defaultdict(list)
    starts: Counter[str] = Counter()
    offers: Counter[str] = Counter()
    answered: Counter[str] = Counter()  # claims answered, per claiming application
    released: dict[str, asyncio.Event] = {}
    outcomes: Counter[str] = Counter()  # per call: "released" or what went wrong
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
            tasks = Tasks()
            stack.push_async_callback(tasks.cancel_all)  # runs first: sockets are still open
            spawn = tasks.spawn

            async def claim(channel_id: str, app: str, socket: Any) -> None:
                # Half the apps claim over REST-over-WebSocket; 0: no answer, fails the run.
                status = await send_claim(http, socket, channel_id, app, ws=app in WS_CLAIMERS)
                if status is not None:
                    claims[channel_id].append(status)
                    answered[app] += 1

            async def release(channel_id: str) -> None:
                response = await http.post(f"channels/{channel_id}/continue")
                if response.status_code == 204 and channel_id in released:
                    released[channel_id].set()

            async def call(n: int, slots: asyncio.Semaphore) -> None:
                # The ;2 leg, which runs the broadcast. Asterisk refuses (409) an id that is a
                # prefix of a live channel's id: "-a"/"-b" keep every id off every other's prefix.
                channel_id = f"soak-{run}-{n}-b"
                released[channel_id] = asyncio.Event()
                try:
                    response = await ari.http.post(
                        "channels",
                        params={
                            "endpoint": "Local/s@soak-proxy",
                            "context": "tests-hold",
                            "extension": "s",
                            "priority": 1,
                            "timeout": 60,
                            "channelId": f"soak-{run}-{n}-a",
                            "otherChannelId": channel_id,
                        },
                        json={"variables": {"__BCAST_DATA": "5000"}},
                    )
                    if response.status_code != 200:
                        outcomes[f"originate {response.status_code}"] += 1
                        return
                    async with asyncio.timeout(CALL_DEADLINE):
                        await released[channel_id].wait()
                    outcomes["released"] += 1
                except TimeoutError:
                    outcomes["not released in time"] += 1
                except httpx.HTTPError as exc:
                    outcomes[f"originate {type(exc).__name__}"] += 1
                finally:
                    del released[channel_id]
                    slots.release()

            async def app_loop(app: str, client: Any) -> None:
                async for frame in client.socket:
                    event = orjson.loads(frame)
                    kind = event["type"]
                    if kind == "CallBroadcast":
                        offers[event["channel"]["id"]] += 1
                        spawn(claim(event["channel"]["id"], app, client.socket))
                    elif kind == "RESTResponse":
                        claims[event["transaction_id"]].append(event["status_code"])
                        answered[app] += 1
                    elif kind == "StasisStart":
                        starts[event["channel"]["id"]] += 1
                        spawn(release(event["channel"]["id"]))

            for client in sockets:
                client._reader.cancel()  # this test reads the sockets itself, faster
            for app, client in zip(APPS, sockets, strict=True):
                spawn(app_loop(app, client))
            slots = asyncio.Semaphore(IN_FLIGHT)
            started = time.monotonic()
            for n in range(CALLS):
                await slots.acquire()
                await asyncio.sleep(max(0.0, started + n / RATE - time.monotonic()))
                spawn(call(n, slots))
                if n + 1 == min(1000, CALLS):
                    rss["1k"] = process.memory_info().rss
            for _ in range(IN_FLIGHT):  # every call released or given up
                await slots.acquire()
            elapsed = time.monotonic() - started
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (  # noqa: ASYNC110 - polling ARI state
                sum(map(len, claims.values())) < CALLS * len(APPS)
                or (await ari.http.get("channels")).json()
            ):
                await asyncio.sleep(0.2)
            rss["end"] = process.memory_info().rss
    finally:
        await ari.set_native_modules(True)

    won = Counter(statuses.count(204) for statuses in claims.values())
    left = (await ari.http.get("applications/broadcast")).json()["channel_ids"]
    print(
        f"\nsoak: {CALLS} calls in {elapsed:.0f} s ({CALLS / elapsed:.1f}/s, at most "
        f"{RATE:g}/s and {IN_FLIGHT} at once), calls {dict(outcomes)}, "
        f"{sum(len(s) for s in claims.values())} claims, winners per call {dict(won)}, "
        f"statuses {Counter(x for s in claims.values() for x in s)}, "
        f"answered per app {dict(answered)}, "
        f"StasisStart {sum(starts.values())}, left in broadcast {len(left)}, "
        f"proxy RSS {rss['1k'] / 2**20:.1f} MiB after 1k, {rss['end'] / 2**20:.1f} MiB at end"
    )
    assert outcomes == {"released": CALLS}, "every call originated, claimed and released"
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
