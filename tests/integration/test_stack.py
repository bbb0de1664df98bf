"""The stack itself: a real Asterisk answers ARI, carries calls, and leaves nothing behind;
scripts/stack up --ha brings up two replicas sharing a redis-server, and down stops them."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from ..ari import PASSWORD, ROOT, USER, Ari, Asterisk, events, free_port
from ..replicas import leader_gauge, process_state

AUTH = (USER, PASSWORD)


async def test_ping_and_version(ari: Ari) -> None:
    response = await ari.http.get("asterisk/info")
    assert response.status_code == 200
    assert response.json()["system"]["version"].startswith("22.")


async def test_originated_call_reaches_stasis_and_is_destroyed(
    asterisk: Asterisk, ari: Ari
) -> None:
    async with events(asterisk.base, "stack-test") as client:
        channel = await ari.originate("Local/s@tests-echo", app="stack-test")
        start = await client.wait_for("StasisStart")
        assert start["channel"]["id"] == channel["id"]
        assert start["application"] == "stack-test"
        assert (await ari.http.delete(f"channels/{channel['id']}")).status_code == 204
        destroyed = await client.wait_for(
            lambda e: e["type"] == "ChannelDestroyed" and e["channel"]["id"] == channel["id"]
        )
        assert destroyed["cause_txt"]


async def test_native_modules_are_available(ari: Ari) -> None:
    modules = {m["name"]: m for m in (await ari.http.get("asterisk/modules")).json()}
    assert modules["res_stasis_broadcast.so"]["status"] == "Running"
    assert modules["app_stasis_broadcast.so"]["status"] == "Running"


# --------------------------------------------------------------------------------------------
# scripts/stack up --ha without Docker: the sandbox's Asterisk, a redis-server, two replicas


@dataclass
class ScriptStack:
    """scripts/stack with its own instance name, state folder and free ports, so it runs
    beside a user's stack and the session's Asterisk; STACK_DOCKER=no: the sandbox variant
    even where scripts/test started a Docker engine."""

    run_dir: Path
    ports: dict[str, int]
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = {
            **os.environ,
            "STACK_DOCKER": "no",
            "STACK_NAME": f"pytest-stack-{os.getpid()}",
            "STACK_RUN": str(self.run_dir),
            **{f"STACK_{name.upper()}_PORT": str(port) for name, port in self.ports.items()},
        }

    def __call__(self, *args: str, timeout: float = 300) -> str:
        result = subprocess.run(
            [str(ROOT / "scripts" / "stack"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, (
            f"scripts/stack {' '.join(args)} exited with {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n{self.logs()}"
        )
        return result.stdout

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def pids(self) -> dict[str, int]:
        return {path.stem: int(path.read_text().strip()) for path in self.run_dir.glob("*.pid")}

    def logs(self) -> str:
        return "\n".join(
            f"---- {path.name} ----\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.run_dir.glob("*.log"))
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and process_state(pid) != "Z"


def _until(check: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not within {timeout} s"
        time.sleep(0.05)


@pytest.mark.timeout(600)
def test_scripts_stack_up_ha_runs_two_replicas_one_leading(tmp_path: Path) -> None:
    ari = free_port(3)  # ARI, and SIP two above it, as the sandbox's instances
    stack = ScriptStack(
        tmp_path / "run",
        {
            "ari": ari,
            "sip": ari + 2,
            "proxy": free_port(),
            "proxy_b": free_port(),
            "redis": free_port(),
        },
    )
    timings: dict[str, float] = {}
    pids: dict[str, int] = {}
    try:
        start = time.monotonic()
        out = stack("up", "--ha", timeout=600)
        timings["up --ha"] = time.monotonic() - start
        assert stack.url("proxy_b") in out and f"redis://127.0.0.1:{stack.ports['redis']}/0" in out
        pids = stack.pids()
        assert set(pids) == {"proxy", "proxy-b", "redis"}, pids

        # Both ready (`up` waited for it), one cluster, exactly one leader.
        bodies = {}
        for name in ("proxy", "proxy_b"):
            ready = httpx.get(f"{stack.url(name)}/readyz", timeout=5)
            assert ready.status_code == 200, (name, ready.text)
            bodies[name] = ready.json()
        assert {body["replica"] for body in bodies.values()} == {"proxy-a", "proxy-b"}
        _until(
            lambda: sorted(leader_gauge(stack.url(n)) for n in ("proxy", "proxy_b")) == [0, 1],
            "exactly one replica with ari_proxy_broadcast_leader 1",
        )
        for name in ("proxy", "proxy_b"):  # ARI through either replica
            ping = httpx.get(f"{stack.url(name)}/ari/asterisk/ping", auth=AUTH, timeout=5)
            assert ping.status_code == 200, (name, ping.text)
        status = stack("status")
        assert f"replica=proxy-a cluster=redis://127.0.0.1:{stack.ports['redis']}/0" in status
        assert f"proxy-b running pid={pids['proxy-b']} port={stack.ports['proxy_b']}" in status
        assert f"redis running pid={pids['redis']}" in status

        # `up --ha` again keeps what runs; `up` replaces it with the single proxy.
        stack("up", "--ha")
        assert stack.pids() == pids
        start = time.monotonic()
        stack("up")
        timings["up (from --ha)"] = time.monotonic() - start
        single = stack.pids()
        assert set(single) == {"proxy"} and single["proxy"] != pids["proxy"], single
        assert not [name for name, pid in pids.items() if _alive(pid)]
        body = httpx.get(f"{stack.url('proxy')}/readyz", timeout=5).json()
        assert body["ready"] is True and "replica" not in body, body
        pids = single
    finally:
        start = time.monotonic()
        stack("down", timeout=120)
        timings["down"] = time.monotonic() - start
    assert stack.pids() == {}
    assert not [name for name, pid in pids.items() if _alive(pid)]
    assert "stopped" in stack("status")
    assert not (stack.run_dir / "redis").exists()
    print("[scripts/stack --ha] " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
