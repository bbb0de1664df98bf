"""SIGTERM on a leader: its lease loop ends, even when the cancellation lands as redis-py
sends a renewal (against a real redis-server).

On Python 3.11 `asyncio.wait_for`, which redis-py wraps around every command, drops a
cancellation that arrives just after the command was written: a loop stopped by cancelling
it alone went on renewing the lease of a replica that was shutting down, and no other
replica could lead (a CI run saw it: no leader for 10 s after SIGTERM). `Leadership.stop()`
ends the loop at its next step whatever became of the cancellation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis.asyncio.connection as redis_connection

from ari_broadcast_proxy.broadcast.clock import LoopClock
from ari_broadcast_proxy.cluster.leadership import Leadership
from ari_broadcast_proxy.cluster.store import SharedStore
from ari_broadcast_proxy.metrics import Metrics

from ..redis_server import RedisServer


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with RedisServer() as server:
        yield server.url


class Following:
    """The controller as leadership sees it: nothing to do here."""

    def lead(self) -> None:
        pass

    async def follow(self) -> None:
        pass


async def _nothing() -> None:
    pass


@pytest.fixture
def after_next_write(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], None]], None]:
    """Arm a callback run right after redis-py has written its next command: where a
    cancellation is lost inside `wait_for`."""
    armed: list[Callable[[], None]] = []
    original = redis_connection.AbstractConnection._send_packed_command

    async def send(self: Any, command: Any) -> None:
        await original(self, command)
        if armed:
            asyncio.get_running_loop().call_soon(armed.pop())

    monkeypatch.setattr(redis_connection.AbstractConnection, "_send_packed_command", send)
    return armed.append


@pytest.mark.parametrize("trial", range(5))
async def test_stop_ends_the_lease_loop_even_when_the_cancel_is_lost(
    redis_url: str, after_next_write: Callable[[Callable[[], None]], None], trial: int
) -> None:
    store = SharedStore(redis_url, f"stop-{trial}", "r1")
    leadership = Leadership(
        store,
        Following(),  # type: ignore[arg-type]
        Metrics(),
        LoopClock(),
        renewed_late=lambda: None,
        lease_vanished=_nothing,
    )
    loop = asyncio.create_task(leadership.run())
    try:
        async with asyncio.timeout(5):
            while not leadership.lease.leading:  # noqa: ASYNC110 (no event says it)
                await asyncio.sleep(0.01)

        def stop() -> None:  # as Replica.stop does on SIGTERM
            leadership.stop()
            loop.cancel()

        after_next_write(stop)  # lands as the next renewal is written
        done, _ = await asyncio.wait([loop], timeout=3)
        assert done, "the lease loop went on after stop()"
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await store.aclose()
