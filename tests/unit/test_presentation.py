"""What applications see of a broadcast channel: the proxy's own variables never, and
snapshots as native's."""

from __future__ import annotations

import orjson
import pytest

from ari_broadcast_proxy.broadcast.presentation import Invocation, Presenter


def varset(variable: str) -> str:
    channel = {"id": "c-1", "dialplan": {"context": "elsewhere", "exten": "s", "priority": 1}}
    return orjson.dumps(
        {"type": "ChannelVarset", "variable": variable, "value": "1", "channel": channel}
    ).decode()


@pytest.mark.parametrize(
    "variable", ["ARI_BROADCAST_WINNER", "LOCAL(ARI_BROADCAST_HANDED)", "ARI_BROADCAST_STATUS"]
)
def test_the_proxys_own_variables_are_dropped(variable: str) -> None:
    assert Presenter("broadcast", "stasis-broadcast").frame(varset(variable)) is None


def test_other_variables_pass_unchanged() -> None:
    frame = varset("MY_ARI_BROADCAST_NOTE")
    assert Presenter("broadcast", "stasis-broadcast").frame(frame) == frame


def test_a_snapshot_in_the_subroutine_reads_as_native() -> None:
    presenter = Presenter("broadcast", "stasis-broadcast")
    presenter.remember("c-1", Invocation("subroutine", "5000,,a:b", "from-sip", "100", 3))
    channel = {"id": "c-1", "dialplan": {"context": "stasis-broadcast", "exten": "s"}}
    message = {"type": "StasisStart", "args": ["a", "b"], "channel": channel}
    text = orjson.dumps(message).decode()
    out = presenter.frame(text, orjson.loads(text))
    assert out is not None
    assert orjson.loads(out)["channel"]["dialplan"] == {
        "context": "from-sip",
        "exten": "100",
        "priority": 3,
        "app_name": "StasisBroadcast",
        "app_data": "5000,,a:b",
    }


def test_forgetting_an_older_invocation_keeps_the_current_one() -> None:
    presenter = Presenter("broadcast", "stasis-broadcast")
    first = Invocation("subroutine", "5000", "from-sip", "100", 3)
    again = Invocation("subroutine", "5000", "from-sip", "100", 6)
    presenter.remember("c-1", first)
    presenter.remember("c-1", again)  # the channel entered a broadcast once more
    presenter.forget("c-1", first)
    assert len(presenter) == 1
    presenter.forget("c-1", again)
    assert len(presenter) == 0


def test_a_snapshot_in_a_rest_over_websocket_answer_reads_as_native() -> None:
    presenter = Presenter("broadcast", "stasis-broadcast")
    presenter.remember("c-1", Invocation("subroutine", "5000", "from-sip", "100", 3))
    channel = {"id": "c-1", "dialplan": {"context": "stasis-broadcast", "exten": "s"}}
    response = {
        "type": "RESTResponse",
        "status_code": 200,
        "message_body": orjson.dumps(channel).decode(),
    }
    out = presenter.frame(orjson.dumps(response).decode())
    assert out is not None
    body = orjson.loads(orjson.loads(out)["message_body"])
    assert body["dialplan"]["app_name"] == "StasisBroadcast"
    assert body["dialplan"]["context"] == "from-sip"
