"""The REST passthrough: the same request straight to Asterisk and through the proxy gets the
same answer (status, body modulo ids and timestamps, end-to-end headers); what the proxy
refuses itself is refused in Asterisk's JSON shape; api-docs point at the proxy."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from ..ari import PASSWORD, USER, Ari, Asterisk, events, free_port, token
from ..conftest import ProxyProcess

# Volatile parts of ARI bodies: two requests made a moment apart differ only in these.
_VOLATILE = (
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4}"), "<time>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"\b\d{9,}\.\d+\b"), "<channel-id>"),  # 1795322557.12
    (re.compile(r"-[0-9a-f]{8}(?=;[12]$)"), "-<seq>"),  # Local/s@tests-echo-00000003;1
)
# Response headers that legitimately differ per response or per hop.
_PER_RESPONSE = frozenset({"date", "content-length", "connection"})
# Hop-by-hop headers (RFC 9110 7.6.1) a proxy must never relay as its own.
_HOP_BY_HOP = frozenset(
    {"keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "upgrade"}
)


def normalised(value: Any) -> Any:
    """`value` (decoded JSON) with ids, sequence numbers and timestamps replaced."""
    if isinstance(value, dict):
        return {key: normalised(item) for key, item in value.items()}
    if isinstance(value, list):
        return [normalised(item) for item in value]
    if isinstance(value, str):
        for pattern, replacement in _VOLATILE:
            value = pattern.sub(replacement, value)
    return value


def end_to_end_headers(response: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in response.headers.items() if k.lower() not in _PER_RESPONSE}


def assert_same(direct: httpx.Response, proxied: httpx.Response) -> None:
    """Same status, same body modulo volatile values, same end-to-end headers."""
    assert proxied.status_code == direct.status_code, proxied.text
    if direct.headers.get("content-type", "").startswith("application/json") and direct.content:
        assert normalised(proxied.json()) == normalised(direct.json())
    else:
        assert proxied.content == direct.content
    assert end_to_end_headers(proxied) == end_to_end_headers(direct)
    assert_no_hop_by_hop(proxied)


def assert_no_hop_by_hop(response: httpx.Response) -> None:
    leaked = _HOP_BY_HOP & {k.lower() for k in response.headers}
    assert not leaked, f"hop-by-hop headers relayed: {leaked}"
    if "content-length" in response.headers:
        assert "transfer-encoding" not in response.headers
        assert int(response.headers["content-length"]) == len(response.content)


async def both(
    ari: Ari, proxied: Ari, method: str, path: str, **kwargs: Any
) -> tuple[httpx.Response, httpx.Response]:
    direct = await ari.http.request(method, path, **kwargs)
    through = await proxied.http.request(method, path, **kwargs)
    return direct, through


async def raw_request(
    base: str, target: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> bytes:
    """Send `METHOD target` byte for byte (httpx would normalise dot segments away)."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    try:
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


def parse_raw(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def assert_proxy_refusal(status: int, headers: dict[str, str], body: bytes, expected: int) -> None:
    """The proxy's own refusals look like Asterisk's: JSON with exactly a `message`."""
    assert status == expected, body
    assert headers["content-type"].startswith("application/json")
    document = json.loads(body)
    assert list(document) == ["message"]
    assert isinstance(document["message"], str) and document["message"]


# -- plain passthrough --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "params"),
    [
        ("GET", "asterisk/info", None),
        ("GET", "asterisk/ping", None),
        ("GET", "asterisk/modules", None),
        ("GET", "sounds", None),
        ("GET", "endpoints", None),
        ("GET", "channels/nope", None),  # 404
        ("GET", "channels/nope/variable", {"variable": "X"}),  # 404
        ("POST", "channels", None),  # 400: no endpoint
        ("POST", "channels", {"endpoint": "Local/s@tests-echo"}),  # 400: no app nor extension
        ("GET", "nonsense", None),  # 404 from Asterisk's router
        ("PUT", "asterisk/info", None),  # 405
        ("DELETE", "bridges/nope", None),  # 404
    ],
)
async def test_same_answer_as_asterisk(
    ari: Ari, proxied: Ari, method: str, path: str, params: dict[str, str] | None
) -> None:
    direct, through = await both(ari, proxied, method, path, params=params)
    assert_same(direct, through)


async def test_originate_channel_list_and_variables(
    asterisk: Asterisk, ari: Ari, proxied: Ari
) -> None:
    app = f"pt-{token()}"
    params = {"endpoint": "Local/s@tests-echo", "app": app, "appArgs": "x,y"}
    async with events(asterisk.base, app) as client:
        direct, through = await both(ari, proxied, "POST", "channels", params=params)
        assert direct.status_code == 200
        assert_same(direct, through)
        ids = [direct.json()["id"], through.json()["id"]]
        assert ids[0] != ids[1]
        for channel_id in ids:  # both are real calls that reach the application
            start = await client.wait_for(
                lambda e, i=channel_id: e["type"] == "StasisStart" and e["channel"]["id"] == i
            )
            assert start["args"] == ["x", "y"]

        direct_list, proxied_list = await both(ari, proxied, "GET", "channels")
        assert direct_list.status_code == 200
        by_id = lambda r: sorted(r.json(), key=lambda c: c["id"])  # noqa: E731
        assert by_id(proxied_list) == by_id(direct_list)
        assert set(ids) <= {c["id"] for c in proxied_list.json()}

        for channel_id in ids:
            path = f"channels/{channel_id}/variable"
            # Set through one side, read through the other.
            set_direct = await ari.http.post(
                path, params={"variable": "PT_A", "value": "via asterisk"}
            )
            set_proxied = await proxied.http.post(
                path, params={"variable": "PT_B", "value": "via proxy"}
            )
            assert (set_direct.status_code, set_proxied.status_code) == (204, 204)
            assert set_proxied.content == b""
            for name, value in (("PT_A", "via asterisk"), ("PT_B", "via proxy")):
                direct, through = await both(ari, proxied, "GET", path, params={"variable": name})
                assert_same(direct, through)
                assert through.json() == {"value": value}
            # A JSON body instead of the query string.
            body = {"variable": "PT_C", "value": "in a body"}
            assert (await proxied.http.post(path, json=body)).status_code == 204
            direct, through = await both(ari, proxied, "GET", path, params={"variable": "PT_C"})
            assert through.json() == direct.json() == {"value": "in a body"}
            # Errors: no variable name (400), unknown function (500 from Asterisk).
            assert_same(*await both(ari, proxied, "GET", path))
            assert_same(*await both(ari, proxied, "GET", path, params={"variable": "NOPE(x)"}))

        for channel_id in ids:
            assert (await proxied.http.delete(f"channels/{channel_id}")).status_code == 204
        assert_same(*await both(ari, proxied, "DELETE", f"channels/{ids[0]}"))  # now 404


async def test_bridges_create_and_delete(ari: Ari, proxied: Ari) -> None:
    params = {"type": "mixing", "name": f"pt-{token()}"}
    direct, through = await both(ari, proxied, "POST", "bridges", params=params)
    assert direct.status_code == 200
    assert_same(direct, through)
    created = [direct.json()["id"], through.json()["id"]]
    listed = {b["id"] for b in (await proxied.http.get("bridges")).json()}
    assert set(created) <= listed
    # Each side deletes the bridge the other one created.
    deleted = [
        await proxied.http.delete(f"bridges/{created[0]}"),
        await ari.http.delete(f"bridges/{created[1]}"),
    ]
    assert [r.status_code for r in deleted] == [204, 204]
    assert_same(deleted[1], deleted[0])
    assert_same(*await both(ari, proxied, "DELETE", f"bridges/{created[0]}"))  # now 404
    assert_same(*await both(ari, proxied, "GET", f"bridges/{created[1]}"))


async def test_chunked_request_body_is_reframed(ari: Ari, proxied: Ari) -> None:
    """A chunked request body reaches Asterisk whole (Transfer-Encoding is hop-by-hop)."""
    name = f"pt-{token()}"

    async def chunks() -> AsyncIterator[bytes]:
        document = json.dumps({"type": "mixing", "name": name}).encode()
        for i in range(0, len(document), 7):
            yield document[i : i + 7]

    response = await proxied.http.post(
        "bridges", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    bridge = response.json()
    try:
        assert bridge["name"] == name
        assert (await ari.http.get(f"bridges/{bridge['id']}")).json()["name"] == name
    finally:
        await ari.http.delete(f"bridges/{bridge['id']}")


async def test_hop_by_hop_request_headers_change_nothing(ari: Ari, proxied: Ari) -> None:
    headers = {
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "1",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic bm9ib2R5Om5vdGhpbmc=",
    }
    for _ in range(3):  # the pooled upstream connection survives every request
        direct, through = await both(ari, proxied, "GET", "asterisk/info", headers=headers)
        assert direct.status_code == 200
        assert_same(direct, through)


@pytest.mark.parametrize("path", ["asterisk/ping", "channels/nope", "nonsense"])
async def test_websocket_upgrade_on_a_rest_path_is_answered_as_asterisk_does(
    ari: Ari, proxied: Ari, path: str
) -> None:
    """Asterisk ignores an upgrade it has no WebSocket for and answers the GET."""
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(b"sixteen byte key").decode(),
    }
    direct, through = await both(ari, proxied, "GET", path, headers=headers)
    assert direct.status_code in (200, 404)
    assert_same(direct, through)


async def test_an_upgrade_on_a_path_with_a_long_answer_is_refused_not_buffered(
    ari: Ari, proxied: Ari
) -> None:
    """The proxy answers an upgrade on a REST path as a whole response: an answer it would
    stream (a recording, a long listing) is refused with 502 instead of read into memory."""
    created = []
    try:
        for i in range(16):
            response = await ari.http.post(
                "bridges", json={"type": "mixing", "name": f"up-{token()}-{i}" + "n" * 20_000}
            )
            created.append(response.json()["id"])
        headers = {
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(b"sixteen byte key").decode(),
        }
        through = await proxied.http.get("bridges", headers=headers)
        assert through.status_code == 502
        assert "larger than" in through.json()["message"]
    finally:
        for bridge_id in created:
            await ari.http.delete(f"bridges/{bridge_id}")


async def test_head_keeps_asterisks_content_length_and_never_its_stray_body(
    asterisk: Asterisk, proxy: ProxyProcess, proxied: Ari
) -> None:
    """Asterisk refuses HEAD with 405 and, against HTTP, sends the JSON body anyway (a
    keep-alive client then reads it as its next answer). The proxy relays the head with
    Asterisk's Content-Length and no body, and drops that connection to Asterisk."""
    auth = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
    status, headers, body = parse_raw(
        await raw_request(asterisk.base, "/ari/asterisk/info", auth, method="HEAD")
    )
    assert status == 405 and body == b'{"message":"Invalid method"}'
    for _ in range(2):
        through = await proxied.http.head("asterisk/info")
        assert through.status_code == 405
        assert through.headers["content-length"] == headers["content-length"]
        assert through.content == b""
        assert (await proxied.http.get("asterisk/ping")).status_code == 200


# -- authentication -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [(USER, "wrong"), ("nobody", PASSWORD), None],
    ids=["wrong-password", "unknown-user", "no-credentials"],
)
async def test_refused_credentials_same_as_asterisk(
    asterisk: Asterisk, proxy: ProxyProcess, auth: tuple[str, str] | None
) -> None:
    answers = []
    for base in (asterisk.base, proxy.base):
        async with httpx.AsyncClient(base_url=base + "/ari/", auth=auth) as client:
            answers.append(await client.get("asterisk/info"))
    direct, through = answers
    assert direct.status_code == 401
    assert_same(direct, through)
    assert through.headers["www-authenticate"] == 'Basic realm="Asterisk REST Interface"'
    assert through.json() == {"message": "Authentication required"}


@pytest.mark.parametrize(
    ("api_key", "status"),
    [(f"{USER}:{PASSWORD}", 200), (f"{USER}:wrong", 401), ("nobody:x", 401)],
)
async def test_api_key_query_auth(
    asterisk: Asterisk, proxy: ProxyProcess, api_key: str, status: int
) -> None:
    answers = []
    for base in (asterisk.base, proxy.base):
        async with httpx.AsyncClient(base_url=base + "/ari/") as client:
            answers.append(await client.get("asterisk/info", params={"api_key": api_key}))
    direct, through = answers
    assert direct.status_code == status
    assert_same(direct, through)


# -- the proxy's own refusals -------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/ari/../x",
        "/ari/channels/../asterisk/info",
        "/ari/channels/%2e%2e/asterisk/info",
        "/ari/channels/%2E%2E/%2E%2E/healthz",
        "/ari/./asterisk/info",
        "/ari//asterisk/info",
        "/ari///127.0.0.1:1/ari/asterisk/info",
        "/ari/channels//x",
    ],
)
async def test_path_tricks_are_refused(proxy: ProxyProcess, target: str) -> None:
    credentials = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    answer = await raw_request(proxy.base, target, {"Authorization": f"Basic {credentials}"})
    status, headers, body = parse_raw(answer)
    assert_proxy_refusal(status, headers, body, 400)


@pytest.mark.parametrize(
    ("content_type", "size"),
    [
        # Asterisk refuses parsed bodies over 40960 bytes; the proxy gives that answer itself
        # (forwarding raced Asterisk closing the connection: 502 about half the time).
        ("application/json", 40961),
        ("application/json", 600_000),
        ("application/x-www-form-urlencoded; charset=utf-8", 100_000),
        # Bodies Asterisk would ignore are capped by the proxy at 1 MiB.
        ("text/plain", 1024 * 1024 + 1),
    ],
)
async def test_oversized_body_is_refused(proxied: Ari, content_type: str, size: int) -> None:
    for _ in range(3):  # every time, not just usually
        response = await proxied.http.post(
            "channels", content=b"x" * size, headers={"content-type": content_type}
        )
        assert_proxy_refusal(response.status_code, dict(response.headers), response.content, 413)
        assert response.json() == {"message": "Request body too large"}  # Asterisk's words


async def test_huge_declared_body_is_refused_without_reading_it(proxy: ProxyProcess) -> None:
    """Content-Length far beyond any ARI body: refused at once, from the header alone."""
    credentials = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    headers = {
        "Authorization": f"Basic {credentials}",
        "Content-Type": "application/json",
        "Content-Length": str(1 << 32),
    }
    answer = await raw_request(proxy.base, "/ari/channels", headers, method="POST")
    assert_proxy_refusal(*parse_raw(answer), 413)


async def test_oversized_chunked_body_is_refused(proxied: Ari) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"y" * 100_000

    response = await proxied.http.post(
        "channels", content=chunks(), headers={"content-type": "text/plain"}
    )
    assert_proxy_refusal(response.status_code, dict(response.headers), response.content, 413)


@pytest.mark.parametrize(("size", "status"), [(40960, 400), (40961, 413)])
async def test_asterisk_body_limit(ari: Ari, proxied: Ari, size: int, status: int) -> None:
    """At the limit Asterisk parses the body (not JSON: 400); one byte more is 413 from both.
    (Larger bodies make Asterisk itself reset the connection now and then: not compared.)"""
    headers = {"content-type": "application/json"}
    body = b"x" * size
    direct, through = await both(ari, proxied, "POST", "channels", content=body, headers=headers)
    assert direct.status_code == status
    assert through.status_code == status
    assert through.json() == direct.json()


@pytest.fixture(scope="module")
def dead_upstream_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """A proxy whose Asterisk is not there at all (nothing listens on the port)."""
    nowhere = Asterisk("nowhere", free_port())
    process = ProxyProcess(
        nowhere,
        tmp_path_factory.mktemp("dead") / "proxy.log",
        "--upstream-timeout",
        "2",
        wait=False,
    )
    try:
        yield process
    finally:
        process.stop()


async def wait_listening(process: ProxyProcess, timeout: float = 20) -> None:
    async with httpx.AsyncClient() as client, asyncio.timeout(timeout):
        while True:
            assert process.process.poll() is None, process.log()
            try:
                await client.get(process.base + "/healthz")
                return
            except httpx.TransportError:
                await asyncio.sleep(0.05)


async def test_upstream_down(dead_upstream_proxy: ProxyProcess) -> None:
    await wait_listening(dead_upstream_proxy)
    async with httpx.AsyncClient(base_url=dead_upstream_proxy.base) as client:
        health = await client.get("/healthz")
        assert health.status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["ready"] is False
        for method, path in (
            ("GET", "asterisk/info"),
            ("POST", "channels"),
            ("GET", "api-docs/resources.json"),
        ):
            response = await client.request(method, "/ari/" + path, auth=(USER, PASSWORD))
            assert_proxy_refusal(
                response.status_code, dict(response.headers), response.content, 502
            )
            assert "Asterisk" in response.json()["message"]
        await dead_upstream_proxy.wait_log("broadcast application not connected", count=3)
        assert (await client.get("/readyz")).status_code == 503  # still retrying, still alive
        assert (await client.get("/healthz")).status_code == 200
    assert dead_upstream_proxy.process.poll() is None


# -- api-docs -----------------------------------------------------------------------------------


async def test_resources_json_points_at_the_proxy(
    ari: Ari, proxied: Ari, proxy: ProxyProcess
) -> None:
    direct, through = await both(ari, proxied, "GET", "api-docs/resources.json")
    assert through.status_code == direct.status_code == 200
    resources = through.json()
    assert resources["basePath"] == f"http://127.0.0.1:{proxy.port}/ari"
    assert {**resources, "basePath": None} == {**direct.json(), "basePath": None}
    # Every declaration it lists also points at the proxy and is otherwise Asterisk's own.
    names = [api["path"].rsplit("/", 1)[1].replace("{format}", "json") for api in resources["apis"]]
    assert "events.json" in names and "channels.json" in names
    for name in names:
        direct, through = await both(ari, proxied, "GET", f"api-docs/{name}")
        assert through.status_code == 200, name
        declaration = through.json()
        assert declaration["basePath"] == resources["basePath"], name
        if name != "events.json":
            assert {**declaration, "basePath": None} == {**direct.json(), "basePath": None}


async def test_base_path_follows_the_host_the_client_used(proxied: Ari) -> None:
    response = await proxied.http.get(
        "api-docs/resources.json", headers={"host": "ari.example.test:8443"}
    )
    assert response.json()["basePath"] == "http://ari.example.test:8443/ari"


async def test_events_json_declares_the_claim(proxied: Ari) -> None:
    response = await proxied.http.get("api-docs/events.json")
    assert response.status_code == 200
    events_doc = response.json()
    operations = [op for api in events_doc["apis"] for op in api["operations"]]
    claim = next(op for op in operations if op.get("nickname") == "claimChannel")
    assert claim["httpMethod"] == "POST"
    assert {p["name"] for p in claim["parameters"]} == {"channelId", "application"}
    claim_api = next(api for api in events_doc["apis"] if claim in api["operations"])
    assert claim_api["path"] == "/events/claim"
    models = events_doc["models"]
    assert models["CallBroadcast"]["properties"]["channel"]["type"] == "Channel"
    assert models["CallClaimed"]["properties"]["winner_app"]["type"] == "string"
    assert {"CallBroadcast", "CallClaimed"} <= set(models["Event"]["subTypes"])
    # The models every other event needs are still there.
    assert {"StasisStart", "StasisEnd", "ApplicationReplaced"} <= set(models)


async def test_large_api_document_is_equivalent(
    ari: Ari, proxied: Ari, proxy: ProxyProcess
) -> None:
    direct, through = await both(ari, proxied, "GET", "api-docs/channels.json")
    assert through.status_code == direct.status_code == 200
    assert len(direct.content) > 40_000
    direct_base = direct.json()["basePath"].encode()
    proxy_base = f"http://127.0.0.1:{proxy.port}/ari".encode()
    assert through.content.replace(proxy_base, direct_base) == direct.content
    assert_no_hop_by_hop(through)


async def test_large_streamed_response_is_intact(ari: Ari, proxied: Ari) -> None:
    """Answers over the proxy's buffering limit (256 KiB) are streamed; nothing is lost."""
    prefix = f"pt-big-{token()}-"
    created = []
    try:
        for i in range(16):
            name = prefix + f"{i:02d}" + "n" * 20_000
            response = await ari.http.post("bridges", json={"type": "mixing", "name": name})
            assert response.status_code == 200
            created.append(response.json()["id"])
        direct, through = await both(ari, proxied, "GET", "bridges")
        assert direct.status_code == through.status_code == 200
        assert len(direct.content) > 300_000
        assert through.content == direct.content
        assert through.headers["content-type"] == direct.headers["content-type"]
        assert_no_hop_by_hop(through)
    finally:
        for bridge_id in created:
            await ari.http.delete(f"bridges/{bridge_id}")


async def test_static_large_listing_is_byte_identical(ari: Ari, proxied: Ari) -> None:
    direct, through = await both(ari, proxied, "GET", "sounds")
    assert direct.status_code == 200 and len(direct.content) > 10_000
    assert through.content == direct.content
