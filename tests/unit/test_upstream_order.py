"""Upstream socket steps per application name: in the order taken, one at a time."""

from __future__ import annotations

import asyncio

import pytest

from ari_broadcast_proxy import upstream_order
from ari_broadcast_proxy.upstream_order import UpstreamOrder


async def test_steps_on_a_name_run_in_the_order_taken() -> None:
    order = UpstreamOrder()
    ran: list[str] = []
    gate = asyncio.Event()

    async def step(name: str, apps: list[str], hold: bool = False) -> None:
        taken = order.take(apps)  # taken now, in call order, before any await
        async with taken:
            ran.append(f"{name} in")
            if hold:
                await gate.wait()
            ran.append(f"{name} out")

    close = asyncio.create_task(step("close a", ["a"], hold=True))
    reopen = asyncio.create_task(step("open a", ["a", "b"]))
    other = asyncio.create_task(step("open c", ["c"]))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert ran == ["close a in", "open c in", "open c out"]  # c waits for nobody
    gate.set()
    await asyncio.gather(close, reopen, other)
    assert ran[3:] == ["close a out", "open a in", "open a out"]
    assert order._last == {}  # nothing kept once every step is done


async def test_a_step_gives_up_waiting_after_the_cap(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(upstream_order, "STEP_TIMEOUT", 0.01)
    order = UpstreamOrder()
    stuck = order.take(["a"])
    await stuck.__aenter__()  # never ends
    async with order.take(["a"]):
        pass
    assert "went ahead of an earlier one" in caplog.text


async def test_a_cancelled_wait_ends_the_step_so_later_ones_go_on() -> None:
    order = UpstreamOrder()
    first = order.take(["a"])
    await first.__aenter__()
    second = order.take(["a"])
    waiting = asyncio.create_task(second.__aenter__())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await first.__aexit__()
    async with asyncio.timeout(1), order.take(["a"]):
        pass
