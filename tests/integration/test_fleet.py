"""One proxy in front of several real Asterisk servers (sandbox instances with their own
systemname and entity id): applications connect once, hear every server, reach each
resource on the server that holds it, and are offered the calls every server broadcasts.

The module's fleet has three servers: `native` runs StasisBroadcast itself (the reference
for the conformance scenarios), `a` and `b` stand behind the two-server proxy. A proxy in
front of all three has a broadcast application of its own (`broadcast3`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncari
import httpx
import pytest

from ..ari import (
    PASSWORD,
    USER,
    Ari,
    Asterisk,
    Events,
    events,
    start_asterisk,
    stop_asterisk,
    token,
    until,
)
from ..conftest import ProxyProcess
from ..fleet import fleet
from ..redis_server import RedisServer, redis_server_fixture  # noqa: F401
from ..replicas import Replica, wait_leader
from .scenarios import Target, claim, place_call, result
from .test_clients import asyncari_leftovers, broadcast_call, next_event, node_app  # noqa: F401
from .test_conformance import EXPECTED, SCENARIOS, _diff
from .test_replicas import every_replica_knows

pytestmark = [  # as tests/integration/test_clients.py, for asyncari
    pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Unclosed <MemoryObject:ResourceWarning"),
]


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Asterisk]]:
    with fleet(3, f"fleet{os.getpid()}-") as instances:
        yield dict(zip(("native", "a", "b"), instances, strict=True))


@pytest.fixture(scope="module")
def two(
    servers: dict[str, Asterisk], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    process = ProxyProcess(
        servers["a"],
        tmp_path_factory.mktemp("fleet-proxy") / "proxy.log",
        "--upstream",
        servers["b"].base,
    )
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
async def unloaded(servers: dict[str, Asterisk]) -> None:
    """Behind the proxy, the servers run the drop-in subroutine: no native module there."""
    for name in ("a", "b"):
        client = Ari(servers[name].base)
        await client.set_native_modules(False)
        await client.aclose()


@pytest.fixture
async def direct(servers: dict[str, Asterisk]) -> AsyncIterator[dict[str, Ari]]:
    """ARI straight to each server; every channel left behind is hung up afterwards."""
    clients = {name: Ari(server.base) for name, server in servers.items()}
    try:
        yield clients
    finally:
        for client in clients.values():
            await client.hangup_all()
            await client.aclose()


async def entity_id(client: Ari) -> str:
    return str((await client.http.get("asterisk/info")).json()["system"]["entity_id"])


async def broadcast_and_claim(
    client: Events, proxy_base: str, app: str, server: Ari, filter_: str, broadcast_app: str = ""
) -> dict[str, Any]:
    """A call placed on `server` through the drop-in subroutine (to `broadcast_app`, default
    the proxy's usual one), offered on `client`'s socket, claimed for `app` through
    `proxy_base` (204), started there and let go (SUCCESS); its StasisStart."""
    variables = {"__ARI_BROADCAST_APP": broadcast_app} if broadcast_app else {}
    apps = Ari(proxy_base)
    try:
        target = Target("proxy", proxy_base, "conformance-proxy", server, apps, variables)
        offered = len(client.of_type("CallBroadcast"))
        call = await place_call(target, f"10000,{filter_}")
        await client.wait_for(lambda e: len(client.of_type("CallBroadcast")) > offered)
        channel_id = client.of_type("CallBroadcast")[-1]["channel"]["id"]
        assert (await claim(apps, channel_id, app))["status"] == 204
        start = await client.wait_for(
            lambda e: e["type"] == "StasisStart" and e["channel"]["id"] == channel_id
        )
        assert (await apps.http.post(f"channels/{channel_id}/continue")).status_code == 204
        assert (await result(target, call))[0] == "SUCCESS"
        return start
    finally:
        await apps.aclose()


async def registered(app: str, *servers: Ari) -> None:
    """Until `app` is registered on each server (the proxy registers it on every one)."""

    async def everywhere() -> bool:
        answers = [await s.http.get(f"applications/{app}") for s in servers]
        return all(a.status_code == 200 for a in answers)

    await until(everywhere, f"{app} registered on {len(servers)} servers")


async def test_one_socket_hears_every_server(
    two: ProxyProcess, direct: dict[str, Ari], servers: dict[str, Asterisk]
) -> None:
    """Each server's events, in that server's order, with its own asterisk_id."""
    app = f"fleet-{token()}"
    async with events(two.base, app) as client:
        await registered(app, direct["a"], direct["b"])
        made = {}
        for name in ("a", "b"):
            made[name] = await direct[name].originate("Local/s@tests-echo", app=app)
            assert made[name]["id"].startswith(servers[name].name)
        for name in ("a", "b"):
            start = await client.wait_for(
                lambda e, n=name: e["type"] == "StasisStart" and e["channel"]["id"] == made[n]["id"]
            )
            assert start["asterisk_id"] == await entity_id(direct[name])


async def test_rest_reaches_the_holder_and_lists_are_merged(
    two: ProxyProcess, direct: dict[str, Ari], servers: dict[str, Asterisk]
) -> None:
    proxied = Ari(two.base)
    try:
        app = f"fleet-{token()}"
        async with events(two.base, app):
            await registered(app, direct["a"], direct["b"])
            on = {n: (await direct[n].originate("Local/s@tests-echo", app=app))["id"] for n in "ab"}
            listed = {c["id"] for c in (await proxied.http.get("channels")).json()}
            assert set(on.values()) <= listed
            for name, channel_id in on.items():
                got = await proxied.http.get(f"channels/{channel_id}")
                assert got.status_code == 200 and got.json()["id"] == channel_id, name
                variable = {"variable": "FLEET", "value": name}
                assert (
                    await proxied.http.post(f"channels/{channel_id}/variable", params=variable)
                ).status_code == 204
                there = await direct[name].http.get(
                    f"channels/{channel_id}/variable", params={"variable": "FLEET"}
                )
                assert there.json()["value"] == name
            # originate next to a channel: on its server
            near = await proxied.http.post(
                "channels",
                params={"endpoint": "Local/s@tests-echo", "app": app, "originator": on["b"]},
            )
            assert near.status_code == 200 and near.json()["id"].startswith(servers["b"].name)
            # a bridge pinned to a, then a channel of b refused, naming both servers
            bridge = await proxied.http.post(
                "bridges", headers={"X-Asterisk-Server": servers["a"].base.split("//")[1]}
            )
            assert bridge.status_code == 200
            bridge_id = bridge.json()["id"]
            assert (await direct["a"].http.get(f"bridges/{bridge_id}")).status_code == 200
            added = await proxied.http.post(
                f"bridges/{bridge_id}/addChannel", params={"channel": on["a"]}
            )
            assert added.status_code == 204
            across = await proxied.http.post(
                f"bridges/{bridge_id}/addChannel", params={"channel": on["b"]}
            )
            assert across.status_code == 422
            message = across.json()["message"]
            assert all(servers[n].base.split("//")[1] in message for n in "ab"), message
            assert (await proxied.http.delete(f"bridges/{bridge_id}")).status_code == 204
            # unknown everywhere: Asterisk's own 404
            missing = await proxied.http.get("channels/no-such-channel")
            assert missing.status_code == 404 and missing.json() == {"message": "Channel not found"}
            # creations without a hint take turns
            turns = [(await proxied.http.post("bridges")).json()["id"] for _ in range(2)]
            homes = set()
            for bridge_id in turns:
                for name in "ab":
                    if (await direct[name].http.get(f"bridges/{bridge_id}")).status_code == 200:
                        homes.add(name)
                await proxied.http.delete(f"bridges/{bridge_id}")
            assert homes == {"a", "b"}
            # one application, merged: both servers' channels
            application = (await proxied.http.get(f"applications/{app}")).json()
            assert set(on.values()) <= set(application["channel_ids"])
    finally:
        await proxied.aclose()


async def test_one_id_on_two_servers_is_refused(
    two: ProxyProcess, direct: dict[str, Ari], servers: dict[str, Asterisk]
) -> None:
    """A client-chosen id taken on both servers: a clear 409 naming them, never a request
    sent to either."""
    same = f"dup-{token()}"
    try:
        for name in ("a", "b"):
            assert (await direct[name].http.post(f"bridges/{same}")).status_code == 200
        proxied = Ari(two.base)
        got = await proxied.http.post(f"bridges/{same}/moh")
        await proxied.aclose()
        assert got.status_code == 409, got.text
        message = got.json()["message"]
        assert all(servers[n].base.split("//")[1] in message for n in "ab"), message
        assert "systemname" in message
    finally:
        for name in ("a", "b"):
            await direct[name].http.delete(f"bridges/{same}")


async def test_servers_without_systemname_are_named_at_start(
    asterisk: Asterisk, servers: dict[str, Asterisk], tmp_path: Path
) -> None:
    """The session's Asterisk has no systemname: its ids can collide with another's."""
    proxy = ProxyProcess(
        asterisk,
        tmp_path / "proxy.log",
        "--upstream",
        servers["a"].base,
        "--broadcast-app",
        "idcast",
    )
    try:
        await proxy.wait_log("has no systemname")
        line = next(line for line in proxy.log().splitlines() if "has no systemname" in line)
        assert asterisk.base.split("//")[1] in line
        assert servers["a"].base.split("//")[1] not in line
    finally:
        proxy.stop()


async def test_calls_on_every_server_are_offered_and_handed_over_there(
    two: ProxyProcess, unloaded: None, direct: dict[str, Ari], servers: dict[str, Asterisk]
) -> None:
    app = f"fleet-{token()}"
    async with events(two.base, app) as client:
        await registered(app, direct["a"], direct["b"])
        for name in ("a", "b"):
            start = await broadcast_and_claim(client, two.base, app, direct[name], f"^{app}$")
            assert start["channel"]["id"].startswith(servers[name].name)
            assert start["asterisk_id"] == await entity_id(direct[name])


async def test_node_ari_client_takes_calls_from_every_server(
    two: ProxyProcess, unloaded: None, direct: dict[str, Ari], servers: dict[str, Asterisk]
) -> None:
    """The npm ari-client, unmodified: it claims every CallBroadcast it gets."""
    app = f"node-{token()}"
    async with node_app(two.base, app) as client:
        for name in ("a", "b"):
            call = await broadcast_call(direct[name])
            claimed = await client.wait_for(
                lambda m, n=name: (
                    m["kind"] == "claimed" and m["channel"].startswith(servers[n].name)
                )
            )
            channel_id = claimed["channel"]
            await client.wait_for(client.event("StasisStart", channel_id))
            proxied = Ari(two.base)
            assert (await proxied.http.post(f"channels/{channel_id}/continue")).status_code == 204
            await proxied.aclose()
            assert await direct[name].wait_global(f"BCAST_RESULT_{call}") == "SUCCESS"


@pytest.mark.usefixtures("asyncari_leftovers")
async def test_asyncari_works_each_call_on_its_own_server(
    two: ProxyProcess, unloaded: None, direct: dict[str, Ari], servers: dict[str, Asterisk]
) -> None:
    """asyncari, unmodified: a call from each server claimed, answered, played to, bridged
    with a channel originated next to it (`originator`), on its own server; a bridge of one
    server refuses the other's channel."""
    app = f"py-{token()}"
    bridges = {}
    async with (
        asyncari.connect(two.base, app, USER, PASSWORD) as client,
        client.on_channel_event("CallBroadcast") as offers,
        client.on_channel_event("StasisStart") as starts,
    ):
        for name in ("a", "b"):
            call = await broadcast_call(direct[name], 20000)
            offered, _ = await next_event(offers)
            assert offered.id.startswith(servers[name].name)
            await client.events.claimChannel(channelId=offered.id, application=app)
            objects, _ = await next_event(starts)
            caller = objects["channel"]
            await caller.answer()
            await caller.play(media="tone:ring")
            other = await client.channels.originate(
                endpoint="Local/s@tests-echo", app=app, originator=caller.id
            )
            assert other.id.startswith(servers[name].name)
            await next_event(starts)
            # a bridge chosen on this server by its id, as its own ids begin
            bridge = await client.bridges.create(
                type="mixing", bridgeId=f"{servers[name].name}-{token()}"
            )
            await bridge.addChannel(channel=f"{caller.id},{other.id}")
            held = (await direct[name].http.get(f"bridges/{bridge.id}")).json()
            assert set(held["channels"]) == {caller.id, other.id}
            bridges[name] = (bridge, caller, other, call)
        bridge_a = bridges["a"][0]
        with pytest.raises(Exception) as refused:
            await bridge_a.addChannel(channel=bridges["b"][1].id)
        assert "422" in str(refused.value) or getattr(refused.value, "status_code", 0) == 422
        for name, (bridge, caller, other, call) in bridges.items():
            await other.hangup()
            await _gone(direct[name], other.id)
            await bridge.destroy()
            await caller.continueInDialplan()
            assert await direct[name].wait_global(f"BCAST_RESULT_{call}") == "SUCCESS"


async def _gone(ari: Ari, channel_id: str) -> None:
    """Until Asterisk no longer has the channel: it answers a hangup once it is queued, and
    the channel goes after (shown on request only)."""

    async def absent() -> bool:
        return (await ari.http.get(f"channels/{channel_id}")).status_code == 404

    await until(absent, f"channel {channel_id} still there after its hangup")


async def test_replicas_share_the_fleet(
    servers: dict[str, Asterisk],
    unloaded: None,
    direct: dict[str, Ari],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """Two replicas (one real redis-server) in front of both servers: calls on either
    server are offered through both replicas and claimed through either; the leader killed,
    the other takes the whole fleet over and the calls go on."""
    replicas = [
        Replica(
            servers["a"],
            tmp_path / f"r{i}.log",
            f"r{i}",
            redis_server.url,
            "--upstream",
            servers["b"].base,
            "--broadcast-app",
            "fleetcast",
        )
        for i in range(2)
    ]
    prefix = f"rf{token()}"
    try:
        leader, _ = await wait_leader(replicas)
        async with contextlib.AsyncExitStack() as stack:
            clients = {
                r.replica_id: await stack.enter_async_context(
                    events(r.base, f"{prefix}-{r.replica_id}")
                )
                for r in replicas
            }
            await every_replica_knows(replicas, len(replicas))

            async def through(replica: Replica, name: str) -> None:
                app = f"{prefix}-{replica.replica_id}"
                client = clients[replica.replica_id]
                args = (client, replica.base, app, direct[name], f"^{prefix}-", "fleetcast")
                start = await broadcast_and_claim(*args)
                assert start["channel"]["id"].startswith(servers[name].name)

            for name in ("a", "b"):
                for replica in replicas:
                    await through(replica, name)
            leader.kill9()
            survivor = next(r for r in replicas if r is not leader)
            _, took = await wait_leader([survivor])
            print(f"fleet takeover after kill -9: {took:.2f} s")
            for name in ("a", "b"):
                await through(survivor, name)
    finally:
        for replica in replicas:
            replica.stop()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_conformance_through_two_servers(
    name: str, two: ProxyProcess, unloaded: None, direct: dict[str, Ari]
) -> None:
    """The broadcast scenarios: natively on one server, and through the two-server proxy
    with the calls on its second server."""
    native_apps, proxied_apps = Ari(direct["native"].base), Ari(two.base)
    try:
        native_target = Target(
            "native", direct["native"].base, "conformance-native", direct["native"], native_apps
        )
        proxy_target = Target("proxy", two.base, "conformance-proxy", direct["b"], proxied_apps)
        native = await SCENARIOS[name](native_target)
        for key, value in EXPECTED[name].items():
            assert native[key] == value, f"native {name}.{key}: the spec says {value!r}"
        proxied = await SCENARIOS[name](proxy_target)
        assert proxied == native, _diff(native, proxied)
    finally:
        await native_apps.aclose()
        await proxied_apps.aclose()


async def test_three_servers_merge_and_one_going_away(
    servers: dict[str, Asterisk], direct: dict[str, Ari], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Three servers behind one proxy: merged lists; one server killed in the middle of a
    run of broadcast calls: the others go on, its resources get a clear error, the client's
    socket stays open, and the application is registered there again when it is back."""
    names = ("native", "a", "b")
    proxy = ProxyProcess(
        servers["native"],
        tmp_path_factory.mktemp("fleet-three") / "proxy.log",
        "--upstream",
        servers["a"].base,
        "--upstream",
        servers["b"].base,
        "--broadcast-app",
        "broadcast3",
    )
    proxied = Ari(proxy.base)
    app = f"fleet-{token()}"
    try:
        async with events(proxy.base, app) as client:
            await registered(app, *direct.values())
            on = {
                n: (await direct[n].originate("Local/s@tests-echo", app=app))["id"] for n in names
            }
            listed = {c["id"] for c in (await proxied.http.get("channels")).json()}
            assert set(on.values()) <= listed
            for name in names:
                await broadcast_and_claim(
                    client, proxy.base, app, direct[name], f"^{app}$", "broadcast3"
                )
            # b goes away
            gone = servers["b"]
            gone_name = gone.base.split("//")[1]
            os.kill(gone.pid, signal.SIGKILL)
            await proxy.wait_log("went away")

            async def b_down() -> bool:
                async with httpx.AsyncClient() as plain:
                    ready = await plain.get(f"{proxy.base}/readyz")
                return ready.status_code == 200 and ready.json()["servers"][gone_name] is False

            await until(b_down, "the proxy sees b down while ready (others are up)")
            for name in ("native", "a", "native", "a"):
                await broadcast_and_claim(
                    client, proxy.base, app, direct[name], f"^{app}$", "broadcast3"
                )
            assert (await proxied.http.get(f"channels/{on['a']}")).status_code == 200
            unreachable = await proxied.http.get(f"channels/{on['b']}")
            assert unreachable.status_code == 502, unreachable.text
            assert gone_name in unreachable.json()["message"]
            listed = {c["id"] for c in (await proxied.http.get("channels")).json()}
            assert on["a"] in listed and on["native"] in listed
            # back: the application is registered there again, and its events come
            await asyncio.to_thread(stop_asterisk, gone)
            back = await asyncio.to_thread(
                start_asterisk, gone.name, systemname=gone.name, port=gone.port
            )
            servers["b"] = back
            await proxy.wait_log("is back")
            again = Ari(back.base)
            try:
                await again.set_native_modules(False)  # behind the proxies, as before
                made = await again.originate("Local/s@tests-echo", app=app)
                await client.wait_for(
                    lambda e: e["type"] == "StasisStart" and e["channel"]["id"] == made["id"]
                )
                await again.hangup_all()

                async def b_up() -> bool:
                    async with httpx.AsyncClient() as plain:
                        ready = await plain.get(f"{proxy.base}/readyz")
                    return ready.json()["servers"][gone_name] is True

                await until(b_up, "the broadcast application registered on b again")
                await broadcast_and_claim(client, proxy.base, app, again, f"^{app}$", "broadcast3")
            finally:
                await again.aclose()
    finally:
        await proxied.aclose()
        proxy.stop()
