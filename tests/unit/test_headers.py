"""Which headers the passthrough passes on, in both directions."""

from __future__ import annotations

from ari_broadcast_proxy.http_exchange import end_to_end_headers


def test_hop_by_hop_headers_stay_behind() -> None:
    headers = [
        (b"Host", b"proxy:8089"),
        (b"Connection", b"keep-alive"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Content-Length", b"12"),
        (b"Authorization", b"Basic eDp5"),
        (b"Content-Type", b"application/json"),
    ]
    assert end_to_end_headers(headers) == [  # case-insensitive, as served
        (b"authorization", b"Basic eDp5"),
        (b"content-type", b"application/json"),
    ]


def test_headers_named_by_connection_are_hop_by_hop_too() -> None:
    headers = [
        (b"X-Trace", b"1"),
        (b"x-hop", b"2"),
        (b"Accept", b"*/*"),
        (b"Connection", b"close, X-Hop ,x-trace"),
    ]
    assert end_to_end_headers(headers) == [(b"accept", b"*/*")]


def test_extra_headers_can_be_dropped() -> None:
    headers = [(b"expect", b"100-continue"), (b"content-type", b"text/plain")]
    assert end_to_end_headers(headers, b"expect") == [(b"content-type", b"text/plain")]
