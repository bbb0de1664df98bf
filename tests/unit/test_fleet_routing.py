"""Where each ARI request goes with several Asterisk servers (fleet/routing.py), and what the
locator learns from events and answers (fleet/locator.py)."""

from __future__ import annotations

import orjson
import pytest

from ari_broadcast_proxy.ari_request import AriCall
from ari_broadcast_proxy.fleet.locator import Locator
from ari_broadcast_proxy.fleet.rest import _merged
from ari_broadcast_proxy.fleet.routing import Kind, Resource, Route, route
from ari_broadcast_proxy.upstream.http import HttpResponse


def call(method: str, path: str, **params: str) -> AriCall:
    return AriCall(method, tuple(path.split("/")), tuple(params.items()))


CHANNEL = Resource("channels", "alpha-1.1")
BRIDGE = Resource("bridges", "b1")


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        # lists: every server, merged
        (call("GET", "channels"), Route(Kind.EVERY, merge=True)),
        (call("GET", "bridges"), Route(Kind.EVERY, merge=True)),
        (call("GET", "endpoints"), Route(Kind.EVERY, merge=True)),
        (call("GET", "endpoints/PJSIP"), Route(Kind.EVERY, merge=True)),
        (call("GET", "recordings/stored"), Route(Kind.EVERY, merge=True)),
        (call("GET", "applications"), Route(Kind.EVERY, merge=True)),
        (call("GET", "applications/app"), Route(Kind.EVERY, merge=True)),
        (
            call("POST", "applications/app/subscription", eventSource="deviceState:x"),
            Route(Kind.EVERY, merge=True),
        ),
        (
            call("DELETE", "applications/app/subscription", eventSource="endpoint:PJSIP/a"),
            Route(Kind.EVERY, merge=True),
        ),
        (
            call("POST", "applications/app/subscription", eventSource="channel:alpha-1.1"),
            Route(Kind.HOLDER, CHANNEL),
        ),
        # one resource: its holder
        (call("GET", "channels/alpha-1.1"), Route(Kind.HOLDER, CHANNEL)),
        (call("DELETE", "channels/alpha-1.1"), Route(Kind.HOLDER, CHANNEL)),
        (call("POST", "channels/alpha-1.1/snoop", app="a"), Route(Kind.HOLDER, CHANNEL)),
        (
            call("POST", "channels/alpha-1.1/dial", caller="beta-2.2"),
            Route(Kind.HOLDER, CHANNEL, (Resource("channels", "beta-2.2"),)),
        ),
        (
            call("POST", "bridges/b1/addChannel", channel="c1,c2"),
            Route(Kind.HOLDER, BRIDGE, (Resource("channels", "c1"), Resource("channels", "c2"))),
        ),
        (
            call("POST", "bridges/b1/videoSource/c1"),
            Route(Kind.HOLDER, BRIDGE, (Resource("channels", "c1"),)),
        ),
        (call("GET", "playbacks/p1"), Route(Kind.HOLDER, Resource("playbacks", "p1"))),
        (
            call("POST", "recordings/live/r1/stop"),
            Route(Kind.HOLDER, Resource("recordings/live", "r1")),
        ),
        (
            call("POST", "recordings/stored/r1/copy", destinationRecordingName="r2"),
            Route(Kind.HOLDER, Resource("recordings/stored", "r1")),
        ),
        (
            call("GET", "endpoints/PJSIP/alice"),
            Route(Kind.HOLDER, Resource("endpoints", "PJSIP/alice")),
        ),
        (
            call("POST", "events/user/ev", source="channel:alpha-1.1,bridge:b1"),
            Route(Kind.HOLDER, CHANNEL),
        ),
        # creations: where the originator is, else in turn
        (call("POST", "channels", endpoint="Local/s@x"), Route(Kind.CREATE)),
        (
            call("POST", "channels", endpoint="Local/s@x", originator="alpha-1.1"),
            Route(Kind.CREATE, together=(CHANNEL,)),
        ),
        (call("POST", "channels/create", endpoint="x", app="a"), Route(Kind.CREATE)),
        (call("POST", "channels/externalMedia", app="a"), Route(Kind.CREATE)),
        (call("POST", "channels/alpha-1.1", endpoint="x"), Route(Kind.CREATE, CHANNEL)),
        (call("POST", "bridges", type="mixing"), Route(Kind.CREATE)),
        (call("POST", "bridges", bridgeId="a-b1"), Route(Kind.CREATE, Resource("bridges", "a-b1"))),
        (
            call("POST", "channels", endpoint="x", channelId="a-c1"),
            Route(Kind.CREATE, Resource("channels", "a-c1")),
        ),
        (call("POST", "bridges/b1"), Route(Kind.CREATE, BRIDGE)),
        # fleet-wide settings: written everywhere, read anywhere
        (call("POST", "asterisk/variable", variable="X", value="1"), Route(Kind.EVERY)),
        (call("GET", "asterisk/variable", variable="X"), Route(Kind.ANY)),
        (call("PUT", "asterisk/modules/res_x.so"), Route(Kind.EVERY)),
        (call("PUT", "asterisk/config/dynamic/res_pjsip/endpoint/e"), Route(Kind.EVERY)),
        (call("PUT", "deviceStates/Stasis:x", deviceState="BUSY"), Route(Kind.EVERY)),
        (call("GET", "deviceStates"), Route(Kind.ANY)),
        (call("PUT", "mailboxes/m", oldMessages="1", newMessages="2"), Route(Kind.EVERY)),
        # the same from any server
        (call("GET", "asterisk/info"), Route(Kind.ANY)),
        (call("GET", "sounds"), Route(Kind.ANY)),
        (call("GET", "api-docs/resources.json"), Route(Kind.ANY)),
        (call("POST", "events/user/ev"), Route(Kind.ANY)),
        (call("POST", "endpoints/sendMessage", to="pjsip:x", **{"from": "y"}), Route(Kind.ANY)),
    ],
    ids=lambda value: f"{value.method} {value.path}" if isinstance(value, AriCall) else "",
)
def test_routes(request_: AriCall, expected: Route) -> None:
    assert route(request_) == expected


def test_list_parameters_in_a_json_body_count_too() -> None:
    body_call = AriCall("POST", ("bridges", "b1", "addChannel"), (), {"channel": ["c1", "c2"]})
    assert route(body_call).together == (Resource("channels", "c1"), Resource("channels", "c2"))


def test_locator_learns_from_events_and_forgets_ended_resources() -> None:
    locator = Locator()
    channel = {"id": "alpha-1.1", "name": "PJSIP/a-1"}
    assert locator.event({"type": "StasisStart", "channel": channel}, "a:1") == []
    assert locator.holder(CHANNEL) == "a:1"
    event = {"type": "ChannelEnteredBridge", "channel": channel, "bridge": {"id": "b1"}}
    locator.event(event, "a:1")
    assert locator.holder(BRIDGE) == "a:1"
    locator.event({"type": "ChannelDestroyed", "channel": channel}, "a:1")
    assert locator.holder(CHANNEL) is None and locator.holder(BRIDGE) == "a:1"
    locator.event({"type": "RecordingStarted", "recording": {"name": "r1"}}, "b:2")
    assert locator.holder(Resource("recordings/live", "r1")) == "b:2"
    locator.event({"type": "RecordingFinished", "recording": {"name": "r1"}}, "b:2")
    assert locator.holder(Resource("recordings/live", "r1")) is None


def test_locator_reports_one_id_on_two_servers_until_one_ends() -> None:
    locator = Locator()
    locator.answer("channels", {"id": "1.1"}, "a:1")
    same = Resource("channels", "1.1")
    assert locator.answer("channels", [{"id": "1.1"}], "b:2") == [same]
    assert locator.colliding(same) == {"a:1", "b:2"}
    locator.forget(same, "a:1")
    assert locator.colliding(same) == set() and locator.holder(same) == "b:2"


def test_locator_is_bounded_oldest_first() -> None:
    locator = Locator(max_entries=2)
    for n in range(3):
        locator.learn(Resource("channels", str(n)), "a:1")
    assert len(locator) == 2 and locator.holder(Resource("channels", "0")) is None


def test_merged_lists_keep_one_copy_of_what_every_server_has() -> None:
    """Endpoints and stored recordings are each server's own copy: once in a merged list,
    an online endpoint over an offline copy; channels (unique ids) all kept."""
    alice = {"technology": "PJSIP", "resource": "alice", "channel_ids": []}
    answers = [
        [{**alice, "state": "offline"}, {"name": "r1", "format": "wav"}],
        [{**alice, "state": "online"}, {"name": "r1", "format": "wav"}, {"id": "b-1.1"}],
    ]
    merged = orjson.loads(_merged([_answer(a) for a in answers]).content)
    assert merged == [
        {**alice, "state": "online"},
        {"name": "r1", "format": "wav"},
        {"id": "b-1.1"},
    ]


def test_one_application_merged_from_every_server() -> None:
    apps = [
        {"name": "x", "channel_ids": ["a-1"], "bridge_ids": [], "events_allowed": []},
        {"name": "x", "channel_ids": ["b-1", "a-1"], "bridge_ids": ["b-b"], "events_allowed": []},
    ]
    merged = orjson.loads(_merged([_answer(a) for a in apps]).content)
    assert merged == {
        "name": "x",
        "channel_ids": ["a-1", "b-1"],
        "bridge_ids": ["b-b"],
        "events_allowed": [],
    }


def _answer(body: object) -> HttpResponse:
    return HttpResponse.composed(
        200, [(b"content-type", b"application/json")], orjson.dumps(body), 1
    )
