"""StasisBroadcast argument parsing, checked against native's rules (and glibc's sscanf)."""

from __future__ import annotations

import ctypes
import dataclasses
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ari_broadcast_proxy.broadcast.dialplan import (
    DEFAULT_TIMEOUT_MS,
    MAX_STASIS_ARGS,
    BroadcastOptions,
    ast_true,
    parse_broadcast_data,
    parse_timeout,
    separate_args,
    split_app_args,
)


def bad_timeout(text: str) -> tuple[int, str]:
    return 500, f"invalid timeout value '{text}' (must be 0-60000ms), using default 500ms"


# --- separate_args: __ast_app_separate_args(buf, ',', remove_chars=1, argv, 4) ----------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # AST_STANDARD_APP_ARGS on "" gives argc 0; a trailing delimiter adds an empty argument.
        ("", []),
        ("a", ["a"]),
        ("a,", ["a", ""]),
        (",", ["", ""]),
        (",,,", ["", "", "", ""]),
        ("a,b,c,d", ["a", "b", "c", "d"]),
        # Only the first three commas split; the rest is the last argument, verbatim.
        ("1,2,3,4,5", ["1", "2", "3", "4,5"]),
        (",,,,", ["", "", "", ","]),
        ('1,2,3,"4",\\5', ["1", "2", "3", '"4",\\5']),
        # Commas inside (), [] or "" do not split; quotes are removed, parens and brackets kept.
        ("a,(b,c),d", ["a", "(b,c)", "d"]),
        ("a,[b,c],d", ["a", "[b,c]", "d"]),
        ('a,"b,c",d', ["a", "b,c", "d"]),
        ('"a"', ["a"]),
        ('""', [""]),
        ('x"y,z"w,v', ["xy,zw", "v"]),
        # The depth counters carry over from one argument to the next.
        ("(,x,y", ["(,x,y"]),
        ("a(,b),c", ["a(,b)", "c"]),
        ("a,[,b", ["a", "[,b"]),
        (")a,b", [")a", "b"]),
        ("a)(,b", ["a)(,b"]),
        ("]a,b", ["]a", "b"]),
        # A backslash is dropped and the next character is kept literally.
        ("x\\,y,z", ["x,y", "z"]),
        ('\\"a,b', ['"a', "b"]),
        ("\\(a,b", ["(a", "b"]),
        ("a\\\\,b", ["a\\", "b"]),
        ("^ivr\\.main", ["^ivr.main"]),
        ("a\\", ["a"]),
        ("a,\\", ["a", ""]),
        # Nothing is trimmed.
        (" a , b ", [" a ", " b "]),
    ],
)
def test_separate_args_like_ast_standard_app_args(data: str, expected: list[str]) -> None:
    assert separate_args(data, 4) == expected


@pytest.mark.parametrize(
    ("data", "max_args", "kwargs", "expected"),
    [
        ("a,b", 0, {}, []),
        ("a,b", 1, {}, ["a,b"]),
        ("a,b,c", 2, {}, ["a", "b,c"]),
        ("a,,c", 128, {}, ["a", "", "c"]),
        ("a:b:c", 2, {"delim": ":"}, ["a", "b:c"]),
        ('a"b"c', 4, {"delim": '"'}, ["a", "b", "c"]),
        ("a\\,b,c", 4, {"remove_chars": False}, ["a\\,b", "c"]),
        ('"a,b",c', 4, {"remove_chars": False}, ['"a,b"', "c"]),
        ("a\0,b", 4, {}, ["a"]),
    ],
)
def test_separate_args_options(
    data: str, max_args: int, kwargs: dict[str, object], expected: list[str]
) -> None:
    assert separate_args(data, max_args, **kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("max_args", "delim"), [(-1, ","), (4, ""), (4, ",,")])
def test_separate_args_rejects_nonsense(max_args: int, delim: str) -> None:
    with pytest.raises(ValueError):
        separate_args("a", max_args, delim)


# --- parse_timeout: sscanf("%d") then 0..60000 ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", (500, None)),
        ("0", (0, None)),
        ("100", (100, None)),
        ("60000", (60000, None)),
        ("00060000", (60000, None)),
        ("100ms", (100, None)),
        (" 100", (100, None)),
        ("\t\n\v\f\r 7", (7, None)),
        ("+5", (5, None)),
        ("-0", (0, None)),
        ("0x10", (0, None)),
        ("1e3", (1, None)),
        ("100 ", (100, None)),
        # glibc saturates to a long and stores (int) of it.
        ("4294967396", (100, None)),
        ("-99999999999999999999", (0, None)),
        ("abc", bad_timeout("abc")),
        ("-1", bad_timeout("-1")),
        ("60001", bad_timeout("60001")),
        ("70000", bad_timeout("70000")),
        (" ", bad_timeout(" ")),
        ("+", bad_timeout("+")),
        ("- 5", bad_timeout("- 5")),
        ("+-5", bad_timeout("+-5")),
        ("ms100", bad_timeout("ms100")),
        ("2147483648", bad_timeout("2147483648")),
        ("99999999999999999999", bad_timeout("99999999999999999999")),
        ("\u0665", bad_timeout("\u0665")),
        ("\u00a05", bad_timeout("\u00a05")),
    ],
)
def test_parse_timeout(text: str, expected: tuple[int, str | None]) -> None:
    assert parse_timeout(text) == expected


_LIBC = ctypes.CDLL(None)
_LIBC.newlocale.restype = ctypes.c_void_p
_LIBC.newlocale.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p]
_LIBC.uselocale.restype = ctypes.c_void_p
_LIBC.uselocale.argtypes = [ctypes.c_void_p]
_LIBC.freelocale.argtypes = [ctypes.c_void_p]
_LC_ALL_MASK = 0x1FBF


@pytest.fixture(scope="module")
def c_locale() -> Iterator[int]:
    locale = _LIBC.newlocale(_LC_ALL_MASK, b"C", None)
    assert locale
    yield locale
    _LIBC.freelocale(locale)


def glibc_timeout(text: str, locale: int) -> tuple[int, bool]:
    """What stasis_broadcast_exec computes, with glibc's own sscanf (in the C locale)."""
    if not text:
        return DEFAULT_TIMEOUT_MS, False
    value = ctypes.c_int(0)
    old = _LIBC.uselocale(locale)
    try:
        converted = _LIBC.sscanf(text.encode(), b"%d", ctypes.byref(value))
    finally:
        _LIBC.uselocale(old)
    if converted != 1 or not 0 <= value.value <= 60000:
        return DEFAULT_TIMEOUT_MS, True
    return value.value, False


_TIMEOUT_TEXT = st.one_of(
    st.text(alphabet=" \t\v+-0123456789xms\u00e9", max_size=12),
    st.integers(-(2**70), 2**70).map(str),
    st.builds(
        "{}{}{}".format,
        st.sampled_from(["", " ", "+", "-", "\t-"]),
        st.integers(0, 2**66),
        st.sampled_from(["", "ms", " ", "x1"]),
    ),
)


@settings(max_examples=300, database=None, derandomize=True, deadline=None)
@given(text=_TIMEOUT_TEXT)
def test_parse_timeout_matches_glibc_sscanf(text: str, c_locale: int) -> None:
    timeout_ms, warning = parse_timeout(text)
    assert (timeout_ms, warning is not None) == glibc_timeout(text, c_locale)


# --- ast_true and the colon-split args --------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["yes", "YES", "Yes", "true", "TRUE", "y", "Y", "t", "T", "1", "on", "ON", "oN"]
)
def test_ast_true_words(text: str) -> None:
    assert ast_true(text)


@pytest.mark.parametrize(
    "text",
    ["", "no", "0", "2", "off", "enabled", " yes", "yes ", "yes,extra", '"yes"', "ye", "yess",
     "\u0131", "onn"],
)  # fmt: skip
def test_ast_true_rejects_everything_else(text: str) -> None:
    assert not ast_true(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("a", ["a"]),
        ("a:b:c", ["a", "b", "c"]),
        ("a::c", ["a", "", "c"]),
        ("a::b", ["a", "", "b"]),
        ("a:", ["a", ""]),
        (":", ["", ""]),
        ("queue-a:priority-high", ["queue-a", "priority-high"]),
        ("a,b:c", ["a,b", "c"]),
    ],
)
def test_split_app_args(text: str, expected: list[str]) -> None:
    assert split_app_args(text) == expected


def test_split_app_args_keeps_at_most_128() -> None:
    many = ":".join(str(i) for i in range(200))
    assert split_app_args(many) == [str(i) for i in range(MAX_STASIS_ARGS)]
    assert split_app_args(":" * 127) == [""] * 128
    assert split_app_args(":" * 128) == [""] * 128


# --- parse_broadcast_data: the four fields together --------------------------------------------


def opts(**changes: object) -> BroadcastOptions:
    return dataclasses.replace(BroadcastOptions(), **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # 1. All optional, positional.
        ("", opts()),
        (",,,", opts()),
        ("5000", opts(timeout_ms=5000)),
        ("5000,^ivr-.*", opts(timeout_ms=5000, app_filter="^ivr-.*")),
        ("2000,^ivr-.*,sales:priority-high", opts(
            timeout_ms=2000, app_filter="^ivr-.*", args=("sales", "priority-high"))),
        (",,queue-a:priority-high", opts(args=("queue-a", "priority-high"))),
        ("500,^agent_.*,,yes", opts(app_filter="^agent_.*", notify_claimed=True)),
        # 1. Quotes and backslashes are removed from the first three fields, not the fourth.
        ('2000,"^a,b$"', opts(timeout_ms=2000, app_filter="^a,b$")),
        ("2000,^ivr\\.main", opts(timeout_ms=2000, app_filter="^ivr.main")),
        ("2000,a\\,b", opts(timeout_ms=2000, app_filter="a,b")),
        ("2000,[,]", opts(timeout_ms=2000, app_filter="[,]")),
        ("2000,(sales,support)", opts(timeout_ms=2000, app_filter="(sales,support)")),
        ('0,,"a:b"', opts(timeout_ms=0, args=("a", "b"))),
        (',,,"yes"', opts()),
        (",,,y\\es", opts()),
        # 1. Nothing is trimmed; 5. the docs' own ",,, yes" example does not enable CallClaimed.
        (",,, yes", opts()),
        (",,,yes ", opts()),
        (",,,yes,extra", opts()),
        (",,,YES", opts(notify_claimed=True)),
        (",,,On", opts(notify_claimed=True)),
        (",,,1", opts(notify_claimed=True)),
        (",,,no", opts()),
        # 2. sscanf("%d") and the 0..60000 range; B18.
        ("100ms", opts(timeout_ms=100)),
        (" 100", opts(timeout_ms=100)),
        ("0", opts(timeout_ms=0)),
        ("60000", opts(timeout_ms=60000)),
        ("abc", opts(warnings=(bad_timeout("abc")[1],))),
        ("-1", opts(warnings=(bad_timeout("-1")[1],))),
        ("60001", opts(warnings=(bad_timeout("60001")[1],))),
        ("70000,x", opts(app_filter="x", warnings=(bad_timeout("70000")[1],))),
        # 4. Colon-split args with empty tokens kept; B19.
        (",,a::b", opts(args=("a", "", "b"))),
        (",,a:", opts(args=("a", ""))),
        (",,:", opts(args=("", ""))),
        # 3. A comma inside a group keeps splitting off; an unbalanced "(" swallows the rest.
        ("1000,(a,,b:c,yes", opts(timeout_ms=1000, app_filter="(a,,b:c,yes")),
    ],
)  # fmt: skip
def test_parse_broadcast_data(raw: str, expected: BroadcastOptions) -> None:
    assert parse_broadcast_data(raw) == expected


def test_parse_broadcast_data_caps_args_at_128() -> None:
    raw = ",," + ":".join(f"a{i}" for i in range(300))
    assert parse_broadcast_data(raw).args == tuple(f"a{i}" for i in range(128))


def test_broadcast_options_are_frozen() -> None:
    options = parse_broadcast_data("100")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.timeout_ms = 5  # type: ignore[misc]
