"""The drop-in subroutine while no proxy holds the broadcast application (a failover between
replicas, a proxy restarting): Stasis() fails at once there, and the subroutine tries again
within the caller's own timeout instead of returning FAILED in a millisecond.

Real Asterisk and a real proxy process; each test uses a broadcast application name of its
own, so the session's proxy (application `broadcast`) never sees these calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from ..ari import Ari, Asterisk, Events, events, token
from ..conftest import ProxyProcess

SUBROUTINE = "stasis-broadcast"


class BroadcastSocketGate:
    """A TCP relay in front of Asterisk for one proxy that holds back the proxy's own
    broadcast-application socket (`GET /ari/events?app=<broadcast app>`) until `open()`;
    everything else (REST, the applications' sockets) passes at once.

    It makes "the application connected to the proxy before the proxy took the broadcast
    application" certain: a proxy registers its broadcast application while it starts, before
    any application can connect through it, and a call entering it then has nobody to offer to.
    """

    def __init__(self, upstream_port: int, broadcast_app: str) -> None:
        self._upstream_port = upstream_port
        self._held = re.compile(
            rb"^GET /ari/events\?(?:[^ ]*&)?app=" + re.escape(broadcast_app.encode()) + rb"[& ]"
        )
        self._opened = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.held = 0  # broadcast sockets the proxy tried to open while closed

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)

    def open(self) -> None:
        self._opened.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            first = await reader.readline()
            if self._held.match(first) and not self._opened.is_set():
                self.held += 1
                await self._opened.wait()
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
            up_writer.write(first)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def gated_proxy(
    asterisk: Asterisk, tmp_path: Path, broadcast_app: str
) -> AsyncIterator[tuple[ProxyProcess, BroadcastSocketGate]]:
    """A proxy for `broadcast_app` whose broadcast socket waits behind a closed gate, once it
    serves HTTP (it is not ready until the gate opens)."""
    gate = BroadcastSocketGate(asterisk.port, broadcast_app)
    await gate.start()
    through_gate = dataclasses.replace(asterisk, port=gate.port)
    proxy = ProxyProcess(
        through_gate, tmp_path / "proxy.log", "--broadcast-app", broadcast_app, wait=False
    )
    try:
        await serving(proxy)
        yield proxy, gate
    finally:
        gate.open()
        await asyncio.to_thread(proxy.stop)
        print("---- failover proxy log ----")
        print(proxy.log()[-20000:])
        await gate.close()


async def serving(proxy: ProxyProcess, timeout: float = 20) -> None:
    """Until the proxy process answers HTTP (polled: a process that starts listening sends no
    event)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while True:
            assert proxy.process.poll() is None, f"proxy exited:\n{proxy.log()}"
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(proxy.base + "/healthz", timeout=1)).status_code == 200:
                    return
            assert time.monotonic() < deadline, f"proxy not serving within {timeout} s"
            await asyncio.sleep(0.05)


async def broadcast_call(ari: Ari, tag: str, broadcast_app: str, data: str) -> str:
    """A call into the drop-in subroutine (conformance-proxy: its result lands in the global
    BCAST_RESULT_<tag>) using `broadcast_app`; the id of its ;2 leg, the one that runs it."""
    await ari.originate(
        "Local/s@conformance-proxy",
        channelId=f"{tag}-1",
        otherChannelId=f"{tag}-2",
        variables={
            "__BCAST_DATA": data,
            "__BCAST_TOKEN": tag,
            "__ARI_BROADCAST_APP": broadcast_app,
        },
    )
    return f"{tag}-2"


def retry_pause(channel_id: str) -> Any:
    """The subroutine's Wait() between two attempts, for the channel."""

    def match(event: dict[str, Any]) -> bool:
        return (
            event.get("type") == "ChannelDialplan"
            and event.get("channel", {}).get("id") == channel_id
            and event["channel"]["dialplan"]["context"] == SUBROUTINE
            and event["dialplan_app"] == "Wait"
        )

    return match


def asterisk_time(event: dict[str, Any]) -> float:
    return datetime.strptime(event["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def pauses(observer: Events, channel_id: str) -> list[dict[str, Any]]:
    return [e for e in observer.received if retry_pause(channel_id)(e)]


async def test_a_call_waiting_for_the_broadcast_application_is_offered_once_a_proxy_has_it(
    asterisk: Asterisk, ari: Ari, no_native: None, tmp_path: Path
) -> None:
    """A call arrives while no socket holds its broadcast application; about a second later a
    proxy takes the application (an application already connected to it): the call is
    offered, claimed (204), handed over, and the dialplan gets SUCCESS."""
    tag = token()
    broadcast_app, app = f"failover-{tag}", f"taker-{tag}"
    async with events(asterisk.base, f"observer-{tag}", subscribeAll="true") as observer:
        await asyncio.sleep(0.05)  # registration is asynchronous on Asterisk's side
        started = time.monotonic()
        channel_id = await broadcast_call(ari, tag, broadcast_app, "10000")
        # The call failed to enter the application and is waiting to try again.
        await observer.wait_for(retry_pause(channel_id), timeout=10)
        async with (
            gated_proxy(asterisk, tmp_path, broadcast_app) as (proxy, gate),
            events(proxy.base, app) as client,
        ):
            await proxy.wait_log(f"events socket open for {app}")
            # The gap: about a second after the call arrived, the proxy gets through.
            await asyncio.sleep(max(0.0, started + 1.0 - time.monotonic()))
            assert gate.held >= 1
            assert not await ari.global_var(f"BCAST_RESULT_{tag}")
            gate.open()
            offer = await client.wait_for("CallBroadcast", timeout=10)
            offered = time.monotonic()
            assert offer["channel"]["id"] == channel_id
            # Shown at the caller's Gosub line, with what was left of its 10 s as the timeout.
            dialplan = offer["channel"]["dialplan"]
            assert (dialplan["context"], dialplan["app_name"]) == (
                "conformance-proxy",
                "StasisBroadcast",
            )
            assert 0 < int(dialplan["app_data"]) < 10000 - 500
            proxied = Ari(proxy.base)
            try:
                won = await proxied.http.post(
                    "events/claim", params={"channelId": channel_id, "application": app}
                )
                assert won.status_code == 204
                start = await client.wait_for("StasisStart", timeout=10)
                assert start["channel"]["id"] == channel_id
                await proxied.http.post(f"channels/{channel_id}/continue")
            finally:
                await proxied.aclose()
            assert await ari.wait_global(f"BCAST_RESULT_{tag}") == "SUCCESS"
            await proxy.wait_log("offered to 1 application(s)")
        # It kept trying all through the gap (a pause every 100 ms, give or take).
        assert len(pauses(observer, channel_id)) >= 5
        assert offered - started < 5


async def test_with_no_proxy_the_call_fails_once_its_timeout_has_passed(
    asterisk: Asterisk, ari: Ari
) -> None:
    """Nobody ever holds the broadcast application: the subroutine keeps trying for the
    caller's 1500 ms, then returns FAILED; the channel has left the subroutine and no
    application holds it."""
    tag = token()
    broadcast_app = f"nobody-{tag}"
    async with events(asterisk.base, f"observer-{tag}", subscribeAll="true") as observer:
        await asyncio.sleep(0.05)  # registration is asynchronous on Asterisk's side
        channel_id = await broadcast_call(ari, tag, broadcast_app, "1500")
        entered = await observer.wait_for(
            lambda e: (
                e.get("type") == "ChannelDialplan"
                and e.get("channel", {}).get("id") == channel_id
                and e["channel"]["dialplan"]["context"] == SUBROUTINE
            ),
            timeout=10,
        )
        verdict = await observer.wait_for(
            lambda e: (
                e.get("type") == "ChannelVarset"
                and e.get("channel", {}).get("id") == channel_id
                and e["variable"] == "BCAST_RESULT"
            ),
            timeout=10,
        )
        assert verdict["value"] == "FAILED"
        assert await ari.global_var(f"BCAST_RESULT_{tag}") == "FAILED"
        # From entering the subroutine to its verdict, by Asterisk's own clock.
        took = asterisk_time(verdict) - asterisk_time(entered)
        assert 1.5 - 0.01 <= took < 1.5 + 3, took
        # Every 100 ms it tried again: some 15 pauses fit in 1500 ms.
        assert 5 <= len(pauses(observer, channel_id)) <= 16
        # The channel left the subroutine (it waits in its caller's context, in no
        # application), and Asterisk has no application of that name.
        channel = (await ari.http.get(f"channels/{channel_id}")).json()
        assert channel["dialplan"]["context"] == "conformance-proxy"
        assert channel["dialplan"]["app_name"] == "Wait"
        assert (await ari.http.get(f"applications/{broadcast_app}")).status_code == 404
        # Hung up, it is gone, with nothing left behind.
        await ari.http.delete(f"channels/{tag}-1")
        await observer.wait_for(
            lambda e: (
                e.get("type") == "ChannelDestroyed" and e.get("channel", {}).get("id") == channel_id
            ),
            timeout=10,
        )
        listed = {c["id"] for c in (await ari.http.get("channels")).json()}
        assert not listed & {f"{tag}-1", channel_id}
