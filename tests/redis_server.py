"""A real `redis-server` (Debian's package, see scripts/test) started by the tests themselves:
one child process on a free loopback port, no persistence, its own temporary directory.

Test modules take the `redis_server` fixture by importing it:

    from ..redis_server import RedisServer, redis_server_fixture  # noqa: F401

and name a parameter `redis_server`.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .ari import end_process, free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """`redis-server` as a child process on 127.0.0.1:`port` (a free one unless given).

    Nothing is persisted (`--save "" --appendonly no`): `restart()` (or `stop()` then
    `start()`) comes back on the same port with no data, as a Redis that restarted mid-run.
    Use it as a context manager (or the `redis_server` fixture): leaving kills the process
    whatever happened and removes its directory."""

    def __init__(self, port: int | None = None, *, start: bool = True) -> None:
        self.port = port if port is not None else free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pytest-redis-"))
        self.log_path = self.dir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._clients: list[redis.Redis] = []
        if start:
            try:
                self.start()
            except BaseException:
                self.close()
                raise

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        return [
            REDIS_SERVER,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
        ]

    def start(self, timeout: float = 10) -> None:
        """Start the server and return once it answers (at most `timeout` s)."""
        if self.running():
            raise RuntimeError(f"redis-server already running on port {self.port}")
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                **self.popen_options(),
            )
        self.wait_ready(timeout)

    def popen_options(self) -> dict[str, Any]:
        """More for `subprocess.Popen` (a subclass's: its own session, say)."""
        return {}

    def wait_ready(self, timeout: float = 10) -> None:
        """Until this server answers (INFO, with its pid); fails at once if it exited
        (port taken...), kills it after `timeout` s."""
        assert self.process is not None, "redis-server not started"
        # No retries: redis-py's default (3, with backoff) makes one refused PING last ~4 s.
        probe = redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=1, retry=Retry(NoBackoff(), 0)
        )
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited with {self.process.returncode}:\n{self.log()}"
                    )
                try:
                    # This server's, not another that holds the port (ours then exits).
                    if probe.info("server").get("process_id") == self.process.pid:
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() >= deadline:
                    self.kill()
                    raise RuntimeError(
                        f"redis-server not answering after {timeout} s:\n{self.log()}"
                    )
                time.sleep(0.02)
        finally:
            probe.close()

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then wait (SIGKILL after `timeout` s); the exit code, None if never started."""
        return self._end(signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """SIGKILL and reap: the server is gone at once, with no shutdown of its own."""
        return self._end(signal.SIGKILL, 10)

    def _end(self, sig: signal.Signals, timeout: float) -> int | None:
        if self.process is None:
            return None
        return end_process(self.process, sig, timeout)

    def restart(self, timeout: float = 10) -> None:
        """Stop (SIGTERM) and start again on the same port: every key is lost."""
        self.stop()
        self.start(timeout)

    def client(self, **kwargs: Any) -> redis.Redis:
        """A synchronous client of this server (closed by `close()`); `kwargs` go to
        `redis.Redis`, e.g. `decode_responses=True`, or `retry=Retry(NoBackoff(), 0)` to fail
        at once while the server is down (redis-py's default retries for ~4 s)."""
        client = redis.Redis(host="127.0.0.1", port=self.port, **kwargs)
        self._clients.append(client)
        return client

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """Kill the server if it still runs, close the clients, remove the directory."""
        try:
            self.kill()
        finally:
            for client in self._clients:
                client.close()
            self._clients.clear()
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RedisServer({self.url}, pid={self.pid}, running={self.running()})"


@pytest.fixture(name="redis_server")
def redis_server_fixture() -> Iterator[RedisServer]:
    """A fresh `redis-server` for one test, killed afterwards whatever the outcome; its log
    is printed at teardown (pytest shows it when the test failed)."""
    with RedisServer() as server:
        yield server
        print(f"---- redis-server log ({server.url}) ----")
        print(server.log()[-5000:])
