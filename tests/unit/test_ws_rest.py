"""REST over WebSocket client: ordered frames, futures resolved by transaction id."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from ari_broadcast_proxy.errors import UpstreamError, UpstreamTimeout
from ari_broadcast_proxy.upstream.ws_rest import RestOverWebSocket


class Recorder:
    """Stands in for the socket's write side only; answers are fed back explicitly."""

    def __init__(self, fail: bool = False, fail_after: int | None = None) -> None:
        self.frames: list[dict[str, object]] = []
        self.fail = fail
        self.fail_after = fail_after

    def send(self, text: str) -> None:
        if self.fail or (self.fail_after is not None and len(self.frames) >= self.fail_after):
            raise ConnectionError("gone")
        self.frames.append(orjson.loads(text))


async def test_calls_are_written_in_order_and_answered_by_transaction() -> None:
    socket = Recorder()
    calls = RestOverWebSocket(socket, timeout=1)
    futures = calls.submit(
        [
            ("POST", "channels/1/variable", {"variable": "V", "value": "a,b"}),
            ("POST", "channels/1/continue", {"label": "claimed"}),
        ]
    )
    uris = [frame["uri"] for frame in socket.frames]
    assert uris == [
        "channels/1/variable?variable=V&value=a%2Cb",
        "channels/1/continue?label=claimed",
    ]
    first, second = (frame["transaction_id"] for frame in socket.frames)
    assert calls.on_response({"type": "RESTResponse", "transaction_id": second, "status_code": 204})
    assert calls.on_response({"type": "RESTResponse", "transaction_id": first, "status_code": 404})
    assert [await f for f in futures] == [404, 204]
    assert not calls.on_response({"transaction_id": "someone-else", "status_code": 200})


async def test_probe_fails_on_an_asterisk_that_never_answers() -> None:
    assert not await RestOverWebSocket(Recorder(), timeout=1).probe(timeout=0.05)


async def test_waiting_for_statuses_times_out_as_an_upstream_timeout() -> None:
    with pytest.raises(UpstreamTimeout):
        calls = RestOverWebSocket(Recorder(), timeout=0.05)
        await calls.statuses(calls.submit([("GET", "asterisk/ping", {})]))


async def test_close_fails_everything_pending_and_later_calls() -> None:
    calls = RestOverWebSocket(Recorder(), timeout=1)
    [future] = calls.submit([("GET", "asterisk/ping", {})])
    calls.close()
    with pytest.raises(UpstreamError):
        await future
    with pytest.raises(UpstreamError):
        calls.submit([("GET", "asterisk/ping", {})])


async def test_a_broken_socket_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError):
        RestOverWebSocket(Recorder(fail=True), timeout=1).submit([("GET", "x", {})])
    await asyncio.sleep(0)


async def test_a_batch_that_breaks_half_way_leaves_nothing_pending() -> None:
    socket = Recorder(fail_after=1)
    calls = RestOverWebSocket(socket, timeout=1)
    with pytest.raises(UpstreamError):
        calls.submit([("POST", "channels/1/move", {"app": "a"}), ("POST", "channels/1/x", {})])
    [written] = socket.frames
    answer = {
        "type": "RESTResponse",
        "transaction_id": written["transaction_id"],
        "status_code": 204,
    }
    assert not calls.on_response(answer)  # nobody waits for the first call any more
    calls.close()  # and nothing is left to fail (no "exception never retrieved")
