"""Test-side ARI helpers: a real Asterisk instance, real HTTP and WebSocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
SANDBOX = ROOT / "scripts" / "asterisk-sandbox"
USER, PASSWORD = "asterisk", "asterisk"
PROXY_USER = ("broadcast-proxy", "broadcast-proxy")
NATIVE_MODULES = ("app_stasis_broadcast.so", "res_stasis_broadcast.so")


def free_port(span: int = 1) -> int:
    """A port P such that P..P+span-1 are free on loopback right now (TCP and UDP: Asterisk
    takes its HTTP port over TCP and its SIP port, P+2, over UDP)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + span > 65535:
            continue
        try:
            for offset in range(span):
                with socket.socket() as s, socket.socket(type=socket.SOCK_DGRAM) as u:
                    if offset:
                        s.bind(("127.0.0.1", port + offset))
                    u.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port range on 127.0.0.1")


def proxy_command(upstream: str, port: int, *extra: str) -> list[str]:
    """The proxy's real CLI with its own ARI user, as the tests and the benchmark start it."""
    return [
        sys.executable,
        "-m",
        "ari_broadcast_proxy",
        "--upstream",
        upstream,
        "--username",
        PROXY_USER[0],
        "--password",
        PROXY_USER[1],
        "--listen",
        f"127.0.0.1:{port}",
        *extra,
    ]


@dataclass
class Asterisk:
    """One sandbox instance started for the test session."""

    name: str
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_dir(self) -> Path:
        cache = Path("/var/cache/ari-broadcast-proxy/asterisk-sid")
        return cache / "srv" / "asterisk" / self.name / "log"

    @property
    def pid(self) -> int:
        return int((self.log_dir.parent / "pid").read_text().strip())

    def cli(self, command: str) -> str:
        out = subprocess.run(
            [str(SANDBOX), "cli", "--name", self.name, "--", command],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout

    def messages(self) -> str:
        path = self.log_dir / "messages.log"
        return path.read_text(errors="replace") if path.exists() else ""


def start_asterisk(
    name: str, *, systemname: str | None = None, port: int | None = None
) -> Asterisk:
    """Start sandbox instance `name` (on `port`, HTTP, and the two after it, SIP; by
    default free ones); with `systemname`, its asterisk.conf gets that systemname (channel
    ids `systemname-epoch.seq`) and an entityid derived from it."""
    port = port or free_port(3)
    identity = ["--systemname", systemname] if systemname else []
    subprocess.run(
        [
            str(SANDBOX),
            "up",
            "--name",
            name,
            "--port",
            str(port),
            "--overlay",
            str(ROOT / "tests" / "asterisk-conf"),
            *identity,
        ],
        check=True,
        timeout=600,
    )
    return Asterisk(name, port)


def stop_asterisk(instance: Asterisk) -> None:
    subprocess.run([str(SANDBOX), "down", "--name", instance.name], check=True, timeout=60)


class Ari:
    """An ARI REST client (to Asterisk or to the proxy: same API)."""

    def __init__(self, base: str, auth: tuple[str, str] = (USER, PASSWORD)) -> None:
        self.base = base
        self.http = httpx.AsyncClient(base_url=base + "/ari/", auth=auth, timeout=10)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def originate(
        self, endpoint: str, *, variables: dict[str, str] | None = None, **params: Any
    ) -> dict[str, Any]:
        params.setdefault("timeout", 120)
        if "app" not in params:
            params.setdefault("context", "tests-hold")
            params.setdefault("extension", "s")
            params.setdefault("priority", 1)
        response = await self.http.post(
            "channels", params={"endpoint": endpoint, **params}, json={"variables": variables or {}}
        )
        response.raise_for_status()
        return response.json()

    async def global_var(self, name: str) -> str:
        response = await self.http.get("asterisk/variable", params={"variable": name})
        return response.json().get("value", "") if response.status_code == 200 else ""

    async def wait_global(self, name: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.global_var(name)
            if value:
                return value
            await asyncio.sleep(0.05)
        raise TimeoutError(f"global {name} never set")

    async def hangup_all(self) -> None:
        response = await self.http.get("channels")
        for channel in response.json():
            with contextlib.suppress(httpx.HTTPError):
                await self.http.delete(f"channels/{channel['id']}")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (await self.http.get("channels")).json():  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # polling: ARI has no "all channels gone" event

    async def set_native_modules(self, loaded: bool) -> None:
        """Load or unload res/app_stasis_broadcast on the running Asterisk."""
        order = reversed(NATIVE_MODULES) if loaded else NATIVE_MODULES
        for module in order:
            current = await self.http.get(f"asterisk/modules/{module}")
            is_loaded = current.status_code == 200 and current.json().get("status") == "Running"
            if loaded and not is_loaded:
                (await self.http.post(f"asterisk/modules/{module}")).raise_for_status()
            elif not loaded and is_loaded:
                (await self.http.delete(f"asterisk/modules/{module}")).raise_for_status()


class Events:
    """An events WebSocket that records everything and waits for matching events."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.received: list[dict[str, Any]] = []
        self._arrived = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for frame in self.socket:
                event = json.loads(frame)
                event["_received"] = time.monotonic()
                async with self._arrived:
                    self.received.append(event)
                    self._arrived.notify_all()

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool] | str, timeout: float = 20.0
    ) -> dict[str, Any]:
        """The first recorded event matching (a type name or a predicate)."""
        check = (lambda e: e.get("type") == predicate) if isinstance(predicate, str) else predicate
        async with asyncio.timeout(timeout):
            async with self._arrived:
                await self._arrived.wait_for(lambda: any(check(e) for e in self.received))
                return next(e for e in self.received if check(e))

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.received if e.get("type") == kind]

    async def close(self) -> None:
        await self.socket.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def events(
    base: str,
    apps: str,
    *,
    auth: str = f"{USER}:{PASSWORD}",
    release_device_states: bool = True,
    **query: str,
) -> AsyncIterator[Events]:
    """Connect an events WebSocket to `base` (Asterisk or the proxy). A subscribeAll socket
    is unsubscribed from device states before it closes, as the proxy does for its own:
    straight to Asterisk 22.10 its close can deadlock ARI for the rest of the session
    (asterisk/asterisk#2170, see ari_broadcast_proxy/subscribe_all.py). Not with
    `release_device_states=False`: the test of the proxy's own release."""
    ws_base = "ws" + base[len("http") :]
    params = "&".join([f"app={apps}", f"api_key={auth}", *(f"{k}={v}" for k, v in query.items())])
    socket = await connect(f"{ws_base}/ari/events?{params}", max_size=None, compression=None)
    client = Events(socket)
    try:
        yield client
    finally:
        if release_device_states and query.get("subscribeAll") == "true":
            user, _, password = auth.partition(":")
            async with httpx.AsyncClient(auth=(user, password), timeout=5) as http:
                for app in apps.split(","):
                    released = await http.delete(
                        f"{base}/ari/applications/{app}/subscription",
                        params={"eventSource": ALL_DEVICE_STATES},
                    )
                    assert released.status_code == 200, released.text
        await client.close()


# How Asterisk names a subscribeAll application's subscription to every device's state.
ALL_DEVICE_STATES = "deviceState:__AST_DEVICE_STATE_ALL_TOPIC"


async def until(
    check: Callable[[], Awaitable[bool]], what: str | Callable[[], str], cap: float = 15
) -> None:
    """Polls `check` every 50 ms until it holds (at most `cap` s): for state that is only
    shown on request (readiness, what replicas announced). `what` names it in the failure
    (a callable: said as it stands then)."""
    try:
        async with asyncio.timeout(cap):
            while not await check():  # noqa: ASYNC110 (shown on request only)
                await asyncio.sleep(0.05)
    except TimeoutError:
        said = what() if callable(what) else what
        raise AssertionError(f"not within {cap} s: {said}") from None


def token() -> str:
    return uuid.uuid4().hex[:12]


def claim_frame(channel_id: str, app: str) -> str:
    """A claim as a RESTRequest frame, ids naming the channel and the claimant (their
    RESTResponse carries them back)."""
    return json.dumps(
        {
            "type": "RESTRequest",
            "transaction_id": channel_id,
            "request_id": app,
            "method": "POST",
            "uri": f"events/claim?channelId={channel_id}&application={app}",
        }
    )


async def send_claim(
    http: httpx.AsyncClient, socket: ClientConnection, channel_id: str, app: str, *, ws: bool
) -> int | None:
    """Claim for `app`: over its events socket (`ws`; None here, the RESTResponse brings the
    status) or over HTTP (the status; 0 for no answer at all)."""
    if ws:
        await socket.send(claim_frame(channel_id, app))
        return None
    try:
        response = await http.post(
            "events/claim", params={"channelId": channel_id, "application": app}
        )
    except httpx.HTTPError:
        return 0
    return response.status_code


class Tasks:
    """The tasks a test spawns; `cancel_all` leaves nothing running on the session's event
    loop for the tests after it."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel_all(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def readyz(base: str) -> int:
    """A proxy's /readyz status (0: it did not answer)."""
    async with httpx.AsyncClient() as client:
        try:
            return (await client.get(base + "/readyz", timeout=2)).status_code
        except httpx.HTTPError:
            return 0


def end_process(process: subprocess.Popen[bytes], sig: int, timeout: float) -> int:
    """Send `sig` to a child still running and reap it, SIGKILL after `timeout` s; its
    exit status."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
