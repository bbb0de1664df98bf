"""Replicas: three proxies share one Redis (a real redis-server) in front of one real
Asterisk. Racing applications spread over the replicas claim every call; the leader is
killed, frozen, stopped, and Redis restarted, in the middle of runs. After each: exactly one
204 per call, every 204 followed by the winner's StasisStart, every call out of the
broadcast application with its status (none FAILED because of the failover), nothing left.

CLUSTER_CALLS (default 500; CI runs fewer) sizes the kill -9 run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ..ari import PASSWORD, USER, Ari, Asterisk, Tasks, readyz, token, until
from ..redis_server import RedisServer, redis_server_fixture  # noqa: F401
from ..replicas import (
    CLUSTER_APP,
    Replica,
    running_replicas,
    start_replicas,
    stop_replicas,
    wait_leader,
)

CALLS = int(os.environ.get("CLUSTER_CALLS", "120" if os.environ.get("CI") else "500"))
TIMEOUT_MS = 6000  # each call's broadcast timeout: longer than a takeover


class App:
    """One racing application: connected to its replica, or to the next one alive when that
    one dies (as it would reconnect to a restarted Asterisk); claims every call it is offered
    through a random live replica, and lets the calls it wins go with `continue`."""

    def __init__(self, name: str, home: int, run: Run) -> None:
        self.name = name
        self.home = home
        self.run = run
        self.connected = asyncio.Event()

    async def serve(self) -> None:
        replicas = self.run.replicas
        index = self.home
        while True:
            replica = replicas[index % len(replicas)]
            index += 1
            if not replica.alive() or replica.paused:
                await asyncio.sleep(0.05)
                continue
            ws = "ws" + replica.base[len("http") :]
            url = f"{ws}/ari/events?app={self.name}&api_key={USER}:{PASSWORD}"
            with contextlib.suppress(OSError, ConnectionClosed):
                async with connect(url, max_size=None, compression=None) as socket:
                    self.connected.set()
                    await self.adopt(replica)
                    async for frame in socket:
                        self.on_event(json.loads(frame))
            await asyncio.sleep(0.05)

    async def adopt(self, replica: Replica) -> None:
        """After a reconnect, as after an Asterisk restart: the channels already in this
        application came with no StasisStart on the new socket; list them."""
        response = await self.run.http.get(replica.base + f"/ari/applications/{self.name}")
        for channel_id in response.json().get("channel_ids", []):
            if self.name not in self.run.starts[channel_id]:
                self.run.starts[channel_id].append(self.name)
                self.run.tasks.spawn(self.run.let_go(channel_id))

    def on_event(self, event: dict[str, Any]) -> None:
        channel_id = (event.get("channel") or {}).get("id", "")
        if event.get("type") == "CallBroadcast":
            self.run.offers[channel_id] += 1
            self.run.offered.set()
            self.run.tasks.spawn(self.run.claim(channel_id, self.name))
        elif event.get("type") == "StasisStart" and event.get("application") == self.name:
            if self.name in self.run.starts[channel_id]:
                return  # listed at a reconnect already
            self.run.started_at[channel_id] = time.monotonic()
            self.run.starts[channel_id].append(self.name)
            self.run.tasks.spawn(self.run.let_go(channel_id))


class Run:
    """Calls through the cluster and what every party saw of them."""

    def __init__(self, replicas: Sequence[Replica], ari: Ari) -> None:
        self.replicas = replicas
        self.ari = ari
        self.tasks = Tasks()
        self.offers: Counter[str] = Counter()
        self.claims: dict[str, list[tuple[str, int]]] = defaultdict(list)
        self.starts: dict[str, list[str]] = defaultdict(list)
        self.tags: list[str] = []
        self.claim_delay = 0.0  # seconds each application waits before claiming
        self.won_at: dict[str, float] = {}  # channel id -> when its 204 came
        self.started_at: dict[str, float] = {}  # channel id -> when its winner's StasisStart did
        self.offered = asyncio.Event()
        self.http = httpx.AsyncClient(auth=(USER, PASSWORD), timeout=15)

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive() and not r.paused]

    async def claim(self, channel_id: str, app: str) -> None:
        await asyncio.sleep(self.claim_delay)
        for _ in range(40):  # a replica that died under the claim: try another
            replica = random.choice(self.live())
            try:
                response = await self.http.post(
                    replica.base + "/ari/events/claim",
                    params={"channelId": channel_id, "application": app},
                )
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
                continue
            if response.status_code == 503:  # Redis unreachable: no verdict yet
                await asyncio.sleep(0.2)
                continue
            self.claims[channel_id].append((app, response.status_code))
            if response.status_code == 204:
                self.won_at[channel_id] = time.monotonic()
            return
        self.claims[channel_id].append((app, 0))

    async def let_go(self, channel_id: str) -> None:
        for _ in range(150):
            replica = random.choice(self.live())
            with contextlib.suppress(httpx.HTTPError):
                response = await self.http.post(
                    replica.base + f"/ari/channels/{channel_id}/continue"
                )
                if response.status_code in (204, 404):
                    return
            await asyncio.sleep(0.1)

    async def call(self, data: str = str(TIMEOUT_MS)) -> None:
        tag = token()
        self.tags.append(tag)
        await self.ari.originate(
            "Local/s@cluster-proxy",
            variables={
                "__BCAST_DATA": data,
                "__BCAST_TOKEN": tag,
                "__ARI_BROADCAST_APP": CLUSTER_APP,
            },
        )

    async def calls(
        self, count: int, rate: float = 25.0, halfway: asyncio.Event | None = None
    ) -> None:
        """`count` calls at `rate` per second; `halfway` is set when half are placed."""
        for i in range(count):
            self.tasks.spawn(self.call())
            if halfway is not None and i == count // 2:
                halfway.set()
            await asyncio.sleep(1 / rate)

    async def results(self, cap: float) -> Counter[str]:
        """Every call's STASISSTATUS, waiting (bounded) until each has one."""
        deadline = time.monotonic() + cap
        found: dict[str, str] = {}
        while time.monotonic() < deadline and len(found) < len(self.tags):
            for tag in self.tags:
                if tag not in found and (value := await self.ari.global_var(f"BCAST_RESULT_{tag}")):
                    found[tag] = value
            await asyncio.sleep(0.2)
        counts = Counter(found.values())
        counts["missing"] = len(self.tags) - len(found)
        if counts["missing"]:
            for channel in (await self.ari.http.get("channels")).json():
                print("left:", channel["id"], channel["name"], channel["dialplan"])
        return counts

    def check_claims(self) -> None:
        """Exactly one 204 per offered call; each 204 followed by its winner's StasisStart."""
        assert len(self.offers) == len(self.tags), (len(self.offers), len(self.tags))
        for channel_id in self.offers:
            won = [app for app, status in self.claims[channel_id] if status == 204]
            assert len(won) == 1, (channel_id, self.claims[channel_id])
            assert self.starts[channel_id] == won, (channel_id, self.starts[channel_id], won)
            others = {status for _, status in self.claims[channel_id] if status != 204}
            assert others <= {409, 404}, (channel_id, self.claims[channel_id])

    async def aclose(self) -> None:
        await self.tasks.cancel_all()
        await self.http.aclose()


@contextlib.asynccontextmanager
async def racing(replicas: Sequence[Replica], ari: Ari, apps: int = 6) -> Iterator[Run]:
    run = Run(replicas, ari)
    members = [App(f"racer-{i}", i % len(replicas), run) for i in range(apps)]
    for member in members:
        run.tasks.spawn(member.serve())
    try:
        async with asyncio.timeout(10):
            for member in members:
                await member.connected.wait()
        await every_replica_knows(replicas, apps)
        yield run
    finally:
        await run.aclose()


async def every_replica_knows(replicas: Sequence[Replica], apps: int, cap: float = 15) -> None:
    """Until each running replica's /readyz counts `apps` applications cluster-wide (the
    offers' audience: each replica's own, and what the others announced)."""
    async with httpx.AsyncClient(timeout=2) as http:
        for replica in (r for r in replicas if r.alive() and not r.paused):

            async def knows_all(base: str = replica.base) -> bool:
                ready = (await http.get(f"{base}/readyz")).json()
                return bool(ready.get("cluster_applications", 0) >= apps)

            await until(knows_all, f"{replica.replica_id} knowing {apps} applications", cap)


async def parked(ari: Ari) -> list[str]:
    response = await ari.http.get(f"applications/{CLUSTER_APP}")
    return response.json().get("channel_ids", []) if response.status_code == 200 else []


@pytest.fixture
def cluster(
    asterisk: Asterisk, redis_server: RedisServer, tmp_path: Path
) -> Iterator[list[Replica]]:
    with running_replicas(3, asterisk, redis_server.url, tmp_path) as replicas:
        yield replicas


async def test_claims_across_replicas(cluster: list[Replica], ari: Ari) -> None:
    """Every application, wherever connected, is offered each call once; one 204 per call,
    whichever replica the claims reach; one leader."""
    leader, _ = await wait_leader(cluster)
    async with racing(cluster, ari) as run:
        await run.calls(30)
        results = await run.results(30)
        run.check_claims()
        assert set(run.offers.values()) == {6}
        # Handed over at once, not at the deadline (6 s): the leader heard every claim,
        # even one answered by another replica before the leader had opened the offer.
        late = {c: run.started_at[c] - run.won_at[c] for c in run.won_at}
        assert max(late.values()) < 2.0, sorted(late.values())[-3:]
    assert results == Counter({"SUCCESS": 30, "missing": 0}), results
    assert await parked(ari) == []
    gauges = [await r.metric("ari_proxy_broadcast_leader") for r in cluster]
    assert sorted(gauges) == [0.0, 0.0, 1.0]
    await leader.wait_log(leader.replica_id)


async def test_unclaimed_times_out(cluster: list[Replica], ari: Ari) -> None:
    await wait_leader(cluster)
    run = Run(cluster, ari)
    try:
        started = time.monotonic()
        await run.call("1000")
        results = await run.results(15)
        assert results == Counter({"TIMEOUT": 1, "missing": 0}), results
        assert time.monotonic() - started < 12  # a 1 s timeout, with room for a slow CI
    finally:
        await run.aclose()


async def test_kill_leader_mid_run(cluster: list[Replica], ari: Ari) -> None:
    """kill -9 of the leader in the middle of a run: no call lost, none FAILED."""
    leader, _ = await wait_leader(cluster)
    async with racing(cluster, ari) as run:
        halfway = asyncio.Event()
        feeding = asyncio.create_task(run.calls(CALLS, halfway=halfway))
        await halfway.wait()
        killed_at = time.monotonic()
        leader.kill9()
        new, _ = await wait_leader(cluster, cap=15)
        took = time.monotonic() - killed_at
        print(f"takeover after kill -9: {took:.2f} s ({leader.replica_id} -> {new.replica_id})")
        await feeding
        results = await run.results(60)
        print(f"results: {dict(results)}")
        assert results == Counter({"SUCCESS": CALLS, "missing": 0}), results
        run.check_claims()
    assert took < 5
    assert await parked(ari) == []


async def test_sigterm_hands_over(cluster: list[Replica], ari: Ari) -> None:
    """SIGTERM on the leader hands leadership over at once: its calls on offer are claimed
    through the others and reach their winners instead of timing out."""
    leader, _ = await wait_leader(cluster)
    async with racing(cluster, ari) as run:
        run.claim_delay = 1.5  # every call is still on offer when the leader stops
        await run.calls(20)
        stopped_at = time.monotonic()
        leader.process.send_signal(signal.SIGTERM)  # its clients go on meanwhile
        leader.paused = True  # out of the leader count, and of the claims' choice
        new, _ = await wait_leader(cluster, cap=10)
        took = time.monotonic() - stopped_at
        print(f"hand-over on SIGTERM: {took:.2f} s ({leader.replica_id} -> {new.replica_id})")
        await run.calls(10)
        results = await run.results(30)
        assert results == Counter({"SUCCESS": 30, "missing": 0}), results
        run.check_claims()
        await asyncio.to_thread(leader.process.wait, 20)
    assert "handing the broadcast application over" in leader.log()
    assert await parked(ari) == []


async def test_sigstop_leader_is_fenced(cluster: list[Replica], ari: Ari) -> None:
    """The leader frozen past its lease: another takes over; woken, the old one acts on no
    call (it finds its lease gone and follows)."""
    leader, _ = await wait_leader(cluster)
    async with racing(cluster, ari) as run:
        await run.calls(20)
        stopped_at = time.monotonic()
        leader.sigstop()
        new, _ = await wait_leader(cluster, cap=10)
        print(f"takeover after SIGSTOP: {time.monotonic() - stopped_at:.2f} s")
        await run.calls(20)
        await asyncio.sleep(1.0)  # frozen well past its lease (2 s) before it wakes
        leader.sigcont()
        await run.calls(20)
        results = await run.results(30)
        assert results == Counter({"SUCCESS": 60, "missing": 0}), results
        run.check_claims()
        assert await leader.metric("ari_proxy_broadcast_leader") == 0.0
        assert await new.metric("ari_proxy_broadcast_leader") == 1.0
    assert await parked(ari) == []


async def test_redis_restart(cluster: list[Replica], ari: Ari, redis_server: RedisServer) -> None:
    """Redis restarted (empty) in the middle of a run: claims meanwhile get 503, the leader
    records its calls again, every call still reaches its winner."""
    await wait_leader(cluster)
    async with racing(cluster, ari) as run:
        run.claim_delay = 0.3
        halfway = asyncio.Event()
        feeding = asyncio.create_task(run.calls(60, halfway=halfway))
        await halfway.wait()
        redis_server.restart()
        await feeding
        results = await run.results(40)
        assert results == Counter({"SUCCESS": 60, "missing": 0}), results
        run.check_claims()
    assert await parked(ari) == []


async def test_takeover_times(
    asterisk: Asterisk, redis_server: RedisServer, ari: Ari, tmp_path: Path
) -> None:
    """kill -9 of the leader, ten times (a new replica started each time): the takeover
    time, median and worst, and no call placed across the gap lost."""
    times = []
    with running_replicas(3, asterisk, redis_server.url, tmp_path) as replicas:
        async with racing(replicas, ari) as run:
            for i in range(10):
                leader, _ = await wait_leader(replicas)
                killed_at = time.monotonic()
                leader.kill9()
                feeding = asyncio.create_task(run.calls(5, rate=5))  # across the gap
                _, _ = await wait_leader(replicas, cap=15)
                times.append(time.monotonic() - killed_at)
                await feeding
                index = replicas.index(leader)
                replicas[index] = Replica(
                    asterisk,
                    tmp_path / f"r{index + 1}-{i}.log",
                    f"r{index + 1}-{i}",
                    redis_server.url,
                    "--broadcast-app",
                    CLUSTER_APP,
                )
            results = await run.results(60)
            print(
                f"takeover after kill -9 (10 kills): median {statistics.median(times):.2f} s, "
                f"worst {max(times):.2f} s; calls across the gaps: {dict(results)}"
            )
            assert results == Counter({"SUCCESS": 50, "missing": 0}), results
            run.check_claims()
    assert max(times) < 5


class Cutter:
    """A TCP relay in front of Redis for one replica; `cut()` black-holes it (connections
    stay open, nothing passes: a network partition, not a refusal)."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.cut_off = asyncio.Event()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def __aenter__(self) -> Cutter:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> None:
        self.cut_off.set()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if not self.cut_off.is_set():
                up_reader, up_writer = await asyncio.open_connection(
                    "127.0.0.1", self._upstream_port
                )
                pipes = [
                    asyncio.create_task(self._pipe(reader, up_writer)),
                    asyncio.create_task(self._pipe(up_reader, writer)),
                ]
                await self.cut_off.wait()
                for pipe in pipes:
                    pipe.cancel()
                up_writer.close()
            await asyncio.sleep(3600)  # black hole: hold the client's socket, answer nothing
        except OSError:
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()


async def test_leader_cut_off_from_redis(
    asterisk: Asterisk, redis_server: RedisServer, ari: Ari, tmp_path: Path
) -> None:
    """The leader loses Redis (its network, not Redis): it stops acting when its lease runs
    out and lets the broadcast application go; another replica takes over; no call lost."""
    async with Cutter(redis_server.port) as cutter:
        first = Replica(
            asterisk,
            tmp_path / "cut.log",
            "cut",
            cutter.url,
            "--broadcast-app",
            CLUSTER_APP,
            wait=False,  # its Redis is relayed by this event loop: wait without blocking it
        )
        replicas = [first]
        try:
            assert (await wait_leader(replicas))[0] is first
            rest = tmp_path / "rest"
            rest.mkdir()
            others = start_replicas(2, asterisk, redis_server.url, rest, wait=False)
            replicas += others
            async with asyncio.timeout(30):
                while {await readyz(r.base) for r in others} != {200}:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)  # polling: readiness is only an HTTP answer
            async with racing(replicas, ari) as run:
                halfway = asyncio.Event()
                feeding = asyncio.create_task(run.calls(80, halfway=halfway))
                await halfway.wait()
                cut_at = time.monotonic()
                cutter.cut()
                await wait_leader(others, cap=15)
                took = time.monotonic() - cut_at
                print(f"takeover after the leader lost Redis: {took:.2f} s")
                await feeding
                results = await run.results(60)
                assert results == Counter({"SUCCESS": 80, "missing": 0}), results
                run.check_claims()
                assert await first.metric("ari_proxy_broadcast_leader") == 0.0
                assert await readyz(first.base) == 503
            assert took < 5
            await first.wait_log("stepping down")
        finally:
            stop_replicas(replicas)
    assert await parked(ari) == []


async def test_redis_unreachable_past_the_lease(
    cluster: list[Replica], ari: Ari, redis_server: RedisServer
) -> None:
    """Redis frozen (SIGSTOP) for longer than a lease: no verdict anywhere, claims 503,
    /readyz 503; back, every call on offer ends (claimed or TIMEOUT), one 204 at most per
    call, none left in the broadcast application."""
    await wait_leader(cluster)
    async with racing(cluster, ari) as run:
        run.claim_delay = 1.0  # the claims meet the outage
        await run.calls(10)
        assert redis_server.pid is not None
        os.kill(redis_server.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(3.0)  # past the lease (2 s): the leader steps down
            async with httpx.AsyncClient(auth=(USER, PASSWORD), timeout=5) as http:
                claim = await http.post(
                    cluster[0].base + "/ari/events/claim",
                    params={"channelId": next(iter(run.offers)), "application": "racer-0"},
                )
            assert claim.status_code == 503, claim.text
            assert "cannot be reached" in claim.json()["message"]
            assert {await readyz(r.base) for r in cluster} == {503}
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)
        _, back = await wait_leader(cluster, cap=10)
        print(f"a leader again {back:.2f} s after Redis answered")
        results = await run.results(40)
        print(f"results after the outage: {dict(results)}")
        assert results["missing"] == 0, results
        assert set(results) <= {"SUCCESS", "TIMEOUT", "missing"}, results
        for channel_id in run.offers:
            won = [app for app, status in run.claims[channel_id] if status == 204]
            assert len(won) <= 1, (channel_id, run.claims[channel_id])
            assert run.starts[channel_id] == won, (channel_id, run.starts[channel_id])
    assert await parked(ari) == []


async def test_the_whole_cluster_stopping_returns_its_calls(
    cluster: list[Replica], ari: Ari
) -> None:
    """SIGTERM to every replica at once (a `down` of the stack): nobody takes the leader's
    calls over, so they go back to the dialplan (TIMEOUT) as with one proxy, long before
    their own timeout; none is left in the broadcast application."""
    await wait_leader(cluster)
    run = Run(cluster, ari)
    try:
        for _ in range(5):
            await run.call("30000")
        async with asyncio.timeout(10):
            while len(await parked(ari)) < 5:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # polling: parked calls are only a listing
        stopped_at = time.monotonic()
        for replica in cluster:
            replica.process.send_signal(signal.SIGTERM)
        results = await run.results(20)
        took = time.monotonic() - stopped_at
        print(f"whole cluster stopped: calls back in {took:.2f} s: {dict(results)}")
        assert results == Counter({"TIMEOUT": 5, "missing": 0}), results
        assert took < 15
        assert await parked(ari) == []
    finally:
        await run.aclose()
