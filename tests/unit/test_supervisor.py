"""The broadcast application's socket with a fake events-socket factory, guard and clock:
readiness, ApplicationReplaced (not ready, then the application taken back), reconnects."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ari_broadcast_proxy.broadcast.ownership import GUARD_INTERVAL
from ari_broadcast_proxy.broadcast.supervisor import Supervisor
from ari_broadcast_proxy.config import Config, Upstream
from ari_broadcast_proxy.errors import UpstreamError
from ari_broadcast_proxy.metrics import Metrics

from .test_executor import FakeClock, FakeGateway, settle

CONFIG = Config(upstreams=(Upstream("http://127.0.0.1:1", "u", "p"),), handover_transport="http")


class FakeSocket:
    def __init__(self) -> None:
        self.on_text: Callable[[str], None] | None = None
        self._closed = asyncio.Event()
        self.close_code: int | None = None

    def start(self, on_text: Callable[[str], None]) -> None:
        self.on_text = on_text

    def send(self, text: str) -> None:
        pass

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.close_code = code
        self._closed.set()

    async def wait_closed(self, timeout: float | None = None) -> None:
        await self._closed.wait()

    def deliver(self, event: dict[str, Any]) -> None:
        assert self.on_text is not None
        self.on_text(orjson.dumps(event).decode())


class FakeGuard:
    upstream = CONFIG.upstream

    def __init__(self) -> None:
        self.registered_answers: list[bool] = []
        self.enforced = 0

    async def registered(self) -> bool:
        return self.registered_answers.pop(0) if self.registered_answers else False

    async def enforce(self) -> list[str]:
        self.enforced += 1
        return []


class Harness:
    def __init__(self, failures: int = 0) -> None:
        self.sockets: list[FakeSocket] = []
        self.failures = failures
        self.events: list[dict[str, Any]] = []
        self.connected = 0
        self.clock = FakeClock()
        self.guard = FakeGuard()
        self.metrics = Metrics()
        self.supervisor = Supervisor(
            CONFIG,
            self.guard,  # type: ignore[arg-type]
            self.open,
            FakeGateway(),  # type: ignore[arg-type]
            self.metrics,
            self.clock,
            self.events.append,
            self.while_connected,
        )

    async def open(self, url: str, headers: Mapping[str, str], *, timeout: float) -> FakeSocket:
        assert url == "ws://127.0.0.1:1/ari/events?app=broadcast"
        if self.failures:
            self.failures -= 1
            raise UpstreamError("Asterisk is unreachable")
        self.sockets.append(FakeSocket())
        return self.sockets[-1]

    async def while_connected(self) -> None:
        self.connected += 1
        await asyncio.Event().wait()


async def test_ready_once_registered_and_events_reach_the_controller() -> None:
    harness = Harness(failures=2)
    task = asyncio.create_task(harness.supervisor.run())
    await settle()
    assert harness.supervisor.ready and len(harness.sockets) == 1
    backoff = [s for s in harness.clock.slept if s != GUARD_INTERVAL]
    assert len(backoff) == 2  # between the failed tries
    assert harness.guard.enforced >= 1 and harness.connected == 1  # guarded every interval
    harness.sockets[0].deliver({"type": "StasisStart", "channel": {"id": "c"}})
    assert [e["type"] for e in harness.events] == ["StasisStart"]
    task.cancel()


async def test_a_closed_socket_is_not_ready_and_reconnects() -> None:
    harness = Harness()
    task = asyncio.create_task(harness.supervisor.run())
    await settle()
    harness.sockets[0].close(1011)
    await settle()
    assert len(harness.sockets) == 2 and harness.supervisor.ready
    assert harness.connected == 2
    task.cancel()


async def test_application_replaced_makes_it_unready_until_taken_back() -> None:
    harness = Harness()
    harness.guard.registered_answers = [True, True]  # the other client holds it twice
    task = asyncio.create_task(harness.supervisor.run())
    await settle()
    harness.sockets[0].deliver({"type": "ApplicationReplaced", "application": "broadcast"})
    assert not harness.supervisor.ready
    assert harness.sockets[0].close_code is not None
    value = harness.metrics.registry.get_sample_value("ari_proxy_broadcast_app_replaced_total")
    assert value == 1
    assert harness.events == []  # not an event for the controller
    await settle()
    assert harness.guard.registered_answers == []  # polled until it was let go
    assert len(harness.sockets) == 2 and harness.supervisor.ready
    task.cancel()


async def test_stop_ends_the_run_without_a_cancellation() -> None:
    """A replica letting the broadcast application go: `stop` closes the socket and `run`
    returns even if the task's cancellation were lost (Python 3.11's wait_for)."""
    harness = Harness()
    task = asyncio.create_task(harness.supervisor.run())
    await settle()
    assert harness.supervisor.ready
    harness.supervisor.stop()
    await settle()
    assert task.done() and task.exception() is None
    assert harness.sockets[0].close_code is not None and not harness.supervisor.ready
    assert len(harness.sockets) == 1  # not reconnected
