"""The proxy's application and variables are its own: no client request through the proxy
reaches them, and what is changed on them straight on Asterisk is put back.

Native has neither, so each answer is compared with Asterisk's own answer for an application
or a variable that does not exist; the `app` parameter of the events socket is read exactly
as the real Asterisk reads it (fuzzed against it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from ari_broadcast_proxy.ari_request import parse_query, registered_apps

from ..ari import PASSWORD, USER, Ari, Asterisk, Events, events, token
from ..conftest import ProxyProcess
from .scenarios import Target, claim, place_call

RESERVED = "broadcast"  # the session proxy's application
AUTH = f"api_key={USER}:{PASSWORD}"

# `app` values around NAME: encodings, NUL, case, blanks, quotes, separators; and repeats.
APP_VALUES = [
    "NAME",
    "NAME%00",
    "NAME%00x",
    "NA%4dE",
    "%20NAME",
    "NAME%20",
    "+NAME+",
    "%09NAME%0A",
    "%22NAME%22",
    "%27NAME%27",
    "%22%20NAME%20%22",
    "other,NAME",
    "NAME,other",
    "other%2CNAME",
    "%22other,NAME%22",
    "%22other%22,NAME",
    "other%5C,NAME",
    "other%5C%22,NAME",
    "NA%5CME",
    "(NAME)",
    "UPPER",
    "NAME;other",
]
QUERIES = [f"app={value}" for value in APP_VALUES] + [
    "app=other&app=NAME",
    "app=NAME&app=other",
    "APP=NAME",
    "aPp=NAME",
    "ap%70=NAME",
    "app=other&APP=NAME",
]


def spelled(query: str, name: str) -> str:
    return query.replace("NAME", name).replace("UPPER", name.upper())


async def registered_by(base: str, query: str, ari: Ari) -> list[str] | int:
    """The applications Asterisk registers for an events socket opened with `query` (on
    `base`), or the HTTP status that refused it."""
    before = {a["name"] for a in (await ari.http.get("applications")).json()}
    try:
        async with connect(f"ws{base[4:]}/ari/events?{AUTH}&{query}"):
            deadline = time.monotonic() + 5
            while True:  # polling: registration has no event of its own
                now = {a["name"] for a in (await ari.http.get("applications")).json()}
                if now - before or time.monotonic() > deadline:
                    return sorted(now - before)
                await asyncio.sleep(0.02)
    except InvalidStatus as refused:
        return refused.response.status_code


async def test_the_app_parameter_is_read_as_asterisk_reads_it(asterisk: Asterisk, ari: Ari) -> None:
    """What the proxy predicts a socket registers is what the real Asterisk registers."""
    mismatches = []
    for query in QUERIES:
        name = f"fz{token()}"
        spelled_query = spelled(query, name)
        got = await registered_by(asterisk.base, spelled_query, ari)
        predicted = sorted(registered_apps(parse_query(spelled_query)))
        if isinstance(got, list) and got != predicted:
            mismatches.append(f"{spelled_query}: Asterisk {got}, proxy {predicted}")
    assert not mismatches, "\n".join(mismatches)


async def test_no_spelling_of_the_app_parameter_reaches_the_proxys_application(
    ari: Ari, proxy: ProxyProcess
) -> None:
    outcomes = {}
    for query in QUERIES:
        spelled_query = spelled(query, RESERVED)
        outcomes[spelled_query] = await registered_by(proxy.base, spelled_query, ari)
    reached = {q: o for q, o in outcomes.items() if isinstance(o, list) and RESERVED in o}
    assert not reached
    # Only what names the proxy's application is refused; the rest registers as on Asterisk.
    assert outcomes["app=broadcast%00"] == 403
    assert outcomes["app=other&app=broadcast"] == 403
    assert outcomes["app=BROADCAST"] == ["BROADCAST"]
    assert outcomes["app=(broadcast)"] == ["(broadcast)"]
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(proxy.base + "/metrics")).text
        assert (await http.get(proxy.base + "/readyz")).status_code == 200
    assert "ari_proxy_broadcast_app_replaced_total 0.0" in metrics


@pytest.mark.parametrize(
    ("method", "path", "params", "body"),
    [
        ("GET", "applications/{app}", {}, None),
        ("PUT", "applications/{app}/eventFilter", {}, {"disallowed": [{"type": "StasisStart"}]}),
        ("POST", "applications/{app}/subscription", {"eventSource": "channel:"}, None),
        ("DELETE", "applications/{app}/subscription", {"eventSource": "channel:"}, None),
        ("GET", "applications/{app}%00", {}, None),
    ],
)
async def test_the_proxys_application_answers_as_one_that_does_not_exist(
    ari: Ari, proxied: Ari, method: str, path: str, params: dict[str, str], body: Any
) -> None:
    missing = f"missing-{token()}"
    native = await ari.http.request(method, path.format(app=missing), params=params, json=body)
    through = await proxied.http.request(
        method, path.format(app=RESERVED), params=params, json=body
    )
    assert (through.status_code, through.json()) == (native.status_code, native.json())
    assert native.status_code == 404
    listed = [a["name"] for a in (await proxied.http.get("applications")).json()]
    assert RESERVED not in listed
    assert RESERVED in [a["name"] for a in (await ari.http.get("applications")).json()]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("channels", {"endpoint": "Local/s@tests-echo", "app": RESERVED}),
        ("channels/create", {"endpoint": "Local/s@tests-echo", "app": RESERVED}),
        (
            "channels/externalMedia",
            {"app": RESERVED, "external_host": "127.0.0.1:9", "format": "ulaw"},
        ),
        ("events/user/probe", {"application": RESERVED}),
    ],
)
async def test_nothing_is_sent_into_the_proxys_application(
    ari: Ari, proxied: Ari, path: str, params: dict[str, str]
) -> None:
    """Natively no such application exists, and Asterisk would create the channel anyway
    (for a move, report ApplicationMoveFailed): through the proxy nothing reaches it."""
    before = {c["id"] for c in (await ari.http.get("channels")).json()}
    refused = await proxied.http.post(path, params=params)
    assert refused.status_code == 403
    assert refused.json() == {
        "message": f"Application '{RESERVED}' is reserved for the broadcast proxy"
    }
    assert {c["id"] for c in (await ari.http.get("channels")).json()} == before


async def rest_request(client: Events, uri: str, method: str = "GET", **extra: Any) -> dict:
    request_id = token()
    frame = {"type": "RESTRequest", "transaction_id": request_id, "request_id": request_id}
    await client.socket.send(json.dumps({**frame, "method": method, "uri": uri, **extra}))
    response = await client.wait_for(
        lambda e: e.get("type") == "RESTResponse" and e.get("request_id") == request_id
    )
    body = response.get("message_body")
    return {"status": response["status_code"], "body": json.loads(body) if body else None}


async def test_the_proxys_application_is_not_there_over_rest_over_websocket(
    ari: Ari, proxy: ProxyProcess
) -> None:
    async with events(proxy.base, f"ws-{token()}") as client:
        hidden = await rest_request(client, f"applications/{RESERVED}")
        assert hidden == {"status": 404, "body": {"message": "Application not found"}}
        listed = await rest_request(client, "applications")
        assert listed["status"] == 200
        assert RESERVED not in [a["name"] for a in listed["body"]]
        moved = await rest_request(client, "channels/x/move?app=broadcast", "POST")
        assert moved["status"] == 403


@contextlib.asynccontextmanager
async def won_call(target: Target, app: str) -> AsyncIterator[tuple[Events, str]]:
    """A call through the proxy, claimed by `app` and in its Stasis session."""
    async with events(target.app_base, app) as client:
        await asyncio.sleep(0.05)
        # An empty argument: handed over with ARI_BROADCAST_WINNER and `continue`, not `move`.
        await place_call(target, f"5000,^{app}$,a::c")
        offer = await client.wait_for("CallBroadcast")
        channel_id = offer["channel"]["id"]
        assert (await claim(target.apps_ari, channel_id, app))["status"] == 204
        await client.wait_for("StasisStart")
        yield client, channel_id


async def test_the_proxys_variables_cannot_be_written_nor_read(
    ari: Ari, proxy: ProxyProcess, proxied: Ari
) -> None:
    target = Target("proxy", proxy.base, "conformance-proxy", ari, proxied)
    async with won_call(target, f"winner-{token()}") as (client, channel_id):
        # Set by the proxy on the channel for the hand-over.
        marked = {"variable": "ARI_BROADCAST_WINNER"}
        stasis_data = (await ari.http.get(f"channels/{channel_id}/variable", params=marked)).json()
        assert stasis_data["value"].startswith(client.of_type("StasisStart")[0]["application"])
        for name in ("ARI_BROADCAST_WINNER", "LOCAL(ARI_BROADCAST_HANDED)", "ari_broadcast_x"):
            written = await proxied.http.post(
                f"channels/{channel_id}/variable", params={"variable": name, "value": "1"}
            )
            assert written.status_code == 403, name
            assert "is reserved for the broadcast proxy" in written.json()["message"]
        read = await proxied.http.get(
            f"channels/{channel_id}/variable", params={"variable": "ARI_BROADCAST_WINNER"}
        )
        native_missing = await ari.http.get(
            f"channels/{channel_id}/variable", params={"variable": f"MISSING_{token()}"}
        )
        assert (read.status_code, read.json()) == (
            native_missing.status_code,
            native_missing.json(),
        )
        listed = await proxied.http.get(
            f"channels/{channel_id}/variables", params={"variables": "ARI_BROADCAST_WINNER"}
        )
        assert (listed.status_code, listed.json()) == (404, native_missing.json())
        over_socket = await rest_request(
            client, f"channels/{channel_id}/variable?variable=ARI_BROADCAST_WINNER"
        )
        assert over_socket == {
            "status": 404,
            "body": {"message": "Provided variable was not found"},
        }
        await proxied.http.post(f"channels/{channel_id}/continue")
    # The global that names the proxy's application: neither written nor seen.
    for params in ({"variable": "ARI_BROADCAST_APP"}, {"variable": "GLOBAL(ARI_BROADCAST_APP)"}):
        written = await proxied.http.post("asterisk/variable", params={**params, "value": "mine"})
        assert written.status_code == 403
        read = await proxied.http.get("asterisk/variable", params=params)
        assert (read.status_code, read.json()) == (200, {"value": ""})
    assert await ari.global_var("ARI_BROADCAST_APP") == RESERVED


async def test_changes_made_on_asterisk_to_the_proxys_application_are_put_back(
    ari: Ari, proxy: ProxyProcess, proxied: Ari
) -> None:
    """An event filter that drops StasisStart and a subscription to every channel, set
    straight on Asterisk: the proxy clears both within its guard interval (5 s) and calls
    are offered again."""
    path = f"applications/{RESERVED}"
    silenced = await ari.http.put(
        f"{path}/eventFilter", json={"disallowed": [{"type": "StasisStart"}]}
    )
    assert silenced.status_code == 200
    flooded = await ari.http.post(f"{path}/subscription", params={"eventSource": "channel:"})
    assert flooded.status_code == 200
    deadline = time.monotonic() + 10
    while True:  # polling: Asterisk has no event for a changed filter
        state = (await ari.http.get(path)).json()
        if not state["events_disallowed"] and "__AST_CHANNEL_ALL_TOPIC" not in state["channel_ids"]:
            break
        assert time.monotonic() < deadline, state
        await asyncio.sleep(0.1)
    await proxy.wait_log("cleared: event filter, subscription channel:__AST_CHANNEL_ALL_TOPIC")
    target = Target("proxy", proxy.base, "conformance-proxy", ari, proxied)
    async with won_call(target, f"after-guard-{token()}") as (_client, channel_id):
        await proxied.http.post(f"channels/{channel_id}/continue")


@contextlib.asynccontextmanager
async def on_offer(target: Target, app: str) -> AsyncIterator[tuple[Events, str]]:
    """A call on offer to `app` only, through the proxy; claimed (204) at the end, which
    proves the tries before left it on offer."""
    async with events(target.app_base, app) as client:
        await place_call(target, f"5000,^{app}$")
        channel_id = (await client.wait_for("CallBroadcast"))["channel"]["id"]
        yield client, channel_id
        assert (await claim(target.apps_ari, channel_id, app))["status"] == 204


async def raw_rest(client: Events, text: str, request_id: str) -> dict[str, Any]:
    """Send a RESTRequest frame as written; the next answer carrying `request_id`."""
    seen = len(client.of_type("RESTResponse"))
    await client.socket.send(text)
    response = await client.wait_for(
        lambda e: (
            e.get("type") == "RESTResponse"
            and e.get("request_id", "") == request_id
            and client.of_type("RESTResponse").index(e) >= seen
        )
    )
    body = response.get("message_body")
    return {"status": response["status_code"], "body": json.loads(body) if body else None}


DEEP = "[" * 1100 + "]" * 1100  # deeper than orjson parses (1024), not than Asterisk (2047)


async def test_frames_the_proxy_could_misread_never_reach_asterisk_unread(
    ari: Ari, proxy: ProxyProcess, proxied: Ari
) -> None:
    """A type spelled with a JSON escape, a query_strings that is no list (Asterisk ignores
    it), a frame or body nested deeper than the proxy's parser goes: each was forwarded
    unchecked, and Asterisk answered the call on offer."""
    target = Target("proxy", proxy.base, "conformance-proxy", ari, proxied)
    async with on_offer(target, f"misread-{token()}") as (client, channel_id):
        answer = f"channels/{channel_id}/answer"
        escaped = '{"type":"RESTReques\\u0074","request_id":"esc","method":"POST","uri":"'
        assert await raw_rest(client, escaped + answer + '"}', "esc") == {
            "status": 409,
            "body": {"message": "Channel not in Stasis application"},
        }
        not_a_list = json.dumps(
            {"type": "RESTRequest", "request_id": "ql", "method": "POST", "uri": answer}
            | {"query_strings": {}}
        )
        assert (await raw_rest(client, not_a_list, "ql"))["status"] == 409
        deep_frame = '{"type":"RESTRequest","request_id":"deep","method":"POST","uri":"'
        deep_frame += answer + '","pad":' + DEEP + "}"
        # Unreadable to the proxy, its ids too: the answer carries none.
        assert (await raw_rest(client, deep_frame, ""))["status"] == 400
        deep_body = json.dumps(
            {"type": "RESTRequest", "request_id": "body", "method": "POST", "uri": answer}
            | {"content_type": "application/json", "message_body": '{"pad":' + DEEP + "}"}
        )
        assert (await raw_rest(client, deep_body, "body"))["status"] == 400
        bridge = (await proxied.http.post("bridges", params={"type": "mixing"})).json()["id"]
        try:
            deep_http = await proxied.http.post(
                f"bridges/{bridge}/addChannel",
                content=('{"channel":"' + channel_id + '","pad":' + DEEP + "}").encode(),
                headers={"content-type": "application/json"},
            )
            assert (deep_http.status_code, deep_http.json()) == (
                400,
                {"message": "Error parsing request body"},
            )
        finally:
            await ari.http.delete(f"bridges/{bridge}")


async def test_the_proxys_variables_cannot_be_read_through_a_json_body(
    ari: Ari, proxy: ProxyProcess, proxied: Ari
) -> None:
    target = Target("proxy", proxy.base, "conformance-proxy", ari, proxied)
    async with won_call(target, f"reader-{token()}") as (_client, channel_id):
        read = await proxied.http.request(
            "GET",
            f"channels/{channel_id}/variable",
            json={"variable": "ARI_BROADCAST_WINNER"},
        )
        assert (read.status_code, read.json()) == (
            404,
            {"message": "Provided variable was not found"},
        )
        await proxied.http.post(f"channels/{channel_id}/continue")


@pytest.mark.parametrize("app", [f"{RESERVED},x", f'"{RESERVED}"', "broad\\cast", f"{RESERVED},"])
async def test_stasis_arguments_cannot_spell_the_proxys_application(
    ari: Ari, proxied: Ari, app: str
) -> None:
    """Originate runs Stasis("<app>,<appArgs>"), which splits and unquotes: each of these
    is the proxy's application to Stasis()."""
    before = {c["id"] for c in (await ari.http.get("channels")).json()}
    refused = await proxied.http.post(
        "channels", params={"endpoint": "Local/s@tests-echo", "app": app}
    )
    assert refused.status_code == 403
    assert {c["id"] for c in (await ari.http.get("channels")).json()} == before
