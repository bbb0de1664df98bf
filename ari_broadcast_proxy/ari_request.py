"""How Asterisk reads an ARI request: path segments, query and form parameters, and the
application names of an events socket.

The proxy decides what a request is about (which channel, which application, which
variable) and forwards the request's own bytes, so both must read it the same way. These
are ports of what Asterisk does, checked against the real one in the tests:

- the path is split on ``/`` and the walk stops at the first empty segment; each segment is
  then decoded on its own (``ast_ari_invoke``), so ``%2F`` stays inside its segment; a
  path ending in ``/`` is refused before that;
- a segment, a query name or a value is decoded by ``ast_uri_decode`` with the legacy flag
  (``+`` is a space) and read as a C string, so it ends at the first NUL;
- ``ast_uri_decode`` reads an escape with ``sscanf("%2x")``, which also takes signs, spaces
  and ``0x``: any ``%`` not followed by two hex digits cannot be read safely and is refused;
- the events socket takes the first ``app`` parameter (name compared without case) and splits
  it with ``ast_strsep(',', STRIP | TRIM)``: quotes group and are stripped, a backslash
  protects the next character, blanks around a name are trimmed (not inside its quotes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from .errors import BadRequest

__all__ = [
    "BODY_PARSE_ERROR",
    "MALFORMED_ESCAPE",
    "AriAnswer",
    "AriCall",
    "app_parameter_values",
    "c_string",
    "decode_component",
    "parse_query",
    "path_segments",
    "registered_apps",
    "split_app_names",
]

MALFORMED_ESCAPE = "Malformed percent-encoding"
BODY_PARSE_ERROR = "Error parsing request body"  # Asterisk's, for a JSON body it cannot read
_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_C_SPACE = " \t\n\v\f\r"
_QUOTES = "'\""
_QUOTE_DEPTH = 8  # ast_strsep's quote stack: deeper nesting ends the list


def c_string(text: str) -> str:
    """`text` as C reads it: up to the first NUL."""
    nul = text.find("\0")
    return text if nul < 0 else text[:nul]


def decode_component(raw: bytes | str) -> str:
    """One path segment, query name or value as ``ast_uri_decode(legacy)`` leaves it and C
    reads it. BadRequest for an escape Asterisk would read by sscanf's looser rules."""
    data = raw.encode("latin-1") if isinstance(raw, str) else raw
    data = data.replace(b"+", b" ")  # before the escapes: %2B stays a +
    if b"%" in data:
        if _ESCAPE.search(data):
            raise BadRequest(MALFORMED_ESCAPE)
        data = _unescape(data)
    return c_string(data.decode("utf-8", "surrogateescape"))


def _unescape(data: bytes) -> bytes:
    parts = data.split(b"%")
    out = bytearray(parts[0])
    for part in parts[1:]:
        out.append(int(part[:2], 16))
        out += part[2:]
    return bytes(out)


def path_segments(raw_path: bytes | str) -> tuple[str, ...]:
    """The decoded segments Asterisk routes on: split first, stop at the first empty one
    (``channels//x`` is ``channels``), then decode each. A path ending in ``/`` routes
    nowhere: Asterisk answers 404 ("ARI URLs do not end with a slash") before routing."""
    data = raw_path.encode("latin-1") if isinstance(raw_path, str) else raw_path
    if data.endswith(b"/"):
        return ()
    segments = []
    for raw in data.split(b"/"):
        if not raw:
            break
        segments.append(decode_component(raw))
    return tuple(segments)


def parse_query(raw: bytes | str) -> list[tuple[str, str]]:
    """A query string or form body as Asterisk reads it: ``&``-separated, the first ``=``
    splits, both sides decoded; a parameter without ``=`` has the empty value."""
    data = raw.encode("latin-1") if isinstance(raw, str) else raw
    params = []
    for item in data.split(b"&"):
        if not item:
            continue
        name, _, value = item.partition(b"=")
        params.append((decode_component(name), decode_component(value)))
    return params


def app_parameter_values(query: Iterable[tuple[str, str]]) -> list[str]:
    """Every ``app`` parameter's value (Asterisk compares the name without case)."""
    return [value for name, value in query if name.lower() == "app"]


def registered_apps(query: Iterable[tuple[str, str]]) -> list[str]:
    """The applications an events socket with this (decoded) query registers: the first
    ``app`` parameter's names."""
    values = app_parameter_values(query)
    return split_app_names(values[0]) if values else []


def split_app_names(value: str) -> list[str]:
    """``ast_strsep(&value, ',', AST_STRSEP_STRIP | AST_STRSEP_TRIM)`` until it ends."""
    names: list[str] = []
    rest: str | None = c_string(value)
    while rest:
        token, rest, complete = _strsep(rest)
        if not complete:
            break
        names.append(_strip_quoted(_trim(token)))
    return names


def _strsep(text: str) -> tuple[str, str | None, bool]:
    """One token, the rest (None at the end) and False when the quote stack overflowed."""
    stack: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 1
            if i >= len(text):
                break
            i += 1  # the escaped character is skipped; the one after it is read below
            if i >= len(text):
                break
            char = text[i]
        if char in _QUOTES:
            if stack and stack[-1] == char:
                stack.pop()
            else:
                stack.append(char)
                if len(stack) >= _QUOTE_DEPTH:
                    return text, None, False
        if char == "," and not stack:
            return text[:i], text[i + 1 :], True
        i += 1
    return text, None, True


def _strip_quoted(token: str) -> str:
    """``ast_strip_quoted(token, "'\\"", "'\\"")``: trims, then drops one matching pair."""
    token = token.strip(_C_SPACE)
    if len(token) >= 2 and token[0] in _QUOTES and token[-1] == token[0]:
        return token[1:-1]
    if len(token) == 1 and token in _QUOTES:
        return ""
    return token


def _trim(token: str) -> str:
    trimmed = token.strip(_C_SPACE)
    return trimmed or token


@dataclass(frozen=True)
class AriCall:
    """A client's ARI request as Asterisk reads it."""

    method: str
    segments: tuple[str, ...]
    params: tuple[tuple[str, str], ...] = ()  # form body first, then query: Asterisk's order
    json_body: Any = None
    body_error: str | None = None  # Asterisk's message for a body it cannot parse

    @classmethod
    def read(
        cls,
        method: str,
        segments: tuple[str, ...],
        query: list[tuple[str, str]],
        body: bytes,
        content_type: str,
    ) -> AriCall:
        """A request as Asterisk reads it: form parameters before the query's, and the JSON
        body (BadRequest for an escape Asterisk would read its own way). `content_type`:
        the media type alone, lower case."""
        params, json_body, body_error = query, None, None
        if content_type == "application/x-www-form-urlencoded":
            params = parse_query(body) + query
        elif content_type == "application/json" and body.strip():
            try:
                json_body = orjson.loads(body)
            except orjson.JSONDecodeError:
                body_error = BODY_PARSE_ERROR
        return cls(method.upper(), segments, tuple(params), json_body, body_error)

    @property
    def path(self) -> str:
        return "/".join(self.segments)

    def values(self, name: str) -> list[str]:
        """Every value given for parameter `name`, in the query, form or JSON body."""
        found = [value for key, value in self.params if key == name]
        if isinstance(self.json_body, dict) and name in self.json_body:
            value = self.json_body[name]
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str):
                    found.append(c_string(item))
        return found

    def variable_names(self) -> Iterator[str]:
        """Every variable name the request reads or writes."""
        yield from self.values("variable")
        for listed in self.values("variables"):  # a list of names (read) or of name=value
            yield from (item.partition("=")[0] for item in listed.split(","))
        variables = self.json_body.get("variables") if isinstance(self.json_body, dict) else None
        if isinstance(variables, dict):
            yield from (c_string(str(name)) for name in variables)


@dataclass(frozen=True)
class AriAnswer:
    """An answer the proxy gives itself, in Asterisk's shape (a JSON body, or none)."""

    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
