"""The stack itself: a real Asterisk answers ARI, carries calls, and leaves nothing behind."""

from __future__ import annotations

from ..ari import Ari, Asterisk, events


async def test_ping_and_version(ari: Ari) -> None:
    response = await ari.http.get("asterisk/info")
    assert response.status_code == 200
    assert response.json()["system"]["version"].startswith("22.")


async def test_originated_call_reaches_stasis_and_is_destroyed(
    asterisk: Asterisk, ari: Ari
) -> None:
    async with events(asterisk.base, "stack-test") as client:
        channel = await ari.originate("Local/s@tests-echo", app="stack-test")
        start = await client.wait_for("StasisStart")
        assert start["channel"]["id"] == channel["id"]
        assert start["application"] == "stack-test"
        assert (await ari.http.delete(f"channels/{channel['id']}")).status_code == 204
        destroyed = await client.wait_for(
            lambda e: e["type"] == "ChannelDestroyed" and e["channel"]["id"] == channel["id"]
        )
        assert destroyed["cause_txt"]


async def test_native_modules_are_available(ari: Ari) -> None:
    modules = {m["name"]: m for m in (await ari.http.get("asterisk/modules")).json()}
    assert modules["res_stasis_broadcast.so"]["status"] == "Running"
    assert modules["app_stasis_broadcast.so"]["status"] == "Running"
