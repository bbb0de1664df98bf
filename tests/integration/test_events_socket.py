"""The events WebSocket relay: one upstream socket per client socket, refusals relayed as
Asterisk made them, and either side closing closes the other."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ..ari import PASSWORD, USER, Ari, Asterisk, events, start_asterisk, stop_asterisk, token
from ..conftest import ProxyProcess


def ws_url(base: str, query: str) -> str:
    return "ws" + base[len("http") :] + "/ari/events" + (f"?{query}" if query else "")


async def refusal(base: str, query: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    """The HTTP answer to an events handshake that must be refused."""
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(base, query), **kwargs):
            pass
    response = refused.value.response
    return response.status_code, dict(response.headers), bytes(response.body or b"")


async def application(ari: Ari, name: str) -> httpx.Response:
    return await ari.http.get(f"applications/{name}")


async def wait_unregistered(ari: Ari, name: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while (await application(ari, name)).status_code != 404:
        assert time.monotonic() < deadline, f"{name} still registered on Asterisk"
        await asyncio.sleep(0.05)  # polling: Asterisk has no "application gone" event


async def test_several_apps_on_one_socket(ari: Ari, proxy: ProxyProcess) -> None:
    one, two = f"ws-one-{token()}", f"ws-two-{token()}"
    async with events(proxy.base, f"{one},{two}") as client:
        registered = {a["name"] for a in (await ari.http.get("applications")).json()}
        assert {one, two} <= registered
        for app in (one, two):
            channel = await ari.originate("Local/s@tests-echo", app=app)
            start = await client.wait_for(
                lambda e, c=channel: e["type"] == "StasisStart" and e["channel"]["id"] == c["id"]
            )
            assert start["application"] == app


@pytest.fixture
async def restore_native(ari: Ari) -> AsyncIterator[None]:
    """The test switches the native modules on and off; they end up loaded again."""
    try:
        yield
    finally:
        await ari.set_native_modules(True)


async def test_repeated_app_parameter_as_asterisk(
    asterisk: Asterisk, ari: Ari, proxy: ProxyProcess, restore_native: None
) -> None:
    """`app=a&app=b`: Asterisk registers `a` only, and only `a` is offered broadcasts."""
    observed = {}
    for name, base, context in (
        ("native", asterisk.base, "conformance-native"),
        ("proxy", proxy.base, "conformance-proxy"),
    ):
        await ari.set_native_modules(name == "native")
        one, two = f"ws-first-{token()}", f"ws-second-{token()}"
        async with events(base, one, app=two) as client:
            registered = {a["name"] for a in (await ari.http.get("applications")).json()}
            call = token()
            await ari.originate(
                f"Local/s@{context}",
                variables={"__BCAST_DATA": "600", "__BCAST_TOKEN": call},
            )
            status = await ari.wait_global(f"BCAST_RESULT_{call}")
            offered = [e["application"] for e in client.of_type("CallBroadcast")]
        roles = {one: "first", two: "second"}
        observed[name] = {
            "registered": sorted(roles[a] for a in registered if a in roles),
            "offered": [roles.get(a, a) for a in offered],
            "status": status,
        }
        await ari.hangup_all()
    assert observed["native"] == {
        "registered": ["first"],
        "offered": ["first"],
        "status": "TIMEOUT",
    }
    assert observed["proxy"] == observed["native"]


async def test_subscribe_all_passes_through(ari: Ari, proxy: ProxyProcess) -> None:
    owner_app, watcher_app, plain_app = (f"ws-{k}-{token()}" for k in ("owner", "all", "plain"))
    async with (
        events(proxy.base, owner_app) as owner,
        events(proxy.base, watcher_app, subscribeAll="true") as watcher,
        events(proxy.base, plain_app) as plain,
    ):
        subscriptions = (await application(ari, watcher_app)).json()
        assert subscriptions["channel_ids"] == ["__AST_CHANNEL_ALL_TOPIC"]
        assert (await application(ari, plain_app)).json()["channel_ids"] == []

        channel = await ari.originate("Local/s@tests-echo", app=owner_app)
        await owner.wait_for("StasisStart")
        assert (await ari.http.delete(f"channels/{channel['id']}")).status_code == 204

        def about(kind: str) -> Any:
            return lambda e: e["type"] == kind and e.get("channel", {}).get("id") == channel["id"]

        created = await watcher.wait_for(about("ChannelCreated"))
        destroyed = await watcher.wait_for(about("ChannelDestroyed"))
        assert created["application"] == destroyed["application"] == watcher_app
        await owner.wait_for(about("ChannelDestroyed"))
        assert not [e for e in plain.received if e.get("channel", {}).get("id") == channel["id"]]


async def test_a_flood_of_events_reaches_a_reading_client_whole(
    ari: Ari, proxy: ProxyProcess
) -> None:
    """Asterisk publishes faster than the proxy relays: the proxy reads no more than its
    writer can take in a turn, instead of filling the client's queue (1013) in one read."""
    app = f"ws-flood-{token()}"
    url = ws_url(proxy.base, f"app={app}&subscribeAll=true&api_key={USER}:{PASSWORD}")
    async with connect(url, max_size=None, compression=None) as socket:
        await ari.originate("Local/s@tests-flood", variables={"__FLOOD_COUNT": "3000"})
        flood = 0
        async with asyncio.timeout(60):
            while True:
                frame = await socket.recv()
                if '"eventname":"flood"' in frame:
                    flood += 1
                elif '"eventname":"flood-end"' in frame:
                    break
        assert flood == 3000
        assert socket.close_code is None


@pytest.mark.parametrize(
    "query",
    [
        f"api_key={USER}:{PASSWORD}",  # no app: 400 (an HTML page, as Asterisk writes it)
        f"app=&api_key={USER}:{PASSWORD}",  # empty app: 400
        "app=ws-refused",  # no credentials: 401
        f"app=ws-refused&api_key={USER}:wrong",  # wrong password: 401
        "app=ws-refused&api_key=nobody:x",  # unknown user: 401
    ],
)
async def test_refused_handshake_is_relayed(
    asterisk: Asterisk, proxy: ProxyProcess, query: str
) -> None:
    status, headers, body = await refusal(asterisk.base, query)
    assert status in (400, 401)
    p_status, p_headers, p_body = await refusal(proxy.base, query)
    assert (p_status, p_body) == (status, body)
    for name in ("content-type", "www-authenticate"):
        assert p_headers.get(name) == headers.get(name), name
    if status == 401:
        assert json.loads(p_body) == {"message": "Authentication required"}
        assert p_headers["www-authenticate"] == 'Basic realm="Asterisk REST Interface"'


async def test_refused_basic_auth_header(asterisk: Asterisk, proxy: ProxyProcess) -> None:
    """Credentials in an Authorization header (not api_key) are checked by Asterisk too."""
    credentials = base64.b64encode(f"{USER}:wrong".encode()).decode()
    wrong = {"additional_headers": {"Authorization": f"Basic {credentials}"}}
    direct = await refusal(asterisk.base, "app=ws-refused", **wrong)
    through = await refusal(proxy.base, "app=ws-refused", **wrong)
    assert direct[0] == through[0] == 401
    assert through[2] == direct[2]


async def test_basic_auth_header_is_forwarded(ari: Ari, proxy: ProxyProcess) -> None:
    app = f"ws-basic-{token()}"
    credentials = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    right = {"Authorization": f"Basic {credentials}"}
    async with connect(ws_url(proxy.base, f"app={app}"), additional_headers=right):
        assert (await application(ari, app)).status_code == 200


@pytest.mark.parametrize("apps", ["broadcast", "mine,broadcast", "broadcast,mine"])
async def test_reserved_broadcast_application_is_refused(
    ari: Ari, proxy: ProxyProcess, apps: str
) -> None:
    status, headers, body = await refusal(proxy.base, f"app={apps}&api_key={USER}:{PASSWORD}")
    assert status == 403
    assert headers["content-type"].startswith("application/json")
    message = json.loads(body)
    assert list(message) == ["message"] and "broadcast" in message["message"]
    assert (await application(ari, "mine")).status_code == 404  # nothing was opened upstream


async def test_client_closing_unregisters_the_application(ari: Ari, proxy: ProxyProcess) -> None:
    app = f"ws-close-{token()}"
    async with events(proxy.base, app):
        assert (await application(ari, app)).status_code == 200
    await wait_unregistered(ari, app)
    # A new socket for the same application replaces nothing: the old one is really gone.
    async with events(proxy.base, app) as again:
        channel = await ari.originate("Local/s@tests-echo", app=app)
        start = await again.wait_for("StasisStart")
        assert start["channel"]["id"] == channel["id"]
        assert again.of_type("ApplicationReplaced") == []


async def test_application_replaced_as_with_asterisk(
    asterisk: Asterisk, ari: Ari, proxy: ProxyProcess
) -> None:
    seen: dict[str, dict[str, Any]] = {}
    for name, base in (("direct", asterisk.base), ("proxy", proxy.base)):
        app = f"ws-replaced-{token()}"
        async with events(base, app) as first, events(base, app) as second:
            replaced = await first.wait_for("ApplicationReplaced")
            assert replaced["application"] == app
            # Calls now go to the second socket only.
            channel = await ari.originate("Local/s@tests-echo", app=app)
            start = await second.wait_for("StasisStart")
            assert start["channel"]["id"] == channel["id"]
            assert first.of_type("StasisStart") == []
            assert second.of_type("ApplicationReplaced") == []
            seen[name] = {"keys": sorted(replaced), "type": replaced["type"]}
            await ari.hangup_all()
    assert seen["proxy"] == seen["direct"]


async def rest_over_socket(
    base: str, app: str, request: dict[str, Any], attempts: int = 1
) -> dict[str, Any]:
    for attempt in range(attempts):
        async with events(base, app) as client:
            await client.socket.send(json.dumps({"type": "RESTRequest", **request}))
            try:
                return await client.wait_for("RESTResponse", timeout=10)
            except TimeoutError:
                if attempt + 1 == attempts:
                    raise
    raise AssertionError("no attempt")


@pytest.mark.parametrize(
    ("method", "uri", "status"),
    [("GET", "asterisk/info", 200), ("GET", "channels/nope", 404), ("POST", "channels", 400)],
)
async def test_rest_request_round_trip(
    asterisk: Asterisk, ari: Ari, proxy: ProxyProcess, method: str, uri: str, status: int
) -> None:
    app = f"ws-rest-{token()}"
    request = {"transaction_id": token(), "request_id": token(), "method": method, "uri": uri}
    through = await rest_over_socket(proxy.base, app, request)
    # The proxy's upstream socket for `app` must be gone before Asterisk sees it again.
    async with asyncio.timeout(10):
        while (await ari.http.get(f"applications/{app}")).status_code != 404:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    # Straight to Asterisk, a second try on a fresh socket: in one full run here Asterisk left
    # the request on a new socket unanswered (never reproduced in isolation, see the closing
    # note of stop 8). The proxied leg gets no second try.
    direct = await rest_over_socket(asterisk.base, app, request, attempts=2)
    assert through["transaction_id"] == request["transaction_id"]
    assert through["request_id"] == request["request_id"]
    assert through["status_code"] == direct["status_code"] == status
    assert sorted(through) == sorted(direct)
    volatile = ("timestamp", "_received")
    assert {k: v for k, v in through.items() if k not in volatile} == {
        k: v for k, v in direct.items() if k not in volatile
    }
    if status == 200:
        rest = await ari.http.get(uri)
        assert json.loads(through["message_body"]) == rest.json()


# -- Asterisk going away ------------------------------------------------------------------------


@pytest.fixture
async def doomed(tmp_path: Path) -> AsyncIterator[tuple[Asterisk, ProxyProcess]]:
    """A second, short-lived Asterisk and a proxy in front of it."""
    instance = await asyncio.to_thread(start_asterisk, f"pytest-{os.getpid()}-doomed")
    process = None
    try:
        process = await asyncio.to_thread(ProxyProcess, instance, tmp_path / "proxy.log")
        yield instance, process
    finally:
        if process is not None:
            process.stop()
        with contextlib.suppress(subprocess.SubprocessError):  # the test stops it already
            await asyncio.to_thread(stop_asterisk, instance)


async def test_upstream_closing_closes_the_client(
    doomed: tuple[Asterisk, ProxyProcess],
) -> None:
    instance, process = doomed
    app = f"ws-doomed-{token()}"
    async with connect(ws_url(process.base, f"app={app}&api_key={USER}:{PASSWORD}")) as socket:
        await asyncio.to_thread(stop_asterisk, instance)
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                while True:
                    await socket.recv()
        assert time.monotonic() - started < 5
        assert socket.close_code in (1001, 1011), (socket.close_code, socket.close_reason)
    async with httpx.AsyncClient(base_url=process.base) as client:
        assert (await client.get("/healthz")).status_code == 200
        # Asterisk is gone: new sockets are refused with the proxy's 502, not left hanging.
        status, headers, body = await refusal(process.base, f"app={app}&api_key={USER}:{PASSWORD}")
        assert status == 502
        assert headers["content-type"].startswith("application/json")
        assert list(json.loads(body)) == ["message"]


async def proxy_sockets(http: httpx.AsyncClient, base: str) -> int:
    for line in (await http.get(base + "/metrics")).text.splitlines():
        if line.startswith("ari_proxy_client_sockets "):
            return int(float(line.split()[1]))
    raise AssertionError("no ari_proxy_client_sockets gauge")


async def test_fast_reconnects_keep_the_application_registered(
    asterisk: Asterisk, ari: Ari, tmp_path: Path
) -> None:
    """Close an events socket and open it again at once, four applications at a time (what
    restarting clients do; more than one keeps the proxy's loop busy, as under load), 300
    times: after each, every application is still registered on Asterisk. Before the
    proxy ordered its upstream sockets per name, 5-21 of these 1200 reopens lost theirs:
    the old upstream socket's close overlapped the new one's registration in Asterisk."""
    proxy = ProxyProcess(asterisk, tmp_path / "proxy.log", "--broadcast-app", f"bc-{token()}")
    apps = [f"again-{token()}" for _ in range(4)]
    urls = [ws_url(proxy.base, f"app={app}&api_key={USER}:{PASSWORD}") for app in apps]
    sockets = [await connect(url) for url in urls]

    async def reopen(i: int) -> None:
        await sockets[i].close()
        sockets[i] = await connect(urls[i])

    lost: list[tuple[int, list[str]]] = []
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            for cycle in range(300):
                await asyncio.gather(*(reopen(i) for i in range(len(apps))))
                deadline = time.monotonic() + 5
                while True:  # polling: neither side has an event for "old socket gone"
                    # Read before the list: once the proxy counts only the new sockets, the
                    # old ones are closed on Asterisk's side and their names unregistered.
                    settled = await proxy_sockets(http, proxy.base) == len(apps)
                    names = {a["name"] for a in (await ari.http.get("applications")).json()}
                    if missing := [app for app in apps if app not in names]:
                        lost.append((cycle, missing))  # final: nothing registers them again
                        break
                    if settled:
                        break
                    assert time.monotonic() < deadline, f"cycle {cycle}: old sockets never closed"
                    await asyncio.sleep(0.005)
                if lost:
                    break
    finally:
        for socket in sockets:
            await socket.close()
        proxy.stop()
    assert not lost, f"applications lost on Asterisk while their client sockets stayed open: {lost}"
