"""Bad input, table-driven: each case gets the right status with a JSON message (or
Asterisk's own answer, unchanged), a log line, and the proxy keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ..ari import PASSWORD, USER, Ari, Asterisk
from ..conftest import ProxyProcess

AUTH = (USER, PASSWORD)


@dataclass
class Case:
    name: str
    method: str
    path: str  # sent as is (raw request target)
    status: int
    message: str | None = None  # expected JSON message (None: any JSON message)
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


BIG = "x" * 10_000
CASES = [
    Case(
        "claim without channelId",
        "POST",
        "/ari/events/claim?application=a",
        400,
        "channelId parameter is required",
    ),
    Case(
        "claim with empty params",
        "POST",
        "/ari/events/claim?channelId=&application=",
        400,
        "channelId parameter is required",
    ),
    Case(
        "claim without application",
        "POST",
        "/ari/events/claim?channelId=1.2",
        400,
        "application parameter is required",
    ),
    Case(
        "claim, duplicated params: the last wins",
        "POST",
        "/ari/events/claim?channelId=&channelId=9.9&application=a",
        404,
        "Channel not found or not in broadcast state",
    ),
    Case(
        "claim, non-UTF-8 query",
        "POST",
        "/ari/events/claim?channelId=%ff%fe&application=%c3",
        404,
        "Channel not found or not in broadcast state",
    ),
    Case(
        "claim for a 10 kB channel id",
        "POST",
        f"/ari/events/claim?channelId={BIG}&application=a",
        414,
        "Request-URI too long",
    ),
    Case(
        "claim for a 10 kB channel id in a JSON body",
        "POST",
        "/ari/events/claim",
        404,
        "Channel not found or not in broadcast state",
        json.dumps({"channelId": BIG, "application": "a"}).encode(),
        {"content-type": "application/json"},
    ),
    Case(
        "claim, malformed JSON body",
        "POST",
        "/ari/events/claim",
        400,
        "Error parsing request body",
        b"{not json",
        {"content-type": "application/json"},
    ),
    Case(
        "claim, JSON body that is not an object",
        "POST",
        "/ari/events/claim",
        400,
        "channelId parameter is required",
        b"[1,2]",
        {"content-type": "application/json"},
    ),
    Case(
        "claim, non-UTF-8 form body",
        "POST",
        "/ari/events/claim",
        404,
        "Channel not found or not in broadcast state",
        b"channelId=\xff\xfe&application=a",
        {"content-type": "application/x-www-form-urlencoded"},
    ),
    Case(
        "oversized query string",
        "GET",
        "/ari/channels?x=" + "y" * 20_000,
        414,
        "Request-URI too long",
    ),
    Case(
        "oversized body (refused from its content-length)",
        "POST",
        "/ari/channels",
        413,
        "Request body too large",
        b"",
        {"content-type": "application/json", "content-length": "2000000"},
    ),
    Case("dot-dot path", "GET", "/ari/../ari/asterisk/info", 400, "Invalid path"),
    Case("encoded dot-dot path", "GET", "/ari/channels/%2e%2e/asterisk/info", 400, "Invalid path"),
    Case("encoded slashes", "GET", "/ari/channels/..%2f..%2fasterisk%2finfo", 400, "Invalid path"),
    Case("unknown resource (Asterisk's 404)", "GET", "/ari/nonsense", 404),
    Case("a long encoded unicode channel id", "GET", "/ari/channels/" + "%C3%A9" * 500, 404),
    Case(
        "a very long encoded unicode channel id",
        "GET",
        "/ari/channels/" + "%C3%A9" * 3000,
        414,
        "Request-URI too long",
    ),
]


async def raw_request(port: int, case: Case) -> tuple[int, dict[str, str], bytes]:
    """HTTP/1.1 with the request target exactly as written (clients would normalise it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    token = httpx.BasicAuth(*AUTH)._auth_header
    headers = {
        "host": f"127.0.0.1:{port}",
        "authorization": token,
        "connection": "close",
        "content-length": str(len(case.body)),
        **case.headers,
    }
    head = f"{case.method} {case.path} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    try:
        writer.write(head.encode("utf-8") + b"\r\n" + case.body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    status_line, _, rest = data.partition(b"\r\n")
    raw_headers, _, body = rest.partition(b"\r\n\r\n")
    parsed = dict(
        (k.strip().lower(), v.strip())
        for k, v in (
            line.decode("latin-1").split(":", 1)
            for line in raw_headers.split(b"\r\n")
            if b":" in line
        )
    )
    return int(status_line.split()[1]), parsed, body


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_bad_request_gets_a_clear_json_error(
    case: Case, proxy: ProxyProcess, proxied: Ari
) -> None:
    status, headers, body = await raw_request(proxy.port, case)
    assert status == case.status, body[:300].decode("latin-1")
    assert headers.get("content-type", "").startswith("application/json"), headers
    message = json.loads(body)["message"]
    if case.message is not None:
        assert message == case.message
    # ...and the proxy keeps serving.
    assert (await proxied.http.get("asterisk/ping")).status_code == 200


async def test_refusals_are_logged_without_credentials(proxy: ProxyProcess) -> None:
    await raw_request(proxy.port, CASES[-5])  # dot-dot path
    await raw_request(
        proxy.port,
        Case("api_key in a refused query", "GET", f"/ari/../x?api_key={USER}:{PASSWORD}", 400),
    )
    await proxy.wait_log("-> 400 Invalid path", count=2)
    log = proxy.log()
    assert "-> 400 Invalid path" in log
    assert f"{USER}:{PASSWORD}" not in log
    assert "api_key" not in log


async def test_a_content_length_with_blanks_around_it_is_read(proxy: ProxyProcess) -> None:
    """`Content-Length: 0 ` (optional whitespace, RFC 9110 5.5): reported as a 413, not
    reproduced here (uvicorn's parser strips it); kept as a guard."""
    case = Case("blank after length", "POST", "/ari/asterisk/variable?variable=CL_OWS&value=1", 204)
    status, _, body = await raw_request(
        proxy.port,
        replace(case, headers={"content-length": "0 ", "content-type": "application/json"}),
    )
    assert status == 204, body


async def test_pipelined_requests_from_a_client_that_left_log_no_error(proxy: ProxyProcess) -> None:
    """Two requests in one write, then the connection closed: the server still runs the
    second, and its answer has nowhere to go. Not an error of the proxy's (was a traceback)."""
    start = len(proxy.log())
    request = (
        "GET /ari/asterisk/ping HTTP/1.1\r\nhost: x\r\n"
        f"authorization: {httpx.BasicAuth(*AUTH)._auth_header}\r\n\r\n"
    ).encode()
    for _ in range(5):
        _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(request * 2)
        writer.close()
    async with httpx.AsyncClient() as http:  # the proxy goes on serving
        assert (await http.get(f"{proxy.base}/ari/asterisk/ping", auth=AUTH)).status_code == 200
    await asyncio.sleep(0.2)  # the answers for nobody are written by then (nothing to wait on)
    assert "Exception in ASGI application" not in proxy.log()[start:]


@pytest.mark.parametrize(
    ("case", "answer"),
    [
        # The read goes on as a read of a variable nobody can set: its other parameters
        # re-encoded, an undecodable byte included.
        (
            Case("", "GET", "/ari/asterisk/variable?variable=ARI_BROADCAST_APP&x=%FF", 200),
            {"value": ""},
        ),
        # The credential check sends the client's api_key on to Asterisk.
        (
            Case("", "POST", "/ari/events/claim?channelId=n&application=a&api_key=u:%FF", 404),
            {"message": "Channel not found or not in broadcast state"},
        ),
    ],
    ids=["reserved-read", "claim-api-key"],
)
async def test_bytes_that_are_not_utf8_go_on_unchanged(
    proxy: ProxyProcess, case: Case, answer: dict[str, str]
) -> None:
    status, _, body = await raw_request(proxy.port, case)
    assert (status, json.loads(body)) == (case.status, answer)


async def test_not_an_open_proxy(proxy: ProxyProcess) -> None:
    """An absolute-form request target still goes to the configured Asterisk only."""
    status, _, body = await raw_request(
        proxy.port, Case("absolute URL", "GET", "http://example.invalid/ari/asterisk/ping", 200)
    )
    assert status == 200
    assert json.loads(body)["ping"] == "pong"


# -- the events socket ------------------------------------------------------------------------


def ws_url(base: str, query: str) -> str:
    return base.replace("http", "ws", 1) + "/ari/events?" + query


@pytest.mark.parametrize(
    "query",
    [
        "app=" + "long" * 100 + "&api_key=asterisk:asterisk",
        "app=caf%C3%A9&api_key=asterisk:asterisk",
        "app=,&api_key=asterisk:asterisk",
        "app=a&api_key=nocolon",
        "app=a&subscribeAll=maybe&api_key=asterisk:asterisk",
    ],
)
async def test_events_socket_answers_as_asterisk_does(
    query: str, asterisk: Asterisk, proxy: ProxyProcess
) -> None:
    async def outcome(base: str) -> tuple[str, int]:
        try:
            async with connect(ws_url(base, query), open_timeout=5) as ws:
                await ws.close()
                return "accepted", 101
        except InvalidStatus as exc:
            return "refused", exc.response.status_code

    assert await outcome(proxy.base) == await outcome(asterisk.base)


async def test_events_socket_refuses_an_oversized_query(proxy: ProxyProcess) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(proxy.base, "app=a&x=" + "y" * 20_000), open_timeout=5):
            pass
    assert refused.value.response.status_code == 414


async def test_bad_frames_get_asterisks_answer_and_the_socket_stays_open(
    proxy: ProxyProcess,
) -> None:
    async with connect(ws_url(proxy.base, "app=framer&api_key=asterisk:asterisk")) as ws:
        bad = [
            b"\x00not json at all",
            json.dumps({"type": "RESTRequest"}),
            json.dumps({"type": "RESTRequest", "method": "GET", "uri": ""}),
            json.dumps({"type": "RESTRequest", "method": "FETCH", "uri": "asterisk/info"}),
            json.dumps({"type": "RESTRequest", "method": "GET", "uri": "../../etc/passwd"}),
            json.dumps(
                {
                    "type": "RESTRequest",
                    "method": "POST",
                    "uri": "events/claim",
                    "transaction_id": "t",
                    "request_id": "r",
                }
            ),
        ]
        for frame in bad:
            await ws.send(frame if isinstance(frame, str) else frame.decode("latin-1"))
            answer = json.loads(await asyncio.wait_for(ws.recv(), 20))
            assert answer["type"] == "RESTResponse"
            assert 400 <= answer["status_code"] < 500, answer
        claim = answer
        assert json.loads(claim["message_body"]) == {"message": "channelId parameter is required"}
        await ws.send(
            json.dumps(
                {
                    "type": "RESTRequest",
                    "method": "GET",
                    "uri": "asterisk/ping",
                    "transaction_id": "ok",
                    "request_id": "ok",
                }
            )
        )
        assert json.loads(await asyncio.wait_for(ws.recv(), 20))["status_code"] == 200


async def test_oversized_frame_closes_with_1009(proxy: ProxyProcess, proxied: Ari) -> None:
    async with connect(
        ws_url(proxy.base, "app=bigframe&api_key=asterisk:asterisk"), max_size=None
    ) as ws:
        await ws.send("x" * (2 * 1024 * 1024))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 20)
        assert ws.close_code == 1009
    assert (await proxied.http.get("asterisk/ping")).status_code == 200


# -- property: no claim input makes the proxy misbehave ---------------------------------------

claim_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(channel_id=claim_text, application=claim_text, as_json=st.booleans())
def test_any_claim_input_gets_a_native_status_and_message(
    proxy: ProxyProcess, channel_id: str, application: str, as_json: bool
) -> None:
    with httpx.Client(base_url=proxy.base + "/ari/", auth=AUTH, timeout=10) as client:
        params = {"channelId": channel_id, "application": application}
        response = (
            client.post("events/claim", json=params)
            if as_json
            else client.post("events/claim", params=params)
        )
    assert response.status_code in (400, 404), response.text
    body: Any = response.json()
    assert body["message"] in (
        "channelId parameter is required",
        "application parameter is required",
        "Channel not found or not in broadcast state",
        # Asterisk's own JSON parser (jansson) refuses "\u0000" in a body the proxy forwards.
        "Error parsing request body",
    )
