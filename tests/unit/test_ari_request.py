"""Requests read as Asterisk reads them (the live comparison is in
tests/integration/test_ownership.py)."""

from __future__ import annotations

import pytest

from ari_broadcast_proxy.ari_request import (
    decode_component,
    parse_query,
    path_segments,
    registered_apps,
    split_app_names,
)
from ari_broadcast_proxy.errors import BadRequest


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        (b"answer", "answer"),
        (b"%61nswer", "answer"),
        (b"answer%00x", "answer"),  # a C string ends at the NUL
        (b"a+b", "a b"),  # the legacy flag: + is a space
        (b"a%2Bb", "a+b"),
        (b"%C3%A9", "é"),
        (b"", ""),
    ],
)
def test_components_decode_as_ast_uri_decode(raw: bytes, decoded: str) -> None:
    assert decode_component(raw) == decoded


@pytest.mark.parametrize("raw", [b"%", b"%4", b"%zz", b"% f", b"%+f", b"%-1", b"%0x1"])
def test_escapes_sscanf_would_read_its_own_way_are_refused(raw: bytes) -> None:
    with pytest.raises(BadRequest, match="Malformed percent-encoding"):
        decode_component(raw)


@pytest.mark.parametrize(
    ("raw", "segments"),
    [
        (b"channels/1.2/answer", ("channels", "1.2", "answer")),
        (b"channels/1.2%2Fx/answer", ("channels", "1.2/x", "answer")),  # decoded after the split
        (b"channels//answer", ("channels",)),  # the walk stops at an empty segment
        (b"channels/1.2/answer/", ()),  # Asterisk: 404, URLs do not end with a slash
        (b"/channels", ()),
        (b"channels/X%00/answer", ("channels", "X", "answer")),
    ],
)
def test_path_segments_as_ast_ari_invoke(raw: bytes, segments: tuple[str, ...]) -> None:
    assert path_segments(raw) == segments


def test_query_keeps_order_blank_values_and_cuts_at_nul() -> None:
    assert parse_query(b"a=1&b&c=x%00y&&d=%2B+") == [("a", "1"), ("b", ""), ("c", "x"), ("d", "+ ")]


@pytest.mark.parametrize(
    ("value", "names"),
    [
        # Each row was read off a real Asterisk 22.10 (GET /applications after connecting).
        ("a,b", ["a", "b"]),
        ('"bro,x"', ["bro,x"]),
        ("br\\oad", ["br\\oad"]),
        (" sp", ["sp"]),
        ('" x "', [" x "]),
        ("(a,b)", ["(a", "b)"]),
        ("a , b", ["a", "b"]),
        ('"a"b', ['"a"b']),
        ('a","b', ['a","b']),
        ("\tx\n", ["x"]),
        ("x ", ["x"]),
        ('"a,b', ['"a,b']),
        ('a,b"', ["a", 'b"']),
        ("'s'", ["s"]),
        ("a\\,b", ["a\\,b"]),
        ('a\\",b', ['a\\"', "b"]),
        ("broadcast\0x", ["broadcast"]),
    ],
)
def test_app_names_split_as_ast_strsep(value: str, names: list[str]) -> None:
    assert split_app_names(value) == names


def test_the_first_app_parameter_registers_whatever_its_case() -> None:
    assert registered_apps([("App", "q"), ("app", "r")]) == ["q"]
    assert registered_apps([("api_key", "u:p")]) == []
