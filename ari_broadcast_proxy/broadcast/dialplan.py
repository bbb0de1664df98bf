"""Native ``StasisBroadcast(timeout,app_filter,args,notify_claimed)`` argument parsing.

A proxy sees the raw application data (``channel.dialplan.app_data``) and has to read it exactly
as ``app_stasis_broadcast.c`` does, quirks included, so that a dialplan written for native
behaves the same behind the proxy. Everything here is a port of the Asterisk C code:
``__ast_app_separate_args`` (main/app.c), ``ast_true`` (main/utils.c), glibc's
``sscanf("%d")`` and the ``strsep(":")`` loop of ``stasis_broadcast_exec``.

Warnings are returned as the text native logs after its ``"Channel <name>: "`` prefix; the caller
adds the prefix because only it knows the channel.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_TIMEOUT_MS",
    "MAX_STASIS_ARGS",
    "MAX_TIMEOUT_MS",
    "BroadcastOptions",
    "ast_true",
    "parse_broadcast_data",
    "parse_timeout",
    "separate_args",
    "split_app_args",
]

DEFAULT_TIMEOUT_MS: Final = 500
"""``DEFAULT_TIMEOUT_MS`` in app_stasis_broadcast.c."""
MAX_TIMEOUT_MS: Final = 60000
"""``MAX_TIMEOUT_MS`` in app_stasis_broadcast.c (inclusive)."""
MAX_STASIS_ARGS: Final = 128
"""``MAX_STASIS_ARGS`` in app_stasis_broadcast.c: colon-separated args past this are dropped."""

_BROADCAST_FIELDS: Final = 4
_NUL: Final = "\0"
# C-locale isspace(), which is what sscanf skips before a %d conversion.
_C_SPACE: Final = frozenset(" \t\n\v\f\r")
_ASCII_DIGITS: Final = frozenset("0123456789")
_TRUE_WORDS: Final = frozenset({"yes", "true", "y", "t", "1", "on"})
_LONG_MIN: Final = -(2**63)
_LONG_MAX: Final = 2**63 - 1


def separate_args(
    data: str, max_args: int, delim: str = ",", *, remove_chars: bool = True
) -> list[str]:
    """Split ``data`` exactly as ``__ast_app_separate_args(buf, delim, remove_chars, argv, max)``.

    ``AST_STANDARD_APP_ARGS`` is this with ``remove_chars`` on. Only the first ``max_args - 1``
    delimiters split; the rest of the string becomes the last argument *unscanned* (its quotes and
    backslashes survive). A delimiter inside ``()``, ``[]`` or double quotes does not split, and
    those depth counters carry over from one argument to the next. With ``remove_chars`` a double
    quote is dropped and a backslash is dropped while the character after it is kept literally.
    Nothing is trimmed. ``""`` gives ``[]``; a trailing delimiter gives a trailing ``""``.
    """
    if len(delim) != 1:
        raise ValueError("delim must be a single character")
    if max_args < 0:
        raise ValueError("max_args must not be negative")
    if max_args == 0:
        return []
    # A NUL-terminated C buffer. The extra NUL mirrors the byte past the terminator that the C
    # code steps onto after deleting a trailing backslash.
    buf = [*data.split(_NUL, 1)[0], _NUL, _NUL]
    starts: list[int] = []
    scan = 0
    wasdelim = -1
    paren = bracket = 0
    quote = False
    argc = 0
    while buf[scan] != _NUL and argc < max_args - 1:
        starts.append(scan)
        while buf[scan] != _NUL:
            ch = buf[scan]
            if ch == "(":
                paren += 1
            elif ch == ")":
                paren = max(paren - 1, 0)
            elif ch == "[":
                bracket += 1
            elif ch == "]":
                bracket = max(bracket - 1, 0)
            elif ch == '"' and delim != '"':
                quote = not quote
                if remove_chars:
                    _memmove_left(buf, scan)
                    scan -= 1
            elif ch == "\\":
                if remove_chars:
                    _memmove_left(buf, scan)  # the escaped character is now at scan: skip it
                else:
                    scan += 1
            elif ch == delim and not paren and not quote and not bracket:
                wasdelim = scan
                buf[scan] = _NUL
                scan += 1
                break
            scan += 1
        argc += 1
    if buf[scan] != _NUL or (scan > 0 and scan - 1 == wasdelim):
        starts.append(scan)
    return [_c_string(buf, start) for start in starts]


def _memmove_left(buf: list[str], at: int) -> None:
    """``memmove(s, s + 1, strlen(s))``: delete ``buf[at]``, leaving the old terminator in place."""
    end = buf.index(_NUL, at)
    buf[at:end] = buf[at + 1 : end + 1]


def _c_string(buf: list[str], start: int) -> str:
    return "".join(buf[start : buf.index(_NUL, start)])


def parse_timeout(text: str) -> tuple[int, str | None]:
    """Read the ``timeout`` field as native does: ``sscanf(text, "%d")``, then range-check.

    Returns ``(timeout_ms, warning)``. Empty text is the default with no warning. Leading C
    whitespace and a sign are accepted and trailing garbage is ignored (``"100ms"`` is 100). As
    in glibc, an out-of-range number saturates to a C ``long`` and is then truncated to ``int``,
    so ``"4294967396"`` reads as 100. Anything unparsable, negative or above 60000 gives the
    default with native's warning (the default is used, nothing is clamped).
    """
    if not text:
        return DEFAULT_TIMEOUT_MS, None
    value = _scan_int(text)
    if value is None or not 0 <= value <= MAX_TIMEOUT_MS:
        return DEFAULT_TIMEOUT_MS, (
            f"invalid timeout value '{text}' (must be 0-{MAX_TIMEOUT_MS}ms), "
            f"using default {DEFAULT_TIMEOUT_MS}ms"
        )
    return value, None


def _scan_int(text: str) -> int | None:
    """glibc ``sscanf("%d")`` on x86_64: None when nothing converts, else the stored ``int``."""
    i, n = 0, len(text)
    while i < n and text[i] in _C_SPACE:
        i += 1
    negative = i < n and text[i] == "-"
    if i < n and text[i] in "+-":
        i += 1
    start = i
    while i < n and text[i] in _ASCII_DIGITS:
        i += 1
    if i == start:
        return None
    value = -int(text[start:i]) if negative else int(text[start:i])
    value = min(max(value, _LONG_MIN), _LONG_MAX)  # strtol saturates on overflow
    return (value + 2**31) % 2**32 - 2**31  # then vfscanf stores (int) of the long


def ast_true(text: str) -> bool:
    """Asterisk's ``ast_true``: an exact, ASCII case-insensitive match of a "true" word.

    The words are ``yes``, ``true``, ``y``, ``t``, ``1`` and ``on``. Nothing is trimmed, so
    ``" yes"`` and ``"yes,extra"`` are false.
    """
    return text.isascii() and text.lower() in _TRUE_WORDS


def split_app_args(text: str) -> list[str]:
    """Split the ``args`` field on ``:`` like native's ``strsep`` loop.

    Empty tokens are kept (``"a::c"`` gives ``["a", "", "c"]``), empty text gives ``[]`` and
    anything past 128 arguments is silently dropped.
    """
    if not text:
        return []
    return text.split(":", MAX_STASIS_ARGS)[:MAX_STASIS_ARGS]


@dataclass(frozen=True, slots=True)
class BroadcastOptions:
    """The four ``StasisBroadcast`` fields after native's parsing.

    ``app_filter`` is ``""`` when there is none; ``warnings`` holds native's log lines (without
    the ``"Channel <name>: "`` prefix) in the order native logs them.
    """

    timeout_ms: int = DEFAULT_TIMEOUT_MS
    app_filter: str = ""
    args: tuple[str, ...] = ()
    notify_claimed: bool = False
    warnings: tuple[str, ...] = ()


@functools.lru_cache(maxsize=1024)
def parse_broadcast_data(raw: str) -> BroadcastOptions:
    """Parse raw ``StasisBroadcast`` application data as ``stasis_broadcast_exec`` does
    (remembered: a dialplan repeats the same few, and the result is immutable).

    ``raw`` is the data after variable substitution (``channel.dialplan.app_data``). The four
    fields are split with :func:`separate_args` (so the filter loses its quotes and backslashes,
    while ``notify_claimed``, when reached past the third comma, keeps them).
    """
    if not raw:
        return BroadcastOptions()
    fields = separate_args(raw, _BROADCAST_FIELDS)
    fields += [""] * (_BROADCAST_FIELDS - len(fields))
    timeout_text, app_filter, stasis_args, notify_claimed = fields
    timeout_ms, warning = parse_timeout(timeout_text)
    return BroadcastOptions(
        timeout_ms=timeout_ms,
        app_filter=app_filter,
        args=tuple(split_app_args(stasis_args)),
        notify_claimed=ast_true(notify_claimed),
        warnings=() if warning is None else (warning,),
    )
