"""Cluster mode: N proxy processes (replicas) against one Asterisk and one Redis.

A replica is the tests' `ProxyProcess` (the real CLI) with `--cluster-url URL --replica-id
rI`, plus the signals the fault tests send it. Which replica leads the broadcast application
is read where an operator reads it: the `ari_proxy_broadcast_leader` gauge (1 on the leader,
0 elsewhere) of each replica's /metrics.

    with running_replicas(3, asterisk, redis_server.url, tmp_path) as replicas:
        first, _ = await wait_leader(replicas)
        first.kill9()
        second, took = await wait_leader(replicas)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from .ari import Asterisk
from .conftest import ProxyProcess

CLUSTER_APP = "clustercast"  # the replicas' broadcast application, beside the session's proxy
LEADER_GAUGE = "ari_proxy_broadcast_leader"


class Replica(ProxyProcess):
    """One proxy process of a cluster; `paused` while SIGSTOPped."""

    def __init__(
        self,
        asterisk: Asterisk,
        log_path: Path,
        replica_id: str,
        cluster_url: str,
        *extra: str,
        wait: bool = True,
    ) -> None:
        self.replica_id = replica_id
        self.paused = False
        super().__init__(
            asterisk,
            log_path,
            "--cluster-url",
            cluster_url,
            "--replica-id",
            replica_id,
            *extra,
            wait=wait,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill9(self) -> int:
        """SIGKILL: the replica vanishes without a word to Redis or Asterisk."""
        return self.stop(signal.SIGKILL)

    def sigterm(self, timeout: float = 15) -> int:
        """SIGTERM and wait for the exit (SIGKILL after `timeout` s): a graceful shutdown."""
        return self.stop(signal.SIGTERM, timeout)

    def sigstop(self, timeout: float = 5) -> None:
        """SIGSTOP, returning once the kernel shows the process stopped: it holds its sockets
        and its Redis keys but does nothing (a frozen VM, a long GC pause)."""
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True
        deadline = time.monotonic() + timeout
        while self.alive() and process_state(self.process.pid) not in ("T", None):
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{self.replica_id} not stopped after {timeout} s")
            time.sleep(0.005)

    def sigcont(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        # A stopped process would only act on SIGTERM once continued (after the timeout).
        if self.paused and self.alive() and sig != signal.SIGKILL:
            self.sigcont()
        return super().stop(sig, timeout)

    async def metric(self, name: str, http: httpx.AsyncClient | None = None) -> float | None:
        """The value of an unlabelled sample in /metrics; None if absent or unreachable."""
        try:
            if http is None:
                async with httpx.AsyncClient(timeout=1) as own:
                    text = (await own.get(self.base + "/metrics")).text
            else:
                text = (await http.get(self.base + "/metrics", timeout=1)).text
        except httpx.HTTPError:
            return None
        return gauge(text, name)

    def __repr__(self) -> str:
        state = "paused" if self.paused else "alive" if self.alive() else "exited"
        return f"Replica({self.replica_id}, {self.base}, {state})"


def gauge(exposition: str, name: str) -> float | None:
    """The value of an unlabelled sample in a /metrics exposition (None if absent)."""
    for line in exposition.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def leader_gauge(base: str) -> float:
    """The proxy at `base` says whether it leads (blocking: for tests of whole stacks)."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    value = gauge(text, LEADER_GAUGE)
    assert value is not None, text[-2000:]
    return value


def process_state(pid: int) -> str | None:
    """The process state letter of /proc/PID/stat ("T" stopped, "Z" a zombie), None once it
    is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def start_replicas(
    n: int,
    asterisk: Asterisk,
    redis_url: str,
    log_dir: Path,
    *,
    broadcast_app: str = CLUSTER_APP,
    extra_args: Sequence[str] = (),
    wait: bool = True,
) -> list[Replica]:
    """Start replicas r1..rN at once (logs in `log_dir`/rI.log), then wait until each is
    ready unless `wait` is False; if one fails to start, every one is stopped."""
    replicas: list[Replica] = []
    try:
        for i in range(1, n + 1):
            replicas.append(
                Replica(
                    asterisk,
                    log_dir / f"r{i}.log",
                    f"r{i}",
                    redis_url,
                    "--broadcast-app",
                    broadcast_app,
                    *extra_args,
                    wait=False,
                )
            )
        if wait:
            for replica in replicas:
                replica.wait_ready()
    except BaseException:
        stop_replicas(replicas)
        raise
    return replicas


def stop_replicas(replicas: Sequence[Replica], timeout: float = 15) -> None:
    """SIGTERM to every replica still running at once (continued first if paused), SIGKILL
    to those still there after `timeout` s; the logs closed."""
    try:
        for replica in replicas:
            if replica.alive():
                if replica.paused:
                    replica.sigcont()
                replica.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for replica in replicas:
            with contextlib.suppress(subprocess.TimeoutExpired):
                replica.process.wait(max(0.0, deadline - time.monotonic()))
    finally:
        for replica in replicas:
            replica.kill9()


@contextmanager
def running_replicas(
    n: int,
    asterisk: Asterisk,
    redis_url: str,
    log_dir: Path,
    *,
    broadcast_app: str = CLUSTER_APP,
    extra_args: Sequence[str] = (),
) -> Iterator[list[Replica]]:
    """`start_replicas`, and all stopped on leaving whatever happened; their logs are
    printed then (pytest shows them when the test failed)."""
    replicas = start_replicas(
        n, asterisk, redis_url, log_dir, broadcast_app=broadcast_app, extra_args=extra_args
    )
    try:
        yield replicas
    finally:
        stop_replicas(replicas)
        for replica in replicas:
            print(f"---- {replica.replica_id} log ----")
            print(replica.log()[-20000:])


async def leader_gauges(replicas: Sequence[Replica]) -> dict[str, float | None]:
    """Each running replica's leader gauge by replica id (None: no gauge or unreachable);
    paused and exited replicas are left out (a paused one would not answer)."""
    async with httpx.AsyncClient(timeout=1) as http:
        return {
            replica.replica_id: await replica.metric(LEADER_GAUGE, http)
            for replica in replicas
            if replica.alive() and not replica.paused
        }


async def leaders(replicas: Sequence[Replica]) -> list[Replica]:
    """The running replicas whose leader gauge is 1."""
    gauges = await leader_gauges(replicas)
    return [replica for replica in replicas if gauges.get(replica.replica_id) == 1]


async def leader(replicas: Sequence[Replica]) -> Replica | None:
    """The one running replica that leads, None if none does; two leaders fail the test."""
    found = await leaders(replicas)
    assert len(found) <= 1, f"more than one leader: {found}"
    return found[0] if found else None


async def wait_leader(replicas: Sequence[Replica], cap: float = 10) -> tuple[Replica, float]:
    """Until exactly one running replica reports leader 1 (polled every 50 ms, at most `cap`
    s): that replica and the seconds it took."""
    started = time.monotonic()
    while True:
        found = await leaders(replicas)
        elapsed = time.monotonic() - started
        if len(found) == 1:
            return found[0], elapsed
        if elapsed >= cap:
            gauges = await leader_gauges(replicas)
            raise AssertionError(f"not exactly one leader after {cap} s: {gauges}")
        await asyncio.sleep(0.05)
