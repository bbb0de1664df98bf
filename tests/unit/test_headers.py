"""Which headers the passthrough passes on, in both directions."""

from __future__ import annotations

import httpx

from ari_broadcast_proxy.passthrough import end_to_end_headers


def test_hop_by_hop_headers_stay_behind() -> None:
    headers = [
        ("Host", "proxy:8089"),
        ("Connection", "keep-alive"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "12"),
        ("Authorization", "Basic eDp5"),
        ("Content-Type", "application/json"),
    ]
    assert end_to_end_headers(httpx.Headers(headers)) == [  # case-insensitive, as served
        ("authorization", "Basic eDp5"),
        ("content-type", "application/json"),
    ]


def test_headers_named_by_connection_are_hop_by_hop_too() -> None:
    headers = [
        ("X-Trace", "1"),
        ("x-hop", "2"),
        ("Accept", "*/*"),
        ("Connection", "close, X-Hop ,x-trace"),
    ]
    assert end_to_end_headers(httpx.Headers(headers)) == [("accept", "*/*")]


def test_extra_headers_can_be_dropped() -> None:
    headers = [("content-encoding", "gzip"), ("content-type", "text/plain")]
    assert end_to_end_headers(httpx.Headers(headers), "content-encoding") == [
        ("content-type", "text/plain")
    ]
