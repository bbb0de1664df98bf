"""The system under test: one Asterisk sandbox instance and the proxy as a subprocess.

Both are started by the benchmark and stopped by it, on success, on errors and on Ctrl-C.
The proxy is started with the same CLI as tests/conftest.py's ProxyProcess.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.ari import NATIVE_MODULES, free_port, proxy_command

ROOT = Path(__file__).resolve().parent.parent
SANDBOX = ROOT / "scripts" / "asterisk-sandbox"
OVERLAY = Path(__file__).resolve().parent / "asterisk-conf"
CACHE = Path("/var/cache/ari-broadcast-proxy/asterisk-sid")
ADMIN = ("asterisk", "asterisk")


def _die_with_parent() -> None:
    """preexec_fn: the proxy gets SIGTERM if the benchmark dies without cleaning up."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class AsteriskInstance:
    def __init__(self, name: str, port: int | None = None, *, managed: bool = True) -> None:
        self.name = name
        self.port = port or 0
        self.managed = managed  # False: someone else's instance (the smoke test's fixture)
        self.started = False

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        path = CACHE / "srv" / "asterisk" / self.name / "pid"
        with contextlib.suppress(OSError, ValueError):
            return int(path.read_text().strip())
        return None

    def up(self, systemname: str | None = None) -> None:
        """Start the instance; `systemname`: its asterisk.conf systemname (channel ids
        `systemname-epoch.seq`) and an entityid derived from it."""
        status = subprocess.run(
            [str(SANDBOX), "status", "--name", self.name],
            capture_output=True,
            text=True,
            check=False,
        )
        if status.stdout.startswith("running"):
            raise RuntimeError(
                f"sandbox instance {self.name!r} is already running ({status.stdout.strip()}); "
                f"stop it with: scripts/asterisk-sandbox down --name {self.name}"
            )
        self.port = self.port or free_port(3)  # HTTP port and SIP port (+2)
        self.started = True  # from here on, `down` is due even if `up` fails half-way
        subprocess.run(
            [
                str(SANDBOX),
                "up",
                "--name",
                self.name,
                "--port",
                str(self.port),
                "--overlay",
                str(OVERLAY),
                *(["--systemname", systemname] if systemname else []),
            ],
            check=True,
            timeout=300,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def down(self) -> None:
        if self.started and self.managed:
            subprocess.run(
                [str(SANDBOX), "down", "--name", self.name],
                check=False,
                timeout=60,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.started = False

    def version(self) -> str:
        path = CACHE / ".asterisk-version"
        return path.read_text().strip() if path.exists() else "?"


class ProxyInstance:
    """`python -m ari_broadcast_proxy` with its real CLI (as tests/conftest.py ProxyProcess)."""

    # The interpreter the proxy runs on (bench/run --proxy-python): the project installed in
    # its environment, as in this one's.
    python = sys.executable

    def __init__(self, upstream: str, log_path: Path, *extra: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [self.python, *proxy_command(upstream, self.port, *extra)[1:]],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,  # Ctrl-C is the benchmark's to handle, in order
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (the workers are processes, not threads)
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"proxy exited with {self.process.returncode}, see {self.log_path}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base + "/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"proxy not ready after {timeout}s, see {self.log_path}")

    def stop(self, timeout: float = 15) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class Admin:
    """The benchmark's own ARI client, straight to Asterisk (never through the proxy)."""

    def __init__(self, asterisk: str, proxy: str) -> None:
        self.asterisk = asterisk
        self.proxy = proxy
        self.http = httpx.AsyncClient(auth=ADMIN, timeout=10)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def set_native_modules(self, loaded: bool) -> None:
        """Native path: res/app_stasis_broadcast loaded; proxy path: unloaded."""
        order = reversed(NATIVE_MODULES) if loaded else NATIVE_MODULES
        for module in order:
            url = f"{self.asterisk}/ari/asterisk/modules/{module}"
            current = await self.http.get(url)
            running = current.status_code == 200 and current.json().get("status") == "Running"
            if loaded and not running:
                (await self.http.post(url)).raise_for_status()
            elif not loaded and running:
                (await self.http.delete(url)).raise_for_status()

    async def applications(self) -> set[str]:
        response = await self.http.get(f"{self.asterisk}/ari/applications")
        return {app["name"] for app in response.json()}

    async def proxy_ready(self) -> dict[str, Any]:
        return (await self.http.get(f"{self.proxy}/readyz")).json()

    async def wait_registered(self, names: list[str], via_proxy: bool, timeout: float = 10) -> None:
        """Until Asterisk (and for the proxy path, the proxy's registry) knows every app."""
        deadline = time.monotonic() + timeout
        want = set(names)
        while time.monotonic() < deadline:
            ok = want <= await self.applications()
            if ok and via_proxy:
                ok = (await self.proxy_ready())["connected_applications"] >= len(want)
            if ok:
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"applications not registered after {timeout}s: {sorted(want)[:5]}...")

    async def channels(self) -> list[dict[str, Any]]:
        return (await self.http.get(f"{self.asterisk}/ari/channels")).json()

    async def wait_no_channels(self, timeout: float = 10) -> int:
        """Wait until GET /channels is empty; hang up and return the count of stragglers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not await self.channels():
                return 0
            await asyncio.sleep(0.1)
        left = await self.channels()
        for channel in left:
            with contextlib.suppress(httpx.HTTPError):
                await self.http.delete(f"{self.asterisk}/ari/channels/{channel['id']}")
        return len(left)

    async def originate_flood(self, iterations: int) -> None:
        """One Local channel running [bench-events]: `iterations` loops of UserEvent()."""
        response = await self.http.post(
            f"{self.asterisk}/ari/channels",
            params={
                "endpoint": "Local/s@bench-events",
                "context": "bench-hold",
                "extension": "s",
                "priority": 1,
                "timeout": 120,
            },
            json={"variables": {"__BENCH_EVENTS": str(iterations)}},
        )
        response.raise_for_status()


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def asterisk_cpu_seconds(pid: int | None) -> float:
    """Asterisk's own CPU (all its threads)."""
    return cpu_seconds([pid]) if pid else 0.0
