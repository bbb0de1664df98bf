"""The compose stack in a real Docker engine, as users run it.

Both images are built from the Dockerfiles and docker-compose.yml that users run (docker-compose
build), the stack comes up and is waited for until healthy, calls are dialled into `[from-sip]`
(ARI-originated `Local/<exten>@from-sip` channels, straight to the stack's Asterisk), the demo
applications must win every one of them through the proxy, and the stack goes down leaving no
container behind. Then the same for the ha variant (docker-compose.yml + docker-compose.ha.yml:
Valkey, two replicas, demo-alpha on one and demo-beta on the other): exactly one replica leads,
calls are won through both, the leader stopped hands over to the other, and calls go on.

Needs a Docker engine with the base images: `scripts/test` provides both (scripts/docker-engine
ensure). Without an engine this module fails rather than skips. The stack listens on the fixed
ports of asterisk-conf/ (ARI 8088, SIP 5060) and the proxy's 8089 (the ha variant also on 8090
and 6390): the module fails with a clear message if something else holds them, and runs one at
a time per machine (a lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ..ari import ROOT, Ari, events, token
from ..replicas import leader_gauge

pytestmark = pytest.mark.timeout(900)  # a cold build downloads both images' packages

PROJECT = "ari-broadcast-proxy-e2e"
ASTERISK = "http://127.0.0.1:8088"
PROXY = "http://127.0.0.1:8089"
AUTH = ("asterisk", "asterisk")
PORTS = (
    ("tcp", 8088, "Asterisk's ARI (asterisk-conf/http.conf)"),
    ("tcp", 8089, "the proxy (ARI_PROXY_LISTEN in docker-compose.yml)"),
    ("udp", 5060, "Asterisk's SIP transport (asterisk-conf/pjsip.conf)"),
)
DEMOS = ("demo-alpha", "demo-beta")
CALLS = 8
HA_FILES = ("docker-compose.yml", "docker-compose.ha.yml")
HA_PORTS = (
    *PORTS,
    ("tcp", 8090, "proxy-b (ARI_PROXY_LISTEN in docker-compose.ha.yml)"),
    ("tcp", 6390, "valkey (docker-compose.ha.yml)"),
)
# The ha variant's replicas and the demo application each one serves.
REPLICAS = {"proxy": "http://127.0.0.1:8089", "proxy-b": "http://127.0.0.1:8090"}
DEMO_OF = {"proxy": "demo-alpha", "proxy-b": "demo-beta"}
LOCK = Path("/run/ari-broadcast-proxy/docker-stack.lock")


def _compose_command() -> list[str]:
    """The same choice as scripts/stack: Compose v2 if the docker CLI has it, else v1."""
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, check=False, timeout=30
    )
    if probe.returncode == 0:
        return ["docker", "compose"]
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("neither `docker compose` nor docker-compose is installed", pytrace=False)
    return [exe]


def _run(command: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def _check(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited with {result.returncode}:\n"
        f"{result.stdout[-5000:]}\n{result.stderr[-5000:]}"
    )
    return result.stdout


def _port_holder(kind: str, port: int) -> str:
    """What holds a port, as ss shows it (empty when it is free)."""
    if shutil.which("ss") is None:
        return ""
    flags = "-Hltnp" if kind == "tcp" else "-Hlunp"
    result = _run(["ss", flags, f"sport = :{port}"], timeout=30)
    return result.stdout.strip()


def _port_free(kind: str, port: int) -> bool:
    family = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, family) as probe:
        # As Asterisk and uvicorn bind: a TIME_WAIT left by an earlier run does not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Stack:
    compose: list[str]
    images: dict[str, str]  # service -> image
    files: tuple[str, ...] = ("docker-compose.yml",)
    timings: dict[str, float] = field(default_factory=dict)
    down: bool = False

    def run(self, *args: str, timeout: float = 600) -> str:
        files = [arg for name in self.files for arg in ("--file", name)]
        return _check(
            _run([*self.compose, *files, "--project-name", PROJECT, *args], timeout=timeout)
        )

    def health(self, service: str) -> str:
        container = self.run("ps", "--quiet", service, timeout=60).strip()
        return _check(
            _run(["docker", "inspect", "--format", "{{.State.Health.Status}}", container], 30)
        ).strip()

    def logs(self, service: str) -> str:
        return self.run("logs", "--no-color", service, timeout=60)

    def containers(self) -> list[str]:
        out = _check(
            _run(
                [
                    "docker",
                    "ps",
                    "--all",
                    "--quiet",
                    "--filter",
                    f"label=com.docker.compose.project={PROJECT}",
                ],
                timeout=60,
            )
        )
        return out.split()

    def take_down(self) -> None:
        start = time.monotonic()
        self.run("down", "--timeout", "20", timeout=300)
        self.timings["down"] = time.monotonic() - start
        self.down = True


@contextlib.contextmanager
def _machine_lock(timeout: float = 300) -> Iterator[None]:
    """One compose stack test per machine: the ports are fixed."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"another run held {LOCK} (the compose stack test) for {timeout:.0f} s",
                        pytrace=False,
                    )
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _wait_ready(
    stack: Stack,
    replicas: dict[str, str] | None = None,
    healthy: tuple[str, ...] = ("asterisk", "proxy"),
    timeout: float = 120,
) -> None:
    """Every healthcheck in `healthy` passes, /readyz answers 200 on every proxy (service ->
    base URL), and both demo applications are registered through the first one."""
    replicas = replicas or {"proxy": PROXY}
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            ready = {
                name: httpx.get(f"{base}/readyz", timeout=2).status_code == 200
                for name, base in replicas.items()
            }
            first = next(iter(replicas.values()))
            apps = httpx.get(f"{first}/ari/applications", auth=AUTH, timeout=2)
            names = {app["name"] for app in apps.json()} if apps.status_code == 200 else set()
            health = {service: stack.health(service) for service in healthy}
            last = f"readyz {ready}, health {health}, applications {sorted(names)}"
            if all(ready.values()) and set(health.values()) == {"healthy"} and set(DEMOS) <= names:
                return
        except (httpx.HTTPError, AssertionError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    logs = "\n".join(stack.logs(service)[-3000:] for service in (*replicas, *DEMOS))
    pytest.fail(f"the stack was not ready within {timeout:.0f} s ({last}):\n{logs}")


@pytest.fixture(scope="module")
def compose_command() -> list[str]:
    engine = _run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=60)
    if engine.returncode != 0:
        pytest.fail(
            "no Docker engine answers (`docker info` failed). scripts/test starts one; by hand: "
            f"scripts/docker-engine ensure.\n{engine.stderr.strip()}",
            pytrace=False,
        )
    return _compose_command()


@pytest.fixture(scope="module")
def machine() -> Iterator[None]:
    """The machine's compose stack ports, for this module's stacks one after the other."""
    with _machine_lock():
        yield


@contextlib.contextmanager
def _running(
    stack: Stack,
    ports: tuple[tuple[str, int, str], ...],
    build: tuple[str, ...],
    replicas: dict[str, str] | None = None,
    healthy: tuple[str, ...] = ("asterisk", "proxy"),
) -> Iterator[Stack]:
    """Build `build`, bring the stack up, wait until it is ready; take it down at the end."""
    # What a killed run may have left, of either variant (--remove-orphans: the other's).
    stack.run("down", "--timeout", "5", "--remove-orphans", timeout=300)
    taken = [
        f"{kind} 127.0.0.1:{port} ({what}): {_port_holder(kind, port) or 'in use'}"
        for kind, port, what in ports
        if not _port_free(kind, port)
    ]
    if taken:
        pytest.fail(
            "the compose stack needs fixed ports that something else holds; stop it first "
            "(a stack from `scripts/stack up`: scripts/stack down):\n  " + "\n  ".join(taken),
            pytrace=False,
        )
    for service in build:
        start = time.monotonic()
        stack.run("build", service, timeout=900)
        stack.timings[f"build {service}"] = time.monotonic() - start
    # Earlier builds of the proxy image, now untagged (the label is the final stage's only,
    # so the build stage's cached layers stay).
    _run(
        [
            "docker",
            "image",
            "prune",
            "--force",
            "--filter",
            "label=org.opencontainers.image.title=ari-broadcast-proxy",
        ],
        timeout=120,
    )
    try:
        start = time.monotonic()
        stack.run("up", "--detach", timeout=300)
        _wait_ready(stack, replicas, healthy)
        stack.timings["up until ready"] = time.monotonic() - start
        yield stack
    finally:
        if not stack.down:
            with contextlib.suppress(Exception):
                print("---- compose logs ----")
                print(stack.run("logs", "--no-color", "--tail", "200", timeout=60))
            stack.take_down()


def _images(compose: list[str], files: tuple[str, ...]) -> dict[str, str]:
    args = [arg for name in files for arg in ("--file", name)]
    config = yaml.safe_load(_check(_run([*compose, *args, "config"], timeout=120)))
    return {name: service["image"] for name, service in config["services"].items()}


@pytest.fixture(scope="module")
def stack(compose_command: list[str], machine: None) -> Iterator[Stack]:
    stack = Stack(compose_command, _images(compose_command, ("docker-compose.yml",)))
    # The demo services run the proxy's image.
    with _running(stack, PORTS, build=("asterisk", "proxy")) as running:
        yield running


def test_images_are_built_as_users_get_them(stack: Stack) -> None:
    proxy_image = stack.images["proxy"]
    assert stack.images["demo-alpha"] == stack.images["demo-beta"] == proxy_image
    # Not root, not Debian's `proxy` (uid 13): the user of its own.
    who = _check(
        _run(["docker", "run", "--rm", "--network", "host", "--entrypoint", "id", proxy_image])
    )
    assert re.match(r"uid=\d+\(ari-broadcast-proxy\) gid=\d+\(ari-broadcast-proxy\)", who), who
    assert not who.startswith(("uid=0(", "uid=13(")), who
    # The build's pip settings (docker/pip-settings) stay in the build stage.
    inside = _run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "host",
            "--entrypoint",
            "sh",
            proxy_image,
            "-c",
            "ls -d /build /etc/pip.conf /opt/venv/pip.conf 2>/dev/null; "
            "pip config list; ari-broadcast-proxy --version",
        ]
    )
    assert inside.returncode == 0, inside.stderr
    lines = inside.stdout.split()
    assert lines and lines[-1].startswith(("0.", "ari-broadcast-proxy")), inside.stdout
    assert not [line for line in inside.stdout.splitlines()[:-1] if line.strip()], inside.stdout
    history = _check(
        _run(["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", proxy_image])
    )
    assert "pip-setting" not in history and "PIP_CONFIG_FILE" not in history, history
    env = _check(
        _run(["docker", "image", "inspect", "--format", "{{json .Config.Env}}", proxy_image])
    )
    assert not [item for item in json.loads(env) if item.startswith("PIP_")], env


async def test_stack_answers_through_the_proxy(stack: Stack) -> None:
    async with httpx.AsyncClient(auth=AUTH, timeout=10) as client:
        info = await client.get(f"{PROXY}/ari/asterisk/info")
        assert info.status_code == 200, info.text
        assert info.json()["system"]["version"].startswith("22."), info.json()["system"]
        assert (await client.get(f"{PROXY}/ari/asterisk/ping")).status_code == 200
        modules = {
            m["name"]: m for m in (await client.get(f"{ASTERISK}/ari/asterisk/modules")).json()
        }
        assert modules["res_stasis_broadcast.so"]["status"] == "Running"


def _metrics() -> dict[str, float]:
    text = httpx.get(f"{PROXY}/metrics", timeout=5).text
    found = {}
    for line in text.splitlines():
        match = re.match(r'ari_proxy_broadcast_outcomes_total\{outcome="(\w+)"\} (\S+)$', line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


async def _call(stack: Stack, count: int, label: str) -> list[str]:
    """Dial `count` calls into [from-sip] at once, wait until each caller is gone, check that
    the dialplan saw STASISSTATUS=SUCCESS on every one; the ids of the calls on offer."""
    run = token()
    callers = [f"e2e-{run}-caller-{i}" for i in range(count)]
    # The Local channel's second half runs [from-sip]: that is the call on offer.
    offered = [f"e2e-{run}-call-{i}" for i in range(count)]
    ari = Ari(ASTERISK)
    start = time.monotonic()
    try:
        async with events(ASTERISK, "e2e-caller") as caller_app:

            async def dial(i: int) -> None:
                response = await ari.http.post(
                    "channels",
                    params={
                        "endpoint": f"Local/{100 + i}@from-sip",
                        "app": "e2e-caller",
                        "channelId": callers[i],
                        "otherChannelId": offered[i],
                        "timeout": 30,
                    },
                )
                assert response.status_code == 200, response.text
                # To see the dialplan's verdict: STASISSTATUS on the call on offer.
                subscribed = await ari.http.post(
                    "applications/e2e-caller/subscription",
                    params={"eventSource": f"channel:{offered[i]}"},
                )
                assert subscribed.status_code == 200, subscribed.text

            await asyncio.gather(*(dial(i) for i in range(count)))
            for caller in callers:
                await caller_app.wait_for(
                    lambda e, c=caller: e["type"] == "ChannelDestroyed" and e["channel"]["id"] == c,
                    timeout=60,
                )
            verdicts = {
                e["channel"]["id"]: e["value"]
                for e in caller_app.of_type("ChannelVarset")
                if e.get("variable") == "STASISSTATUS" and e["channel"]["id"] in offered
            }
        stack.timings[label] = time.monotonic() - start
        assert verdicts == dict.fromkeys(offered, "SUCCESS")
        assert (await ari.http.get("channels")).json() == []
    finally:
        await ari.hangup_all()
        await ari.aclose()
    return offered


def _check_races(stack: Stack, offered: list[str], demos: tuple[str, ...] = DEMOS) -> None:
    """Each call was offered to every one of `demos`, won by exactly one, and continued."""
    logs = {demo: stack.logs(demo) for demo in demos}
    for channel in offered:
        offered_to = [d for d in demos if f"event CallBroadcast channel={channel} " in logs[d]]
        assert offered_to == list(demos), (channel, offered_to)
        winners = [
            d for d in demos if re.search(rf"claim channel={channel} after \d+ ms: won", logs[d])
        ]
        assert len(winners) == 1, (channel, winners)
        assert f"continue channel={channel}: 204" in logs[winners[0]], logs[winners[0]][-3000:]


async def test_calls_into_from_sip_are_won_by_the_demo_applications(stack: Stack) -> None:
    """Each call: [from-sip] -> [broadcast-via-proxy] -> the stasis-broadcast subroutine ->
    the proxy offers it to demo-alpha and demo-beta, one wins it (204), answers, holds it,
    continues it; the dialplan sees STASISSTATUS=SUCCESS and hangs up."""
    before = _metrics()
    offered = await _call(stack, CALLS, f"{CALLS} calls")
    after = _metrics()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    assert delta.get("claimed") == CALLS, delta
    assert not {k: v for k, v in delta.items() if k != "claimed" and v}, delta  # no timeout...
    _check_races(stack, offered)
    assert "Traceback" not in stack.logs("proxy")


def test_down_leaves_nothing_behind(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    stack.take_down()
    assert stack.containers() == []
    assert [port for kind, port, _ in PORTS if not _port_free(kind, port)] == []
    with capsys.disabled():
        figures = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in stack.timings.items())
        print(f"\n[compose stack in Docker] {figures}")


# --------------------------------------------------------------------------------------------
# The ha variant: docker-compose.yml + docker-compose.ha.yml, after the single stack is down


@pytest.fixture(scope="module")
def ha_stack(compose_command: list[str], machine: None) -> Iterator[Stack]:
    stack = Stack(compose_command, _images(compose_command, HA_FILES), files=HA_FILES)
    with _running(
        stack,
        HA_PORTS,
        build=("asterisk", "proxy", "valkey"),  # cached when the single stack built them
        replicas=REPLICAS,
        healthy=("asterisk", "valkey", *REPLICAS),
    ) as running:
        yield running


def _readyz(base: str) -> dict[str, Any]:
    response = httpx.get(f"{base}/readyz", timeout=5)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _wait_one_leader(among: dict[str, str], timeout: float = 30) -> str:
    """Until exactly one of `among` (service -> base URL) reports leader 1 in /metrics and
    `"leader": true` in /readyz, and all answer /readyz 200; that service."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            gauges = {name: leader_gauge(base) for name, base in among.items()}
            bodies = {name: _readyz(base) for name, base in among.items()}
            leaders = [name for name, value in gauges.items() if value == 1]
            last = f"gauges {gauges}, readyz {bodies}"
            if len(leaders) == 1 and [n for n, b in bodies.items() if b["leader"]] == leaders:
                assert sorted(gauges.values()) == [0.0] * (len(among) - 1) + [1.0], gauges
                return leaders[0]
        except (httpx.HTTPError, AssertionError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    pytest.fail(f"not exactly one leader among {sorted(among)} within {timeout:.0f} s ({last})")


def test_ha_images(ha_stack: Stack) -> None:
    assert ha_stack.images["proxy-b"] == ha_stack.images["proxy"]
    valkey = ha_stack.images["valkey"]
    who = _check(_run(["docker", "run", "--rm", "--network", "host", "--entrypoint", "id", valkey]))
    assert who.startswith("uid=") and "(valkey)" in who and not who.startswith("uid=0("), who
    version = _check(_run(["docker", "run", "--rm", "--network", "host", valkey, "--version"]))
    assert version.startswith("Valkey server v="), version


def test_ha_two_replicas_one_leader(ha_stack: Stack) -> None:
    leader = _wait_one_leader(REPLICAS)
    bodies = {name: _readyz(base) for name, base in REPLICAS.items()}
    assert {name: body["replica"] for name, body in bodies.items()} == {
        "proxy": "proxy-a",
        "proxy-b": "proxy-b",
    }
    assert bodies[leader]["leader"] is True
    # Each demo application is connected to its own replica.
    assert {name: body["connected_applications"] for name, body in bodies.items()} == {
        "proxy": 1,
        "proxy-b": 1,
    }
    # Valkey answers, on loopback, with nothing to persist.
    container = ha_stack.run("ps", "--quiet", "valkey", timeout=60).strip()
    config = _check(
        _run(["docker", "exec", container, "valkey-cli", "-p", "6390", "config", "get", "save"])
    )
    assert config.split("\n")[:2] == ["save", ""], config


async def test_ha_calls_are_won_through_both_replicas(ha_stack: Stack) -> None:
    """The leader offers every call to demo-alpha (on proxy) and demo-beta (on proxy-b)
    alike; each call is won once, and the dialplan sees SUCCESS."""
    offered = await _call(ha_stack, CALLS, f"{CALLS} calls (ha)")
    _check_races(ha_stack, offered)
    for service in REPLICAS:
        assert "Traceback" not in ha_stack.logs(service), service


async def test_ha_leader_stopped_the_other_takes_over(ha_stack: Stack) -> None:
    """`compose stop` of the leading replica (SIGTERM: it hands the lease over); the other
    leads, calls are won by the demo application connected to it; then the stopped replica
    comes back as a follower."""
    leader = _wait_one_leader(REPLICAS)
    (survivor,) = set(REPLICAS) - {leader}
    start = time.monotonic()
    ha_stack.run("stop", "--timeout", "20", leader, timeout=120)
    assert _wait_one_leader({survivor: REPLICAS[survivor]}, timeout=30) == survivor
    ha_stack.timings["stop leader until the other leads"] = time.monotonic() - start

    offered = await _call(ha_stack, 4, "4 calls (one replica)")
    _check_races(ha_stack, offered, demos=(DEMO_OF[survivor],))

    start = time.monotonic()
    ha_stack.run("up", "--detach", timeout=300)  # every service running again
    _wait_ready(ha_stack, REPLICAS, ("asterisk", "valkey", *REPLICAS))
    assert _wait_one_leader(REPLICAS) in REPLICAS
    ha_stack.timings["stopped replica back"] = time.monotonic() - start


def test_ha_down_leaves_nothing_behind(ha_stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    ha_stack.take_down()
    assert ha_stack.containers() == []
    assert [port for kind, port, _ in HA_PORTS if not _port_free(kind, port)] == []
    with capsys.disabled():
        figures = ", ".join(f"{k} {v:.1f} s" for k, v in ha_stack.timings.items())
        print(f"\n[compose ha variant in Docker] {figures}")
