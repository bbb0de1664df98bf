"""What the proxy refuses or hides of a request, decided on the request as Asterisk reads it."""

from __future__ import annotations

import orjson
import pytest

from ari_broadcast_proxy.broadcast.request_rules import (
    AriCall,
    RequestRules,
    without_reserved_variables,
)

OFFERED = "1.1"
rules = RequestRules("broadcast", lambda channel_id: channel_id == OFFERED)


def call(method: str, path: str, *params: tuple[str, str], body: object = None) -> AriCall:
    return AriCall(method, tuple(path.split("/")), params, body)


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (call("POST", "channels/1.1/answer"), 409),
        (call("POST", "channels/1.1/variable", ("variable", "X"), ("value", "1")), 409),
        (call("DELETE", "channels/1.1/moh"), 409),
        (call("POST", "bridges/b/addChannel", ("channel", "2.2,1.1")), 422),
        (call("POST", "bridges/b/addChannel", ("channel", '"1.1"')), 422),
        (call("POST", "bridges/b/addChannel", body={"channel": ["1.1"]}), 422),
        (call("POST", "bridges/b/removeChannel", ("channel", "1.1")), 422),
        (call("POST", "bridges/b/videoSource/1.1"), 422),
    ],
)
def test_control_of_a_call_on_offer_gets_natives_refusal(request_: AriCall, status: int) -> None:
    refusal = rules.refusal(request_)
    assert refusal is not None
    assert (refusal.status, refusal.message) == (status, "Channel not in Stasis application")


@pytest.mark.parametrize(
    "request_",
    [
        call("GET", "channels/1.1"),
        call("GET", "channels/1.1/variable", ("variable", "X")),
        call("DELETE", "channels/1.1"),  # a hangup works on any channel, natively too
        call("POST", "channels/2.2/answer"),
        call("POST", "bridges/b/addChannel", ("channel", "2.2")),
        call("POST", "bridges/b/addChannel", ("channel", " 1.1")),  # not trimmed: not the call
        call("POST", "events/claim", ("channelId", "1.1"), ("application", "broadcast")),
    ],
)
def test_what_native_allows_goes_to_asterisk(request_: AriCall) -> None:
    assert rules.refusal(request_) is None


@pytest.mark.parametrize(
    "request_",
    [
        call("POST", "channels", ("endpoint", "Local/s@x"), ("app", "broadcast")),
        call("POST", "channels/2.2/move", ("app", "broadcast")),
        call("POST", "channels/2.2/snoop", body={"app": "broadcast", "spy": "in"}),
        call("POST", "events/user/x", ("application", "broadcast")),
        # Stasis("<app>,<appArgs>") splits and unquotes: all of these are "broadcast".
        call("POST", "channels", ("endpoint", "Local/s@x"), ("app", "broadcast,x")),
        call("POST", "channels", ("endpoint", "Local/s@x"), ("app", '"broadcast"')),
        call("POST", "channels", ("endpoint", "Local/s@x"), ("app", "broad\\cast")),
    ],
)
def test_the_proxys_application_cannot_be_named(request_: AriCall) -> None:
    refusal = rules.refusal(request_)
    assert refusal is not None
    assert refusal.status == 403
    assert refusal.message == "Application 'broadcast' is reserved for the broadcast proxy"


@pytest.mark.parametrize(
    "request_",
    [
        call("POST", "channels/2.2/variable", ("variable", "ARI_BROADCAST_WINNER")),
        call("POST", "channels/2.2/variable", ("variable", "LOCAL(ari_broadcast_handed)")),
        call("POST", "asterisk/variable", ("variable", "ARI_BROADCAST_APP"), ("value", "x")),
        call("POST", "asterisk/variable", body={"variable": "GLOBAL(ARI_BROADCAST_APP)"}),
        call("POST", "channels", body={"variables": {"ARI_BROADCAST_HANDED": "1"}}),
        call("POST", "channels/2.2/variables", body={"variables": {"Ari_Broadcast_App": "x"}}),
    ],
)
def test_the_proxys_variables_cannot_be_written(request_: AriCall) -> None:
    refusal = rules.refusal(request_)
    assert refusal is not None
    assert refusal.status == 403
    assert "is reserved for the broadcast proxy" in refusal.message


def test_reads_of_the_proxys_variables_and_application_are_recognised() -> None:
    assert rules.reads_reserved_variable(
        call("GET", "asterisk/variable", ("variable", "ARI_BROADCAST_APP"))
    )
    assert not rules.reads_reserved_variable(call("GET", "asterisk/variable", ("variable", "X")))
    assert rules.names_reserved_app(call("PUT", "applications/broadcast/eventFilter"))
    assert not rules.names_reserved_app(call("GET", "applications/broadcasts"))


def test_listings_do_not_show_the_proxys_application_or_variables() -> None:
    apps = orjson.dumps([{"name": "broadcast"}, {"name": "mine"}])
    assert orjson.loads(rules.without_reserved_app(apps)) == [{"name": "mine"}]
    variables = orjson.dumps({"variables": {"ARI_BROADCAST_WINNER": "a", "X": "1"}})
    assert orjson.loads(without_reserved_variables(variables)) == {"variables": {"X": "1"}}


def test_released_channels() -> None:
    assert rules.released_channel(call("POST", "channels/1.1/continue")) == "1.1"
    assert rules.released_channel(call("DELETE", "channels/1.1")) == "1.1"
    assert rules.released_channel(call("POST", "channels/1.1/answer")) is None
