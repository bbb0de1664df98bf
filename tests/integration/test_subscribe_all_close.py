"""A client's subscribeAll socket closing through the proxy never wedges Asterisk's ARI.

Asterisk 22.10 deadlocks ARI when a subscribeAll application's socket closes while a
device-state event is queued for it (asterisk/asterisk#2170; see subscribe_all.py).
Straight to Asterisk, opening and closing such a socket while device states change wedged
it within 2 to 32 rounds when this was found; through the proxy, which releases the
subscription over REST first, every round must leave `GET /applications` answering.

The test runs on an Asterisk of its own: should the proxy fail, the session's Asterisk would
stay wedged for every later test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from ..ari import Ari, Asterisk, events, start_asterisk, stop_asterisk
from ..conftest import ProxyProcess

ROUNDS = 40 if os.environ.get("CI") else 100


@pytest.fixture(scope="module")
def own_asterisk() -> Iterator[Asterisk]:
    instance = start_asterisk(f"wedge-{os.getpid()}")
    try:
        yield instance
    finally:
        stop_asterisk(instance)


@contextlib.asynccontextmanager
async def device_states_changing(ari: Ari) -> AsyncIterator[None]:
    """Four writers toggling a custom device state as fast as Asterisk takes it."""

    async def toggle(name: str) -> None:
        busy = False
        while True:
            busy = not busy
            state = "INUSE" if busy else "NOT_INUSE"
            await ari.http.put(f"deviceStates/Stasis:{name}", params={"deviceState": state})

    writers = [asyncio.create_task(toggle(f"wedge{i}")) for i in range(4)]
    try:
        yield
    finally:
        for writer in writers:
            writer.cancel()
        await asyncio.gather(*writers, return_exceptions=True)


async def test_closing_subscribe_all_sockets_leaves_ari_answering(
    own_asterisk: Asterisk, tmp_path: Path
) -> None:
    proxy = ProxyProcess(own_asterisk, tmp_path / "proxy.log")
    ari = Ari(own_asterisk.base)
    try:
        async with device_states_changing(ari):
            for round_ in range(ROUNDS):
                async with events(
                    proxy.base, "observer", release_device_states=False, subscribeAll="true"
                ) as observer:
                    # Registered and hearing device states: one is queued at any moment.
                    await observer.wait_for("DeviceStateChanged", 10)
                try:
                    listed = await ari.http.get("applications", timeout=5)
                except httpx.TimeoutException:
                    pytest.fail(f"ARI wedged after round {round_}: GET /applications hangs")
                assert listed.status_code == 200
        assert "device states not released" not in proxy.log()
    finally:
        await ari.aclose()
        proxy.stop()
