"""What only the proxy does around broadcasts: refusing claims up front, credentials,
native broadcasts passing through, the direct form, and keeping its internals private."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from ..ari import PASSWORD, USER, Ari, Asterisk, events
from ..conftest import ProxyProcess
from .scenarios import Target, apps, claim, place_call, result, win_and_let_go

NOT_FOUND = {"message": "Channel not found or not in broadcast state"}


@pytest.fixture
async def proxy_target(asterisk: Asterisk, ari: Ari, proxy: ProxyProcess) -> AsyncIterator[Target]:
    await ari.set_native_modules(False)
    client = Ari(proxy.base)
    try:
        yield Target("proxy", proxy.base, "conformance-proxy", ari, client)
    finally:
        await client.aclose()
        await ari.set_native_modules(True)


async def test_claim_for_an_app_that_was_not_offered_is_refused_and_the_race_goes_on(
    proxy_target: Target,
) -> None:
    async with apps(proxy_target, "ivr-main", "support") as sockets:
        call = await place_call(proxy_target, "5000,^ivr-")
        offer = await sockets["ivr-main"].wait_for("CallBroadcast")
        channel_id = offer["channel"]["id"]
        for intruder in ("support", "not-connected-at-all"):
            refused = await claim(proxy_target.apps_ari, channel_id, intruder)
            assert refused == {
                "status": 422,
                "body": {"message": "Application was not offered this channel"},
            }
        await win_and_let_go(proxy_target, sockets["ivr-main"], channel_id, "ivr-main", call)
        assert sockets["support"].of_type("CallBroadcast") == []


async def test_claims_need_credentials_asterisk_accepts(
    proxy_target: Target, proxy: ProxyProcess
) -> None:
    async with apps(proxy_target, "guarded") as sockets:
        call = await place_call(proxy_target, "3000")
        offer = await sockets["guarded"].wait_for("CallBroadcast")
        params = {"channelId": offer["channel"]["id"], "application": "guarded"}
        url = f"{proxy.base}/ari/events/claim"
        async with httpx.AsyncClient() as anonymous:
            nobody = await anonymous.post(url, params=params)
            wrong = await anonymous.post(url, params=params, auth=("asterisk", "wrong"))
            readonly = await anonymous.post(url, params=params, auth=("readonly", "readonly"))
        assert nobody.status_code == 401
        assert nobody.json() == {"message": "Authentication required"}
        assert nobody.headers["www-authenticate"].startswith("Basic")
        assert wrong.status_code == 401
        assert readonly.status_code == 403
        assert readonly.json() == {"message": "Write access denied"}
        # None of those ended the race.
        channel_id = offer["channel"]["id"]
        await win_and_let_go(proxy_target, sockets["guarded"], channel_id, "guarded", call)


async def test_claim_for_a_channel_the_proxy_is_not_broadcasting_gets_native_404(
    proxy_target: Target,
) -> None:
    # Native modules are unloaded: Asterisk says 501, the client must see native's 404.
    response = await claim(proxy_target.apps_ari, "1234.5678", "anyone")
    assert response == {"status": 404, "body": NOT_FOUND}


async def test_native_broadcasts_keep_working_through_the_proxy(
    asterisk: Asterisk, ari: Ari, proxy: ProxyProcess
) -> None:
    await ari.set_native_modules(True)
    client = Ari(proxy.base)
    native = Target("native-through-proxy", proxy.base, "conformance-native", ari, client)
    try:
        async with apps(native, "passenger") as sockets:
            call = await place_call(native, "5000")
            offer = await sockets["passenger"].wait_for("CallBroadcast")
            assert offer["channel"]["dialplan"]["app_name"] == "StasisBroadcast"
            channel_id = offer["channel"]["id"]
            await win_and_let_go(native, sockets["passenger"], channel_id, "passenger", call)
    finally:
        await client.aclose()


async def test_direct_form_reports_its_verdict_in_ari_broadcast_status(
    proxy_target: Target,
) -> None:
    async with apps(proxy_target, "direct-app") as sockets:
        client = sockets["direct-app"]
        timed_out = await place_call(proxy_target, "300", context="conformance-direct")
        offer = await client.wait_for("CallBroadcast")
        assert offer["channel"]["dialplan"]["app_name"] == "StasisBroadcast"
        assert offer["channel"]["dialplan"]["app_data"] == "300"
        assert (await result(proxy_target, timed_out))[0] == "TIMEOUT"

        claimed = await place_call(proxy_target, "5000,,x::z", context="conformance-direct")
        await client.wait_for(lambda e: len(client.of_type("CallBroadcast")) == 2)
        channel_id = client.of_type("CallBroadcast")[1]["channel"]["id"]
        start = await win_and_let_go(proxy_target, client, channel_id, "direct-app", claimed)
        assert start["args"] == ["x", "", "z"]
        assert start["channel"]["dialplan"]["context"] == "conformance-direct"
        assert start["channel"]["dialplan"]["app_name"] == "StasisBroadcast"

        # A hangup during the broadcast: TIMEOUT, as native's STASISSTATUS (it was empty).
        hung_up = await place_call(proxy_target, "5000", context="conformance-direct")
        await client.wait_for(lambda e: len(client.of_type("CallBroadcast")) == 3)
        channel_id = client.of_type("CallBroadcast")[2]["channel"]["id"]
        await proxy_target.ari.http.delete(f"channels/{channel_id}")
        assert await proxy_target.ari.wait_global(f"BCAST_HANGUP_{hung_up.token}") == "TIMEOUT"


async def test_subscribe_all_clients_never_see_the_proxys_internals(proxy_target: Target) -> None:
    """A subscribeAll client sees every channel's events. The proxy's own variables and
    application never show; once the proxy holds the call, snapshots read as native's (the
    subroutine's first dialplan steps can show before the proxy has seen the channel)."""
    async with (
        events(proxy_target.app_base, "observer", subscribeAll="true") as observer,
        apps(proxy_target, "worker") as sockets,
    ):
        call = await place_call(proxy_target, "5000,,a:b")
        offer = await sockets["worker"].wait_for("CallBroadcast")
        channel_id = offer["channel"]["id"]
        assert (await claim(proxy_target.apps_ari, channel_id, "worker"))["status"] == 204
        started = (await sockets["worker"].wait_for("StasisStart"))["_received"]
        await proxy_target.apps_ari.http.post(f"channels/{channel_id}/answer")
        await proxy_target.apps_ari.http.post(f"channels/{channel_id}/continue")
        assert (await result(proxy_target, call))[0] == "SUCCESS"
        await proxy_target.ari.http.delete(f"channels/{channel_id}")
        await observer.wait_for(  # every event of the call has arrived by then
            lambda e: e["type"] == "ChannelDestroyed" and e["channel"]["id"] == channel_id
        )
        for event in observer.received:
            assert not str(event.get("variable", "")).startswith("ARI_BROADCAST_"), event
            if event.get("application") == "broadcast":
                pytest.fail(f"the proxy's own application leaked: {event}")
            channel = event.get("channel") or {}
            watched = ("ChannelStateChange", "StasisStart", "StasisEnd")
            mine = channel.get("id") == channel_id and event["_received"] >= started
            if mine and event["type"] in watched:
                assert channel["dialplan"]["app_name"] == "StasisBroadcast", event


async def test_a_broadcast_logs_native_warnings_with_the_channel_id(
    proxy_target: Target, proxy: ProxyProcess
) -> None:
    async with apps(proxy_target, "listener") as sockets:
        call = await place_call(proxy_target, "70000,(a+)+(b+)+(c+)+(d+)+")
        offer = await sockets["listener"].wait_for("CallBroadcast")
        assert (await result(proxy_target, call))[0] == "TIMEOUT"
    channel_id = offer["channel"]["id"]
    await proxy.wait_log(f"channel {channel_id}: rejecting app_filter regex")
    log = proxy.log()
    assert f"channel {channel_id}: invalid timeout value '70000' (must be 0-60000ms)" in log
    assert f"channel {channel_id}: rejecting app_filter regex as potentially dangerous" in log


async def test_a_channel_list_too_large_to_buffer_still_reads_as_native(
    proxy_target: Target, ari: Ari
) -> None:
    """GET /channels longer than the proxy streams unread (256 KiB) is still rewritten: the
    broadcast channel in it shows native's dialplan, never the proxy's subroutine."""
    name = "n" * 4000
    fillers = []
    try:
        for i in range(40):  # each Local pair's snapshots carry a 4000-character caller name
            made = await ari.http.post(
                "channels",  # in the body: Asterisk refuses request lines over 4 KiB
                json={
                    "endpoint": "Local/s@tests-echo",
                    "context": "tests-hold",
                    "extension": "s",
                    "priority": 1,
                    "callerId": f'"{name}" <{i}>',
                },
            )
            assert made.status_code == 200, made.text
            fillers.append(made.json()["id"])
        async with apps(proxy_target, "lister") as sockets:
            call = await place_call(proxy_target, "5000")
            offer = await sockets["lister"].wait_for("CallBroadcast")
            channel_id = offer["channel"]["id"]
            listing = await proxy_target.apps_ari.http.get("channels")
            assert listing.status_code == 200
            assert len(listing.content) > 256 * 1024
            [mine] = [c for c in listing.json() if c["id"] == channel_id]
            assert mine["dialplan"]["app_name"] == "StasisBroadcast"
            assert mine["dialplan"]["app_data"] == "5000"
            assert b"stasis-broadcast" not in listing.content
            await win_and_let_go(proxy_target, sockets["lister"], channel_id, "lister", call)
    finally:
        for channel_id in fillers:
            await ari.http.delete(f"channels/{channel_id}")


async def test_over_rest_websocket_a_call_on_offer_is_locked_and_reads_as_native(
    proxy_target: Target,
) -> None:
    """REST over WebSocket gets what HTTP gets: control calls on a call still on offer are
    refused with native's 409 (a rival's `continue` must not take the call out of the race),
    and the channel's snapshot reads as native's."""
    async with apps(proxy_target, "wsowner", "wsrival") as sockets:
        call = await place_call(proxy_target, "5000")
        offer = await sockets["wsowner"].wait_for("CallBroadcast")
        channel_id = offer["channel"]["id"]
        rival = sockets["wsrival"]
        await rival.wait_for("CallBroadcast")
        for n, (method, uri) in enumerate(
            [
                ("POST", f"channels/{channel_id}/continue"),
                ("POST", f"channels/{channel_id}/answer"),
                ("GET", f"channels/{channel_id}"),
            ]
        ):
            await rival.socket.send(
                json.dumps(
                    {
                        "type": "RESTRequest",
                        "transaction_id": "t",
                        "request_id": f"r{n}",
                        "method": method,
                        "uri": uri,
                    }
                )
            )
        await rival.wait_for(lambda e: len(rival.of_type("RESTResponse")) == 3)
        answers = {r["request_id"]: r for r in rival.of_type("RESTResponse")}
        for refused in ("r0", "r1"):
            assert answers[refused]["status_code"] == 409
            assert json.loads(answers[refused]["message_body"]) == {
                "message": "Channel not in Stasis application"
            }
        assert answers["r2"]["status_code"] == 200
        snapshot = json.loads(answers["r2"]["message_body"])
        assert snapshot["dialplan"]["app_name"] == "StasisBroadcast"
        assert snapshot["dialplan"]["app_data"] == "5000"
        # The call is still on offer: its owner claims it.
        await win_and_let_go(proxy_target, sockets["wsowner"], channel_id, "wsowner", call)


async def test_an_application_named_with_dialplan_specials_still_gets_the_call(
    proxy_target: Target,
) -> None:
    """The direct form hands over with Stasis(<winner>,<args>) in the dialplan: a name with
    characters Asterisk's argument splitter treats specially must arrive whole."""
    name = "odd(x"  # unbalanced: unescaped, it would swallow the comma after it
    async with apps(proxy_target, name) as sockets:
        call = await place_call(proxy_target, "5000,,x", context="conformance-direct")
        offer = await sockets[name].wait_for("CallBroadcast")
        channel_id = offer["channel"]["id"]
        start = await win_and_let_go(proxy_target, sockets[name], channel_id, name, call)
        assert start["application"] == name
        assert start["args"] == ["x"]


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
BASIC = "Authorization: Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


async def _exchange(stream: Stream, data: bytes) -> bytes:
    """Write `data`, read one whole answer (head and Content-Length body) as bytes."""
    reader, writer = stream
    writer.write(data)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


def _claim_request(channel_id: str, app: str | None, body: bytes | None = None) -> bytes:
    """A claim as stock clients send it; with `body`, one that takes the ASGI path."""
    query = f"channelId={channel_id}" + (f"&application={app}" if app else "")
    head = f"POST /ari/events/claim?{query} HTTP/1.1\r\nHost: proxy\r\n{BASIC}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


async def test_claims_answered_as_they_are_read_are_the_asgi_paths_answers(
    proxy_target: Target, proxy: ProxyProcess
) -> None:
    """Claims with no body are answered by the HTTP protocol itself (http_protocol): the
    same bytes as the full path's answer to the same claim with a JSON body, the winner's
    hand-over first, and the connection goes on serving requests, pipelined ones too."""
    port = int(proxy.base.rsplit(":", 1)[1])
    stream = await asyncio.open_connection("127.0.0.1", port)
    at_once = await _read_at_once(proxy)
    async with apps(proxy_target, "quick-a", "quick-b") as sockets:
        call = await place_call(proxy_target, "10000,^quick-a")
        offer = await sockets["quick-a"].wait_for("CallBroadcast")
        channel_id = offer["channel"]["id"]

        async def both(app: str | None) -> bytes:
            full = await _exchange(stream, _claim_request(channel_id, app, b"{}"))
            quick = await _exchange(stream, _claim_request(channel_id, app))
            assert quick == full
            return quick

        assert (await both("quick-b")).startswith(b"HTTP/1.1 422 ")  # not offered
        assert (await both(None)).startswith(b"HTTP/1.1 400 ")
        won = await _exchange(stream, _claim_request(channel_id, "quick-a"))
        assert won == b"HTTP/1.1 204 No Content\r\n\r\n"
        start = await sockets["quick-a"].wait_for("StasisStart")
        assert start["channel"]["id"] == channel_id
        lost = await both("quick-a")
        assert lost.startswith(b"HTTP/1.1 409 ")
        assert json.loads(lost.split(b"\r\n\r\n", 1)[1]) == {
            "message": "Channel has already been claimed by another application"
        }
        # Two claims in one write: the second waits for uvicorn, in order.
        reader, writer = stream
        writer.write(_claim_request(channel_id, "quick-b") * 2)
        for _ in range(2):
            assert (await _exchange((reader, writer), b"")).startswith(b"HTTP/1.1 409 ")
        ping = f"GET /ari/asterisk/ping HTTP/1.1\r\nHost: proxy\r\n{BASIC}\r\n\r\n"
        assert (await _exchange(stream, ping.encode())).startswith(b"HTTP/1.1 200 ")
        await proxy_target.apps_ari.http.post(f"channels/{channel_id}/continue")
        assert (await result(proxy_target, call))[0] == "SUCCESS"
    stream[1].close()
    # 422, 400, 204 and 409 without a body; the pipelined pair went to uvicorn.
    assert await _read_at_once(proxy) == at_once + 4


async def _read_at_once(proxy: ProxyProcess) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(proxy.base + "/metrics")).text
    return float(text.split("\nari_proxy_claims_read_at_once_total ", 1)[1].split()[0])
