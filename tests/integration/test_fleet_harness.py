"""The fleet harness (tests/fleet.py): two real Asterisk servers side by side, each with its
own systemname and entity id, minting channel ids of their own, and nothing left running
after them."""

from __future__ import annotations

import asyncio
import os
import re
import time

from ..ari import Ari, events
from ..fleet import asterisk_pids, fleet_names, start_fleet, stop_fleet

APP = "fleetcheck"


async def test_two_servers_side_by_side() -> None:
    prefix = f"fleet{os.getpid()}-"
    names = fleet_names(2, prefix)
    started = time.monotonic()
    instances = await asyncio.to_thread(start_fleet, 2, prefix)
    print(f"fleet of 2 up in {time.monotonic() - started:.1f} s")
    try:
        assert [i.name for i in instances] == names
        assert len({i.port for i in instances}) == 2
        assert all(len(asterisk_pids(name)) == 1 for name in names)
        clients = [Ari(i.base) for i in instances]
        try:
            infos = [(await c.http.get("asterisk/info")).json() for c in clients]
            assert [info["config"]["name"] for info in infos] == names
            entity_ids = [info["system"]["entity_id"] for info in infos]
            assert len(set(entity_ids)) == 2
            assert all(re.fullmatch(r"02(:[0-9a-f]{2}){5}", e) for e in entity_ids)

            ids = []
            for instance, client, name, entity_id in zip(
                instances, clients, names, entity_ids, strict=True
            ):
                async with events(instance.base, APP) as socket:
                    channel = await client.originate("Local/s@tests-echo", app=APP)
                    start = await socket.wait_for("StasisStart")
                assert re.fullmatch(rf"{re.escape(name)}-\d+\.\d+", channel["id"]), channel["id"]
                assert start["channel"]["id"] == channel["id"]
                assert start["asterisk_id"] == entity_id
                ids.append(channel["id"])
            assert ids[0] != ids[1]
        finally:
            for client in clients:
                await client.hangup_all()
                await client.aclose()
    finally:
        await asyncio.to_thread(stop_fleet, instances)
    assert [asterisk_pids(name) for name in names] == [[], []]
