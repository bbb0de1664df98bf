"""Session fixtures: one real Asterisk per test session, and the proxy as a real process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from .ari import (
    ROOT,
    Ari,
    Asterisk,
    end_process,
    free_port,
    proxy_command,
    start_asterisk,
    stop_asterisk,
)


@pytest.fixture(scope="session")
def asterisk() -> Iterator[Asterisk]:
    instance = start_asterisk(f"pytest-{os.getpid()}")
    try:
        yield instance
    finally:
        stop_asterisk(instance)


class ProxyProcess:
    """`ari-broadcast-proxy` started with its real CLI against the session's Asterisk."""

    def __init__(self, asterisk: Asterisk, log_path: Path, *extra: str, wait: bool = True) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            proxy_command(asterisk.base, self.port, *extra),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        if wait:  # False for an upstream that is down: /readyz stays 503 then
            self.wait_ready()

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"proxy exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.base + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"proxy not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    async def wait_log(self, text: str, timeout: float = 10, count: int = 1) -> None:
        """Until the proxy has logged `text` (`count` times): its log is the one trace of
        what it did that no client can observe (polled: a file has no event to wait on)."""
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            assert time.monotonic() < deadline, f"{text!r} not logged within {timeout} s"
            await asyncio.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        status = end_process(self.process, sig, timeout)
        self._log.close()
        return status


@pytest.fixture(scope="session")
def proxy(asterisk: Asterisk, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    process = ProxyProcess(asterisk, tmp_path_factory.mktemp("proxy") / "proxy.log")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def proxy_http(
    asterisk: Asterisk, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    """A second proxy whose hand-overs and returns go over HTTP (the path of an Asterisk
    older than 20.14/22.4, which has no REST over WebSocket), with a broadcast application
    of its own: the dialplan reaches it through ARI_BROADCAST_APP=broadcast-http."""
    process = ProxyProcess(
        asterisk,
        tmp_path_factory.mktemp("proxy-http") / "proxy.log",
        "--handover-transport",
        "http",
        "--broadcast-app",
        "broadcast-http",
    )
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def ari(asterisk: Asterisk) -> AsyncIterator[Ari]:
    """ARI straight to Asterisk; hangs up every channel the test left behind."""
    client = Ari(asterisk.base)
    try:
        yield client
    finally:
        await client.hangup_all()
        await client.aclose()


@pytest.fixture
async def no_native(ari: Ari) -> AsyncIterator[None]:
    """The native modules unloaded, as for every broadcast through a proxy; loaded again
    afterwards."""
    await ari.set_native_modules(False)
    try:
        yield
    finally:
        await ari.set_native_modules(True)


@pytest.fixture
async def proxied(proxy: ProxyProcess) -> AsyncIterator[Ari]:
    """ARI through the proxy."""
    client = Ari(proxy.base)
    try:
        yield client
    finally:
        await client.aclose()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _proxy_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the proxy's log lines from this test (pytest shows them when it fails)."""
    if "proxy" not in request.fixturenames:
        yield
        return
    process: ProxyProcess = request.getfixturevalue("proxy")
    start = len(process.log())
    yield
    print("---- proxy log during this test ----")
    print(process.log()[start:][-20000:])
