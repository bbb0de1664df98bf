"""While a call is on offer no application owns it: every ARI operation that names the channel
must get native's answer through the proxy too.

The operations come from the api-docs the running Asterisk serves, not from a list: every
parameter whose description says it holds an existing channel's id gets the offered channel's
id (a query parameter also in a JSON body), over HTTP and over REST-over-WebSocket. Each row
runs on a fresh call on offer (60 s broadcast to one application), natively and through the
proxy. Compared: the answer (status and JSON body, volatile ids masked) and what became of the
call (a claim, then its verdict), so the rows that end the offer (hangup, claim) are compared too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from ..ari import Ari, Events, events, token
from .scenarios import Target, claim, place_call
from .test_bad_input import Case, raw_request

NOT_IN_STASIS = {"message": "Channel not in Stasis application"}
STILL_ON_OFFER = {"claim": {"status": 204, "body": None}, "verdict": "SUCCESS"}
HANGUP = ("DELETE", "/channels/{channelId}")  # ends the call natively too
CLAIM = ("POST", "/events/claim")
TRANSPORTS = ("http", "websocket")

# A parameter names an existing channel when its description says it holds a channel's id
# ("Channel's id", "Ids of channels to add", "Channel ID of caller", "The unique id of the
# channel which is originating this one", "channel:{channelId}" event sources...). Ids to
# assign to a channel being created ("The unique id to assign the channel on creation") do not.
_EXISTING = re.compile(
    r"channel'?s id|ids of channels|channel id of|id of the channel|calling channel"
    r"|channel:\{channelId\}",
    re.IGNORECASE,
)
# bridges.json documents POST /bridges/{bridgeId}/moh's mohClass as "Channel's id" (a
# copy-paste slip in Asterisk's docs): it is a music-on-hold class.
_NOT_A_CHANNEL = {"mohClass"}


def names_a_channel(param: dict[str, Any]) -> bool:
    return param["name"] not in _NOT_A_CHANNEL and bool(
        _EXISTING.search(param.get("description", ""))
    )


@dataclass(frozen=True)
class Row:
    """One operation, the offered channel's id in one of its parameters, one transport."""

    method: str
    path: str
    param: dict[str, Any]
    parameters: tuple[dict[str, Any], ...]
    in_body: bool  # a query parameter sent in a JSON body instead (ARI reads both)
    transport: str
    undoes: bool = False  # DELETE of what a POST on the same sub-resource starts: sent after it

    @property
    def where(self) -> str:
        return f"{'json body' if self.in_body else self.param['paramType']} {self.param['name']}"

    @property
    def key(self) -> str:
        return f"{self.method} {self.path} [{self.where}] {self.transport}"


async def api_docs(ari: Ari) -> list[dict[str, Any]]:
    listing = (await ari.http.get("api-docs/resources.json")).json()
    names = [api["path"].rsplit("/", 1)[1].replace("{format}", "json") for api in listing["apis"]]
    return [(await ari.http.get(f"api-docs/{name}")).json() for name in names]


def rows_from(documents: list[dict[str, Any]]) -> list[Row]:
    """Every (operation, channel parameter, where it goes, transport), in api-docs order."""
    rows = []
    for document in documents:
        for api in document["apis"]:
            methods = {operation["httpMethod"] for operation in api["operations"]}
            for operation in api["operations"]:
                method, parameters = operation["httpMethod"], tuple(operation.get("parameters", ()))
                # /channels/{channelId}/ring, /applications/{applicationName}/subscription...
                # not /channels/{channelId} (POST creates that channel, DELETE hangs it up).
                undoes = method == "DELETE" and "POST" in methods and not api["path"].endswith("}")
                for param in filter(names_a_channel, parameters):
                    for in_body in (False, True) if param["paramType"] == "query" else (False,):
                        rows += [
                            Row(method, api["path"], param, parameters, in_body, t, undoes)
                            for t in TRANSPORTS
                        ]
    return rows


@dataclass
class Offer:
    """A call on offer to one application, and what a row created around it."""

    target: Target
    owner: str
    client: Events
    token: str
    channel: dict[str, Any]
    bridges: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # literal -> placeholder

    @property
    def id(self) -> str:
        return self.channel["id"]

    async def bridge(self) -> str:
        response = await self.target.apps_ari.http.post("bridges", params={"type": "mixing"})
        bridge_id = response.json()["id"]
        self.bridges.append(bridge_id)
        self.names[bridge_id] = "<bridge>"
        return bridge_id

    async def other_channel(self) -> str:
        """A channel created into the owner's Stasis application, not dialled yet."""
        channel_id = self.new_id("other channel")
        response = await self.target.apps_ari.http.post(
            "channels/create",
            params={"endpoint": "Local/s@tests-echo", "app": self.owner, "channelId": channel_id},
        )
        assert response.status_code == 200, response.text
        await self.client.wait_for(  # until then Asterisk answers 409 for it, too
            lambda e: e["type"] == "StasisStart" and e["channel"]["id"] == channel_id, 5
        )
        return channel_id

    def new_id(self, what: str) -> str:
        value = f"probe-{token()}"
        self.names[value] = f"<{what}>"
        return value


# Plausible values for the other required parameters, by name.
FILLS: dict[str, Callable[[Offer], Awaitable[Any] | Any]] = {
    "bridgeId": Offer.bridge,
    "playbackId": lambda offer: offer.new_id("playbackId"),
    "snoopId": lambda offer: offer.new_id("snoopId"),
    "channelId": lambda offer: offer.new_id("channelId"),
    "applicationName": lambda offer: offer.owner,
    "application": lambda offer: offer.owner,
    "app": lambda offer: offer.owner,
    "eventName": lambda offer: "offer-probe",
    "endpoint": lambda offer: "Local/s@tests-echo",
    "media": lambda offer: "sound:beep",
    "name": lambda offer: offer.new_id("recording"),
    "format": lambda offer: "wav",
    "variable": lambda offer: "BCAST_DATA",
    "variables": lambda offer: "BCAST_DATA",
    "states": lambda offer: "channel_progress",
    "spy": lambda offer: "in",
}
BODY_FILLS = {"variables": {"OFFER_PROBE": "1"}}
# Optional, but without them Asterisk answers 400 before it looks at the channel.
ALSO_FILLED = {"app", "spy"}


async def fill(offer: Offer, row: Row, param: dict[str, Any]) -> Any:
    if param is row.param:
        return f"channel:{offer.id}" if "channel:{" in param["description"] else offer.id
    if names_a_channel(param):
        return await offer.other_channel()
    if param["paramType"] == "body":
        return BODY_FILLS[param["name"]]
    value = FILLS[param["name"]](offer)
    return await value if asyncio.iscoroutine(value) else value


async def send(offer: Offer, row: Row) -> dict[str, Any]:
    """The row's request: the channel parameter, the required ones and ALSO_FILLED."""
    path, query, body = row.path, {}, {}
    for param in row.parameters:
        wanted = param.get("required") or param["name"] in ALSO_FILLED
        if param is not row.param and not wanted:
            continue
        value = await fill(offer, row, param)
        if param["paramType"] == "path":
            path = path.replace("{" + param["name"] + "}", value)
        elif param["paramType"] == "body" or (param is row.param and row.in_body):
            body[param["name"]] = value
        else:
            query[param["name"]] = value
    send_over = over_http if row.transport == "http" else over_websocket
    uri = path.lstrip("/")
    if row.undoes:
        await send_over(offer, "POST", uri, query, body or None)
    status, content = await send_over(offer, row.method, uri, query, body or None)
    return {"status": status, "body": masked(json.loads(content), offer) if content else None}


async def over_http(
    offer: Offer, method: str, uri: str, query: dict[str, str], body: dict[str, Any] | None
) -> tuple[int, bytes]:
    response = await offer.target.apps_ari.http.request(method, uri, params=query, json=body)
    return response.status_code, response.content


async def over_websocket(
    offer: Offer, method: str, uri: str, query: dict[str, str], body: dict[str, Any] | None
) -> tuple[int, str]:
    """The same request as a RESTRequest frame on the owner's events socket."""
    request_id = token()
    frame = {
        "type": "RESTRequest",
        "transaction_id": request_id,
        "request_id": request_id,
        "method": method,
        "uri": f"{uri}?{urlencode(query)}" if query else uri,
    }
    if body is not None:
        frame |= {"content_type": "application/json", "message_body": json.dumps(body)}
    await offer.client.socket.send(json.dumps(frame))
    response = await offer.client.wait_for(
        lambda e: e["type"] == "RESTResponse" and e.get("request_id") == request_id, 5
    )
    return response["status_code"], response.get("message_body", "")


_VOLATILE = (
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+[+-]\d{4}"), "<time>"),
    (re.compile(r"\b\d{9,}\.\d+\b"), "<uniqueid>"),
    (re.compile(r"-[0-9a-f]{8}\b"), "-<n>"),
)


def masked(value: Any, offer: Offer) -> Any:
    """`value` with this row's ids, names and the target's context replaced by placeholders."""
    if isinstance(value, dict):
        if "dialplan" in value and value.get("id") != offer.id:
            # A channel the row created: where it is by the time of the answer is a race
            # (a snoop channel's app_name is "Stasis" or still "", natively alike).
            value = {**value, "state": "<racy>", "dialplan": "<racy>"}
        return {k: masked(v, offer) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, offer) for v in value]
    if not isinstance(value, str):
        return value
    names = {
        offer.id: "<offer>",
        offer.owner: "<owner>",
        offer.target.context: "<caller context>",
        **offer.names,
    }
    for literal, placeholder in sorted(names.items(), key=lambda kv: -len(kv[0])):
        value = value.replace(literal, placeholder)
    for pattern, placeholder in _VOLATILE:
        value = pattern.sub(placeholder, value)
    return value


@contextlib.asynccontextmanager
async def on_offer(target: Target, client: Events, owner: str) -> AsyncIterator[Offer]:
    """A fresh call on offer to `owner` only; hung up, with whatever the row made, afterwards."""
    before = {c["id"] for c in (await target.ari.http.get("channels")).json()}
    offered = len(client.of_type("CallBroadcast"))
    call = await place_call(target, f"60000,^{owner}$")
    await client.wait_for(lambda e: len(client.of_type("CallBroadcast")) > offered)
    offer = Offer(target, owner, client, call.token, client.of_type("CallBroadcast")[-1]["channel"])
    try:
        yield offer
    finally:
        for bridge_id in offer.bridges:
            await target.ari.http.delete(f"bridges/{bridge_id}")
        await hang_up_all_but(target.ari, before)


async def hang_up_all_but(ari: Ari, keep: set[str]) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        extra = [c["id"] for c in (await ari.http.get("channels")).json() if c["id"] not in keep]
        if not extra:
            return
        for channel_id in extra:
            await ari.http.delete(f"channels/{channel_id}")
        await asyncio.sleep(0.05)  # polling: ARI has no "these channels are gone" event


async def what_became_of(offer: Offer, hung_up: bool) -> dict[str, Any]:
    """Claim the call: 204 and SUCCESS after `continue` when it was still on offer."""
    target = offer.target
    if hung_up:  # let the broadcast see it first: natively a claim racing a hangup can win
        with contextlib.suppress(TimeoutError):
            await target.ari.wait_global(f"BCAST_HANGUP_{offer.token}", 5)
    won = await claim(target.apps_ari, offer.id, offer.owner)
    started = False
    if won["status"] in (204, 409):  # 409: the row itself claimed it
        with contextlib.suppress(TimeoutError):
            await offer.client.wait_for(
                lambda e: e["type"] == "StasisStart" and e["channel"]["id"] == offer.id, 3
            )
            started = True
    if started:
        await target.apps_ari.http.post(f"channels/{offer.id}/continue")
        name = f"BCAST_RESULT_{offer.token}"
    else:
        await target.ari.http.delete(f"channels/{offer.id}")
        name = f"BCAST_HANGUP_{offer.token}"
    try:
        verdict = await target.ari.wait_global(name, 5)
    except TimeoutError:
        verdict = f"{name.split('_')[1]} never set"
    return {"claim": masked(won, offer), "verdict": verdict}


async def sweep(target: Target, rows: list[Row]) -> dict[str, dict[str, Any]]:
    """Each row on its own call on offer: the answer, and what became of the call."""
    owner = f"offer-owner-{target.name}"
    out = {}
    async with events(target.app_base, owner) as client:
        await asyncio.sleep(0.05)  # registration is asynchronous on Asterisk's side
        for row in rows:
            async with on_offer(target, client, owner) as offer:
                answer = await send(offer, row)
                hung_up = (row.method, row.path) == HANGUP and answer["status"] == 204
                out[row.key] = {"answer": answer, "after": await what_became_of(offer, hung_up)}
    return out


async def test_operations_on_an_offered_channel_answer_as_native(
    targets: dict[str, Target], ari: Ari
) -> None:
    rows = rows_from(await api_docs(ari))
    await ari.set_native_modules(True)
    native = await sweep(targets["native"], rows)
    await ari.set_native_modules(False)
    proxied = await sweep(targets["proxy"], rows)

    # Native itself, as the spec (19a) observed it, and every row really ran on an offered call.
    for transport in TRANSPORTS:
        answer = native[f"POST /channels/{{channelId}}/answer [path channelId] {transport}"]
        assert answer["answer"] == {"status": 409, "body": NOT_IN_STASIS}
        got = native[f"GET /channels/{{channelId}} [path channelId] {transport}"]
        assert got["answer"]["status"] == 200
    for row in rows:
        if (row.method, row.path) not in (HANGUP, CLAIM):
            assert native[row.key]["after"] == STILL_ON_OFFER, f"native {row.key}"

    differing = [row.key for row in rows if proxied[row.key] != native[row.key]]
    assert not differing, f"proxy != native on {len(differing)} of {len(rows)} rows:\n" + "\n".join(
        f"{key}\n  native: {json.dumps(native[key])}\n  proxy:  {json.dumps(proxied[key])}"
        for key in differing
    )


# The same refusals, spelled the ways Asterisk reads but a naive proxy would not: a NUL ends a
# segment, an escape decodes inside its segment, a trailing slash is refused, list parameters
# are unquoted but not trimmed. (A NUL in a RESTRequest frame makes Asterisk refuse it.)
TRICKS: list[tuple[str, str, str]] = [
    ("http", "POST", "channels/{id}/answer%00x"),
    ("http", "POST", "channels/{id}%00/answer"),
    ("http", "POST", "channels/{id}/%61nswer"),
    ("http", "POST", "channels/{id}/answer/"),
    ("http", "POST", "channels/{id}/variable?variable=X%00&value=1"),
    ("http", "POST", "bridges/{bridge}/addChannel?channel=%22{id}%22"),
    ("http", "POST", "bridges/{bridge}/addChannel?channel=%20{id}"),
    ("http", "POST", "bridges/{bridge}/addChannel?channel={id}%00x"),
    ("websocket", "POST", "channels/{id}/%61nswer"),
    ("websocket", "POST", "channels/{id}/answer/"),
    ("websocket", "POST", "/channels/{id}/answer"),
    ("websocket", "POST", "bridges/{bridge}/addChannel?channel=%20{id}"),
]


async def raw_http(offer: Offer, method: str, target: str) -> tuple[int, bytes]:
    """The request target exactly as written (an HTTP client would normalise it)."""
    port = int(offer.target.apps_ari.base.rsplit(":", 1)[1])
    status, _headers, body = await raw_request(port, Case("trick", method, f"/ari/{target}", 0))
    return status, body


async def trick(offer: Offer, transport: str, method: str, template: str) -> dict[str, Any]:
    target = template.replace("{id}", offer.id)
    if "{bridge}" in target:
        target = target.replace("{bridge}", await offer.bridge())
    if transport == "http":
        status, content = await raw_http(offer, method, target)
    else:
        status, text = await over_websocket(offer, method, target, {}, None)
        content = text.encode()
    return {"status": status, "body": masked(json.loads(content), offer) if content else None}


async def test_refusals_cannot_be_walked_around_by_spelling(
    targets: dict[str, Target], ari: Ari
) -> None:
    seen: dict[str, dict[str, Any]] = {}
    for name, modules in (("native", True), ("proxy", False)):
        await ari.set_native_modules(modules)
        target = targets[name]
        owner = f"offer-owner-{name}"
        async with events(target.app_base, owner) as client:
            await asyncio.sleep(0.05)  # registration is asynchronous on Asterisk's side
            for transport, method, template in TRICKS:
                async with on_offer(target, client, owner) as offer:
                    answer = await trick(offer, transport, method, template)
                    after = await what_became_of(offer, hung_up=False)
                    seen.setdefault(f"{transport} {method} {template}", {})[name] = {
                        "answer": answer,
                        "after": after,
                    }
    differing = {key: both for key, both in seen.items() if both["proxy"] != both["native"]}
    assert not differing, json.dumps(differing, indent=1)
    assert all(both["native"]["after"] == STILL_ON_OFFER for both in seen.values())


# Where the proxy refuses what it cannot decide safely, and native would answer otherwise.
STRICTER = [
    # Asterisk's sscanf("%2x") reads some of these as numbers, some literally (native: 404).
    ("channels/{id}/answer%zz", 400, "Malformed percent-encoding"),
    ("channels/{id}/answer%+1", 400, "Malformed percent-encoding"),
    ("channels/{id}%", 400, "Malformed percent-encoding"),
    # Native stops at the first bad channel of the list: 400 "Channel not found" for x.
    ("bridges/{bridge}/addChannel?channel=x,{id}", 422, "Channel not in Stasis application"),
]


async def test_what_cannot_be_decided_safely_is_refused(
    targets: dict[str, Target], ari: Ari
) -> None:
    await ari.set_native_modules(False)
    target = targets["proxy"]
    owner = "offer-owner-stricter"
    async with events(target.app_base, owner) as client:
        await asyncio.sleep(0.05)
        for template, status, message in STRICTER:
            async with on_offer(target, client, owner) as offer:
                answer = await trick(offer, "http", "POST", template)
                assert answer == {"status": status, "body": {"message": message}}, template
                assert await what_became_of(offer, hung_up=False) == STILL_ON_OFFER
