"""What production does to a proxy in the call path: Asterisk restarting, the proxy being
killed or stopped, applications vanishing, clients that stop reading. Every call that
enters the proxy must leave it in a defined state."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ..ari import (
    SANDBOX,
    Ari,
    Asterisk,
    Events,
    events,
    readyz,
    start_asterisk,
    stop_asterisk,
    token,
    until,
)
from ..conftest import ProxyProcess

FAULT_APP = "faultcast"  # a broadcast application of its own, beside the session's proxy


def fault_proxy(asterisk: Asterisk, tmp_path: Path, *extra: str, wait: bool = True) -> ProxyProcess:
    return ProxyProcess(
        asterisk, tmp_path / f"proxy-{token()}.log", "--broadcast-app", FAULT_APP, *extra, wait=wait
    )


@pytest.fixture(params=["socket", "http"], ids=["handover-socket", "handover-http"])
def handover(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """The proxy's flags for each hand-over transport: REST over the broadcast socket (what
    this Asterisk has) or HTTP (what Asterisk before 20.14/22.4 gets)."""
    return () if request.param == "socket" else ("--handover-transport", "http")


async def broadcast_call(ari: Ari, data: str) -> str:
    """A call into the drop-in subroutine, using FAULT_APP; returns its result token."""
    tag = token()
    await ari.originate(
        "Local/s@conformance-proxy",
        variables={"__BCAST_DATA": data, "__BCAST_TOKEN": tag, "__ARI_BROADCAST_APP": FAULT_APP},
    )
    return tag


async def win_and_let_go(
    proxy: ProxyProcess, ari: Ari, client: Events, offer: dict[str, Any], app: str, tag: str
) -> None:
    """Claim the offered call for `app` through `proxy` (204), wait for its StasisStart, let
    it go with `continue`; the dialplan must see SUCCESS (scenarios.win_and_let_go, for a
    call placed with broadcast_call)."""
    channel_id = offer["channel"]["id"]
    proxied = Ari(proxy.base)
    try:
        won = await proxied.http.post(
            "events/claim", params={"channelId": channel_id, "application": app}
        )
        assert won.status_code == 204
        await client.wait_for("StasisStart")
        await proxied.http.post(f"channels/{channel_id}/continue")
    finally:
        await proxied.aclose()
    assert await ari.wait_global(f"BCAST_RESULT_{tag}") == "SUCCESS"


async def wait_until(probe: Callable[[], Awaitable[int]], expected: int, timeout: float) -> None:
    """Poll a status (readiness has no event to wait for) until it is `expected`."""
    seen: list[int] = []

    async def reached() -> bool:
        seen.append(await probe())
        return seen[-1] == expected

    await until(reached, lambda: f"status stayed {seen[-1:]}, expected {expected}", timeout)


async def reluctant_reader(proxy: ProxyProcess, app: str) -> ClientConnection:
    """An events socket through the proxy that reads only when the test calls recv(): a
    tiny receive buffer, so frames soon wait in the proxy's queue."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", proxy.port))
    raw.setblocking(False)
    url = proxy.base.replace("http", "ws") + f"/ari/events?app={app}&api_key=asterisk:asterisk"
    return await connect(url, sock=raw, max_queue=1, max_size=None, compression=None)


# -- Asterisk restarting ----------------------------------------------------------------------


@pytest.fixture
def private_asterisk() -> Iterator[Asterisk]:
    instance = start_asterisk(f"faults-{token()}")
    try:
        yield instance
    finally:
        stop_asterisk(instance)


def restart(instance: Asterisk, down_for: float) -> None:
    stop_asterisk(instance)
    time.sleep(down_for)
    subprocess.run(
        [
            str(SANDBOX),
            "up",
            "--name",
            instance.name,
            "--port",
            str(instance.port),
            "--overlay",
            str(Path(__file__).parent.parent / "asterisk-conf"),
        ],
        check=True,
        timeout=120,
    )


async def test_upstream_restart_closes_clients_then_recovers(
    private_asterisk: Asterisk, tmp_path: Path
) -> None:
    proxy = fault_proxy(private_asterisk, tmp_path)
    try:
        async with events(proxy.base, "survivor") as client:
            await asyncio.to_thread(stop_asterisk, private_asterisk)
            async with asyncio.timeout(5):
                await client.socket.wait_closed()
            assert client.socket.close_code in (1001, 1011)
            await wait_until(lambda: readyz(proxy.base), 503, 10)
            async with httpx.AsyncClient(auth=("asterisk", "asterisk")) as http:
                down = await http.get(proxy.base + "/ari/asterisk/info")
            assert down.status_code == 502
            assert "message" in down.json()
        await asyncio.to_thread(restart, private_asterisk, 0)
        await wait_until(lambda: readyz(proxy.base), 200, 20)
        # And broadcasting works again, end to end.
        ari = Ari(private_asterisk.base)
        try:
            await ari.set_native_modules(False)
            async with events(proxy.base, "survivor") as client:
                await asyncio.sleep(0.1)
                tag = await broadcast_call(ari, "5000")
                offer = await client.wait_for("CallBroadcast")
                async with httpx.AsyncClient(auth=("asterisk", "asterisk")) as http:
                    won = await http.post(
                        proxy.base + "/ari/events/claim",
                        params={"channelId": offer["channel"]["id"], "application": "survivor"},
                    )
                    assert won.status_code == 204
                    await client.wait_for("StasisStart")
                    await http.post(proxy.base + f"/ari/channels/{offer['channel']['id']}/continue")
                assert await ari.wait_global(f"BCAST_RESULT_{tag}") == "SUCCESS"
        finally:
            await ari.hangup_all()
            await ari.aclose()
    finally:
        proxy.stop()


@contextlib.contextmanager
def frozen(instance: Asterisk) -> Iterator[None]:
    """Asterisk stopped in its tracks (SIGSTOP): connections stay up, nothing is answered."""
    os.kill(instance.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(instance.pid, signal.SIGCONT)


async def test_a_claim_over_the_socket_while_asterisk_cannot_answer_gets_504_not_a_close(
    asterisk: Asterisk, tmp_path: Path
) -> None:
    """The credential check behind a RESTRequest claim times out: the client gets a
    RESTResponse 504 with a message, as over HTTP, and keeps its events socket."""
    proxy = fault_proxy(asterisk, tmp_path, "--upstream-timeout", "1")
    try:
        async with events(proxy.base, "patient") as client:
            request = {
                "type": "RESTRequest",
                "transaction_id": "t1",
                "request_id": "r1",
                "method": "POST",
                "uri": "events/claim?channelId=nowhere&application=patient",
            }
            with frozen(asterisk):
                await client.socket.send(json.dumps(request))
                answer = await client.wait_for("RESTResponse", timeout=5)
            assert answer["status_code"] == 504
            assert answer["transaction_id"] == "t1"
            assert json.loads(answer["message_body"])["message"].startswith("Asterisk did not")
            # Asterisk answers again: the same socket carries the next claim (404: no such call).
            await client.socket.send(json.dumps({**request, "request_id": "r2"}))
            again = await client.wait_for(
                lambda e: e.get("type") == "RESTResponse" and e["request_id"] == "r2", timeout=5
            )
            assert again["status_code"] == 404
        await proxy.wait_log("checking the credentials failed")
    finally:
        proxy.stop()


async def test_a_client_that_stops_reading_a_long_answer_frees_its_connection_to_asterisk(
    asterisk: Asterisk, ari: Ari, tmp_path: Path
) -> None:
    """A streamed answer holds one of the proxy's connections to Asterisk; a client that
    stays connected but reads nothing gives it back after the upstream timeout."""
    proxy = fault_proxy(
        asterisk, tmp_path, "--upstream-connections", "1", "--upstream-timeout", "1"
    )
    created = []
    raw = socket.socket()
    try:
        for i in range(200):  # GET /bridges: some 4 MB, far more than the sockets buffer
            response = await ari.http.post(
                "bridges", json={"type": "mixing", "name": f"stall-{token()}-{i}" + "n" * 20_000}
            )
            assert response.status_code == 200
            created.append(response.json()["id"])
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", proxy.port))
        raw.sendall(
            b"GET /ari/bridges HTTP/1.1\r\nHost: proxy\r\n"
            b"Authorization: Basic YXN0ZXJpc2s6YXN0ZXJpc2s=\r\n\r\n"
        )  # and nothing is read
        await proxy.wait_log("client stopped reading a streamed answer", timeout=20)
        async with httpx.AsyncClient(auth=("asterisk", "asterisk")) as http:
            info = await http.get(proxy.base + "/ari/asterisk/info", timeout=5)
        assert info.status_code == 200
    finally:
        raw.close()
        proxy.stop()
        for bridge_id in created:
            await ari.http.delete(f"bridges/{bridge_id}")


async def test_frames_queued_when_asterisk_closes_the_socket_still_reach_the_client(
    private_asterisk: Asterisk, tmp_path: Path
) -> None:
    """The client lags (frames wait in the proxy's queue) when Asterisk goes away: it still
    gets every frame Asterisk sent before closing, then the close."""
    proxy = fault_proxy(private_asterisk, tmp_path)
    try:
        laggard = await reluctant_reader(proxy, "laggard")  # reads nothing for now
        blob = "x" * 16000
        async with httpx.AsyncClient(auth=("asterisk", "asterisk")) as http:
            for i in range(300):  # ~5 MB: most of it waits in the proxy's queue
                response = await http.post(
                    f"{private_asterisk.base}/ari/events/user/backlog",
                    params={"application": "laggard"},
                    json={"variables": {"blob": blob, "n": str(i)}},
                )
                assert response.status_code == 204
        await asyncio.sleep(0.5)
        os.kill(private_asterisk.pid, signal.SIGKILL)  # its sockets close at once
        # The proxy has seen the close; the client reads only now.
        await proxy.wait_log("Asterisk closed the events socket for laggard")
        received = []
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(20):
                while True:
                    received.append(json.loads(await laggard.recv())["userevent"]["n"])
        assert received == [str(i) for i in range(300)]
        assert laggard.close_code in (1001, 1011)
    finally:
        proxy.stop()


async def test_a_slow_consumer_of_large_events_is_closed_by_the_byte_bound(
    asterisk: Asterisk, tmp_path: Path
) -> None:
    """500 user events of 40 KB (20 MB) stay below the frame bound (1024) but not below the
    16 MiB a client's queue may hold: the client is closed with 1013, memory stays bounded."""
    proxy = fault_proxy(asterisk, tmp_path)
    try:
        glutton = await reluctant_reader(proxy, "glutton")  # reads nothing for now
        blob = "x" * 40_000
        async with httpx.AsyncClient(auth=("asterisk", "asterisk")) as http:
            for _ in range(500):
                response = await http.post(
                    f"{asterisk.base}/ari/events/user/large",
                    params={"application": "glutton"},
                    json={"variables": {"blob": blob}},
                )
                if response.status_code == 404:  # closed: its application left Asterisk
                    break
                assert response.status_code == 204
        received = 0
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(20):
                while True:
                    await glutton.recv()
                    received += 1
        assert glutton.close_code == 1013
        assert received < 500
        await proxy.wait_log("bytes queued")
    finally:
        proxy.stop()


async def test_the_broadcast_application_taken_by_another_client_comes_back_when_it_leaves(
    asterisk: Asterisk, ari: Ari, no_native: None, tmp_path: Path, handover: tuple[str, ...]
) -> None:
    """Anything registering the broadcast application straight on Asterisk takes the calls:
    the proxy says so in its log and in /readyz instead of looking healthy, and takes the
    application back once that client has left (before, it stayed deaf until restarted)."""
    proxy = fault_proxy(asterisk, tmp_path, *handover)
    try:
        assert await readyz(proxy.base) == 200
        async with events(asterisk.base, FAULT_APP):
            await wait_until(lambda: readyz(proxy.base), 503, 5)
            await proxy.wait_log("another client registered the broadcast application")
            # Held by the other client: the proxy does not fight it for the application.
            await asyncio.sleep(1.0)
            assert await readyz(proxy.base) == 503
        await wait_until(lambda: readyz(proxy.base), 200, 10)
        await proxy.wait_log("taking it back")
        async with events(proxy.base, "after-takeback") as client:
            tag = await broadcast_call(ari, "5000")
            offer = await client.wait_for("CallBroadcast")
            await win_and_let_go(proxy, ari, client, offer, "after-takeback", tag)
    finally:
        proxy.stop()


async def test_a_subroutine_without_its_labels_strands_no_call(
    asterisk: Asterisk, ari: Ari, no_native: None, tmp_path: Path, handover: tuple[str, ...]
) -> None:
    """An edited copy of [stasis-broadcast] that lost its labels: `continue` to them gets
    404 although the channel exists. The proxy says what is wrong and lets the call go on
    at the next priority instead of taking it for hung up and leaving it parked."""
    proxy = fault_proxy(
        asterisk, tmp_path, *handover, "--subroutine-context", "tests-broken-broadcast"
    )
    try:
        tag = token()
        await ari.originate(
            "Local/s@tests-broken-caller",
            variables={
                "__BCAST_DATA": "300",
                "__BCAST_TOKEN": tag,
                "__ARI_BROADCAST_APP": FAULT_APP,
            },
        )
        assert await ari.wait_global(f"BCAST_RESULT_{tag}", timeout=5)
        await proxy.wait_log("[tests-broken-broadcast] has no label")
    finally:
        await ari.hangup_all()
        proxy.stop()


# -- the proxy dying or stopping --------------------------------------------------------------


async def test_killed_proxy_leaves_no_stranded_call(
    asterisk: Asterisk, ari: Ari, no_native: None, tmp_path: Path, handover: tuple[str, ...]
) -> None:
    first = fault_proxy(asterisk, tmp_path, *handover)
    async with events(first.base, "bystander") as client:
        tag = await broadcast_call(ari, "30000")
        offer = await client.wait_for("CallBroadcast")
    first.stop(signal.SIGKILL)
    assert first.process.returncode == -signal.SIGKILL
    channel_id = offer["channel"]["id"]
    # The call is still parked in the dead proxy's application...
    listed = (await ari.http.get(f"applications/{FAULT_APP}")).json()["channel_ids"]
    assert channel_id in listed
    # ...until a proxy starts again, finds it and sends it back to the dialplan.
    second = fault_proxy(asterisk, tmp_path, *handover)
    try:
        assert await ari.wait_global(f"BCAST_RESULT_{tag}", timeout=10) == "TIMEOUT"
        await second.wait_log("was left in the broadcast application")
    finally:
        second.stop()


async def test_sigterm_returns_calls_on_offer_closes_clients_with_1001_and_exits(
    asterisk: Asterisk, ari: Ari, no_native: None, tmp_path: Path, handover: tuple[str, ...]
) -> None:
    proxy = fault_proxy(asterisk, tmp_path, *handover)
    async with events(proxy.base, "listener") as client:
        tag = await broadcast_call(ari, "30000")
        await client.wait_for("CallBroadcast")
        started = time.monotonic()
        proxy.process.send_signal(signal.SIGTERM)
        assert await ari.wait_global(f"BCAST_RESULT_{tag}", timeout=10) == "TIMEOUT"
        async with asyncio.timeout(10):
            await client.socket.wait_closed()
        assert client.socket.close_code == 1001
    code = await asyncio.to_thread(proxy.process.wait, 15)
    # uvicorn re-raises the signal once shut down, so the exit reads as "ended by SIGTERM".
    assert code in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 15
    proxy.stop()
    log = proxy.log()
    assert "returning 1 call(s) on offer to the dialplan" in log
    assert "proxy stopped" in log
    assert "Traceback" not in log


# -- applications vanishing -------------------------------------------------------------------


async def test_an_application_leaving_mid_broadcast_does_not_disturb_the_race(
    asterisk: Asterisk, ari: Ari, no_native: None, tmp_path: Path, handover: tuple[str, ...]
) -> None:
    proxy = fault_proxy(asterisk, tmp_path, *handover)
    try:
        # Through the proxy an application is registered once its socket is open.
        async with events(proxy.base, "stayer") as stayer:
            async with events(proxy.base, "leaver") as leaver:
                tag = await broadcast_call(ari, "5000")
                offer = await leaver.wait_for("CallBroadcast")
            await stayer.wait_for("CallBroadcast")
            await win_and_let_go(proxy, ari, stayer, offer, "stayer", tag)
    finally:
        proxy.stop()


async def test_a_winner_gone_before_the_hand_over_gives_failed(
    asterisk: Asterisk, ari: Ari, no_native: None, tmp_path: Path, handover: tuple[str, ...]
) -> None:
    proxy = fault_proxy(asterisk, tmp_path, *handover)
    proxied = Ari(proxy.base)
    try:
        async with events(proxy.base, "quitter") as quitter:
            tag = await broadcast_call(ari, "5000")
            offer = await quitter.wait_for("CallBroadcast")
        await proxy.wait_log("events socket closed for quitter")  # its claim arrives anyway
        won = await proxied.http.post(
            "events/claim", params={"channelId": offer["channel"]["id"], "application": "quitter"}
        )
        assert won.status_code == 204
        assert await ari.wait_global(f"BCAST_RESULT_{tag}") == "FAILED"
        late = await proxied.http.post(
            "events/claim", params={"channelId": offer["channel"]["id"], "application": "quitter"}
        )
        assert late.status_code == 404
        await proxy.wait_log("hand-over to 'quitter' failed")
    finally:
        await proxied.aclose()
        proxy.stop()


# -- clients that stop reading ----------------------------------------------------------------


async def test_a_slow_consumer_is_closed_and_never_delays_the_others(
    asterisk: Asterisk, ari: Ari, no_native: None, tmp_path: Path
) -> None:
    proxy = fault_proxy(asterisk, tmp_path, "--session-queue", "64")
    try:
        sloth = await reluctant_reader(proxy, "sloth")  # reads nothing for now
        async with events(proxy.base, "hare") as hare:
            await asyncio.sleep(0.1)
            blob = "x" * 16000
            async with httpx.AsyncClient(auth=("asterisk", "asterisk")) as http:
                for _ in range(1000):  # ~16 MB of user events for the sloth
                    await http.post(
                        f"{asterisk.base}/ari/events/user/flood",
                        params={"application": "sloth"},
                        json={"variables": {"blob": blob}},
                    )
            sent = time.monotonic()
            tag = await broadcast_call(ari, "2000")
            offer = await hare.wait_for("CallBroadcast", timeout=3)
            assert offer["_received"] - sent < 1.0
            assert await ari.wait_global(f"BCAST_RESULT_{tag}") == "TIMEOUT"
        received = 0
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(20):
                while True:
                    json.loads(await sloth.recv())
                    received += 1
        assert sloth.close_code == 1013
        assert received < 1000
        await proxy.wait_log("client stopped reading")
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(proxy.base + "/metrics")).text
        assert "ari_proxy_slow_consumer_closes_total 1.0" in metrics
    finally:
        proxy.stop()
