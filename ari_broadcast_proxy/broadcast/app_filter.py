"""The StasisBroadcast ``app_filter``: native's safety check and glibc's POSIX ERE semantics.

Native (res_stasis_broadcast.c) first runs a heuristic ReDoS check, ``validate_regex_pattern``,
then ``regcomp(REG_EXTENDED | REG_NOSUB)`` from glibc, and matches application names with an
unanchored, case-sensitive ``regexec``. When either step refuses the pattern it logs two warnings
and offers the call to *every* application. This module reproduces the three pieces:

* :func:`validate_pattern`, a line-by-line port of ``validate_regex_pattern``;
* :func:`translate` / :class:`Ere`, a port of glibc's ERE parser (posix/regcomp.c) that either
  fails with the ``REG_*`` code glibc would return or yields an equivalent pattern for the
  third-party ``regex`` engine. Matching is done on UTF-8 bytes with C-locale character classes
  (``.`` is one byte, ``[[:alpha:]]`` and ``\\w`` are ASCII), which assumes Asterisk runs in the
  C locale, i.e. never calls ``setlocale(LC_ALL, "")``;
* :class:`AppFilter`, the native policy around them. Matching is glibc's own ``regexec`` where
  the process has glibc (glibc_regex.py), else the port's, with a match timeout and a budget
  per broadcast so that a pathological pattern cannot stall the proxy; verdicts are
  remembered per (pattern, application).

Known differences from glibc: back-references follow the backtracking engine, while glibc's
matcher has bugs there (``(b*){2}x\\1`` never matches, ``($)*\\1d`` matches ``"d"``, and some
repeated back-references crash it). glibc may also run out of memory (``REG_ESPACE``) expanding a
huge ``{,n}`` that native's validator lets through (``a{,32767}``); here it compiles. And a
backtracking search can be exponential where glibc's is not (``^(a|aa)*$``), hence the timeout.
"""

from __future__ import annotations

import enum
import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, NamedTuple

import regex

from .glibc_regex import GlibcRegex

__all__ = [
    "DEFAULT_MATCH_TIMEOUT",
    "MATCH_BUDGET",
    "AppFilter",
    "Ere",
    "EreError",
    "FilterState",
    "RegError",
    "translate",
    "validate_pattern",
]

DEFAULT_MATCH_TIMEOUT: Final = 0.05
"""Seconds one filter match may take before it counts as "no match" (the port only)."""
MATCH_BUDGET: Final = 0.1
"""Seconds of matching one broadcast may spend on all applications (the port only)."""
_VERDICTS_KEPT: Final = 4096  # application names remembered per filter

# --- validate_regex_pattern (res_stasis_broadcast.c) ------------------------------------------

_MAX_REGEX_LENGTH: Final = 256
_MAX_GROUP_DEPTH: Final = 10
_MAX_NESTED_QUANTIFIERS: Final = 3
_MAX_QUANTIFIER_BOUND: Final = 100
_MAX_ALTERNATIONS: Final = 20
_ALTERNATION_DEPTH_THRESHOLD: Final = 2

_BACKSLASH: Final = ord("\\")
_LBRACKET: Final = ord("[")
_RBRACKET: Final = ord("]")
_CARET: Final = ord("^")
_LPAREN: Final = ord("(")
_RPAREN: Final = ord(")")
_LBRACE: Final = ord("{")
_RBRACE: Final = ord("}")
_COMMA: Final = ord(",")
_PIPE: Final = ord("|")
_DIGITS: Final = range(ord("0"), ord("9") + 1)
_QUANTIFIERS: Final = frozenset(b"+*?")


def _c_bytes(text: str) -> bytes:
    """The bytes a C string holding ``text`` would have (UTF-8, cut at the first NUL)."""
    return text.encode("utf-8", "surrogatepass").split(b"\0", 1)[0]


def validate_pattern(pattern: str) -> str | None:
    """Native's ``validate_regex_pattern``: None if accepted, else why it is rejected.

    The reasons are native's own (debug-level) messages. The scan works on the pattern's bytes
    and skips ``[...]`` (a ``]`` right after ``[`` or ``[^`` is literal, a backslash escapes the
    next byte even there) and every backslash-escaped byte. A group counts as quantified when
    the byte before ``+``, ``*``, ``?`` or a well-formed ``{m}``/``{m,}``/``{m,n}`` is ``)``;
    any digit run after ``{`` that exceeds 100 is rejected, well-formed or not.
    """
    data = _c_bytes(pattern)
    if not data:
        return None
    if len(data) > _MAX_REGEX_LENGTH:
        return (
            f"Regex pattern exceeds maximum length of {_MAX_REGEX_LENGTH} characters "
            f"(got {len(data)})"
        )
    return _scan_heuristics(data)


def _scan_heuristics(data: bytes) -> str | None:
    """The nesting, quantifier and alternation checks of ``validate_regex_pattern``."""

    def at(i: int) -> int:
        return data[i] if i < len(data) else 0

    group_depth = 0
    quantified_groups = 0
    in_class = False
    alternations = [0] * (_MAX_GROUP_DEPTH + 1)
    p = 0
    while p < len(data):
        c = data[p]
        if not in_class and c == _LBRACKET and (p == 0 or data[p - 1] != _BACKSLASH):
            in_class = True
            if at(p + 1) == _CARET:
                p += 1
            if at(p + 1) == _RBRACKET:
                p += 1
        elif in_class:
            if c == _BACKSLASH:
                if at(p + 1):
                    p += 1
            elif c == _RBRACKET:
                in_class = False
        elif c == _LPAREN:
            group_depth += 1
            if group_depth > _MAX_GROUP_DEPTH:
                return f"Regex pattern has too many nested groups (max {_MAX_GROUP_DEPTH})"
            alternations[group_depth] = 0
        elif c == _RPAREN:
            if group_depth > 0:
                alternations[group_depth] = 0
                group_depth -= 1
        elif c in _QUANTIFIERS:
            if p > 0 and data[p - 1] == _RPAREN:
                quantified_groups += 1
        elif c == _LBRACE:
            bound = _scan_brace_bound(data, p)
            if bound == _OVERFLOW:
                return (
                    f"Regex quantifier overflow or exceeds max bound (max {_MAX_QUANTIFIER_BOUND})"
                )
            if bound is not None:
                if p > 0 and data[p - 1] == _RPAREN:
                    quantified_groups += 1
                p = bound  # the closing brace
        elif c == _PIPE:
            if group_depth > 0:
                alternations[group_depth] += 1
                count = alternations[group_depth]
                if group_depth > _ALTERNATION_DEPTH_THRESHOLD and count > _MAX_ALTERNATIONS:
                    return (
                        "Regex has too many alternations in deep group "
                        f"(depth {group_depth}, count {count}, max {_MAX_ALTERNATIONS})"
                    )
        elif c == _BACKSLASH and at(p + 1):
            p += 1
        p += 1

    if quantified_groups > _MAX_NESTED_QUANTIFIERS:
        return f"Regex pattern has too many quantified groups (max {_MAX_NESTED_QUANTIFIERS})"
    return None


_OVERFLOW: Final = -1


def _scan_brace_bound(data: bytes, p: int) -> int | None:
    """Native's ``{m}``/``{m,}``/``{m,n}`` scan at ``data[p] == '{'``.

    Returns the index of the closing ``}`` of a well-formed bound, None when the brace is not
    one (it is then an ordinary byte to the validator), or ``_OVERFLOW`` when a number goes
    past 100. The C code's second "bounds too large" check can never fire after this one.
    """
    n = len(data)
    q = p + 1
    if q >= n or data[q] not in _DIGITS:
        return None
    for with_comma in (False, True):
        if with_comma:
            if q >= n or data[q] != _COMMA:
                break
            q += 1
        value = 0
        while q < n and data[q] in _DIGITS:
            value = value * 10 + data[q] - ord("0")
            if value > _MAX_QUANTIFIER_BOUND:
                return _OVERFLOW
            q += 1
    return q if q < n and data[q] == _RBRACE else None


# --- glibc regcomp(REG_EXTENDED) --------------------------------------------------------------


class RegError(enum.IntEnum):
    """glibc's ``reg_errcode_t`` values that ``regcomp`` can return."""

    REG_BADPAT = 2
    REG_ECOLLATE = 3
    REG_ECTYPE = 4
    REG_EESCAPE = 5
    REG_ESUBREG = 6
    REG_EBRACK = 7
    REG_EPAREN = 8
    REG_EBRACE = 9
    REG_BADBR = 10
    REG_ERANGE = 11
    REG_ESPACE = 12
    REG_BADRPT = 13
    REG_ESIZE = 15


class EreError(ValueError):
    """glibc ``regcomp(REG_EXTENDED)`` would refuse the pattern with :attr:`code`."""

    def __init__(self, code: RegError) -> None:
        super().__init__(code.name)
        self.code = code


class _T(enum.Enum):
    """glibc token types (``re_token_type_t``) used by the ERE parser."""

    CHARACTER = enum.auto()
    END_OF_RE = enum.auto()
    BACK_SLASH = enum.auto()
    OP_ALT = enum.auto()
    OP_DUP_ASTERISK = enum.auto()
    OP_DUP_PLUS = enum.auto()
    OP_DUP_QUESTION = enum.auto()
    OP_OPEN_DUP_NUM = enum.auto()
    OP_CLOSE_DUP_NUM = enum.auto()
    OP_OPEN_SUBEXP = enum.auto()
    OP_CLOSE_SUBEXP = enum.auto()
    OP_OPEN_BRACKET = enum.auto()
    OP_PERIOD = enum.auto()
    ANCHOR = enum.auto()
    OP_BACK_REF = enum.auto()
    OP_WORD = enum.auto()
    OP_NOTWORD = enum.auto()
    OP_SPACE = enum.auto()
    OP_NOTSPACE = enum.auto()
    # Inside a bracket expression.
    OP_CLOSE_BRACKET = enum.auto()
    OP_CHARSET_RANGE = enum.auto()
    OP_NON_MATCH_LIST = enum.auto()
    OP_OPEN_COLL_ELEM = enum.auto()
    OP_OPEN_EQUIV_CLASS = enum.auto()
    OP_OPEN_CHAR_CLASS = enum.auto()


class _Anchor(enum.Enum):
    """glibc anchor contexts (``re_context_type``)."""

    LINE_FIRST = "^"
    LINE_LAST = "$"
    BUF_FIRST = "\\`"
    BUF_LAST = "\\'"
    WORD_FIRST = "\\<"
    WORD_LAST = "\\>"
    WORD_DELIM = "\\b"
    NOT_WORD_DELIM = "\\B"


class _Token(NamedTuple):
    kind: _T
    c: int = 0  # the byte (the escaped byte for a backslash pair)
    anchor: _Anchor | None = None
    backref: int = 0  # 1-9


# peek_token() under RE_SYNTAX_POSIX_EXTENDED.
_PLAIN: Final = {
    ord("|"): _T.OP_ALT,
    ord("*"): _T.OP_DUP_ASTERISK,
    ord("+"): _T.OP_DUP_PLUS,
    ord("?"): _T.OP_DUP_QUESTION,
    ord("{"): _T.OP_OPEN_DUP_NUM,
    ord("}"): _T.OP_CLOSE_DUP_NUM,
    ord("("): _T.OP_OPEN_SUBEXP,
    ord(")"): _T.OP_CLOSE_SUBEXP,
    ord("["): _T.OP_OPEN_BRACKET,
    ord("."): _T.OP_PERIOD,
}
_PLAIN_ANCHORS: Final = {ord("^"): _Anchor.LINE_FIRST, ord("$"): _Anchor.LINE_LAST}
# GNU operators after a backslash; any other escaped byte is that byte, literally.
_ESCAPED_OPS: Final = {
    ord("w"): _T.OP_WORD,
    ord("W"): _T.OP_NOTWORD,
    ord("s"): _T.OP_SPACE,
    ord("S"): _T.OP_NOTSPACE,
}
_ESCAPED_ANCHORS: Final = {
    ord("<"): _Anchor.WORD_FIRST,
    ord(">"): _Anchor.WORD_LAST,
    ord("b"): _Anchor.WORD_DELIM,
    ord("B"): _Anchor.NOT_WORD_DELIM,
    ord("`"): _Anchor.BUF_FIRST,
    ord("'"): _Anchor.BUF_LAST,
}
_BRACKET_SYMBOLS: Final = {
    ord("."): _T.OP_OPEN_COLL_ELEM,
    ord("="): _T.OP_OPEN_EQUIV_CLASS,
    ord(":"): _T.OP_OPEN_CHAR_CLASS,
}
_BRACKET_PLAIN: Final = {
    ord("-"): _T.OP_CHARSET_RANGE,
    ord("]"): _T.OP_CLOSE_BRACKET,
    ord("^"): _T.OP_NON_MATCH_LIST,
}

_RE_DUP_MAX: Final = 0x7FFF
_BRACKET_NAME_BUF_SIZE: Final = 32
_DUP_TOKENS: Final = frozenset(
    {_T.OP_DUP_ASTERISK, _T.OP_DUP_PLUS, _T.OP_DUP_QUESTION, _T.OP_OPEN_DUP_NUM}
)


def _byte_set(*spans: tuple[int, int] | int) -> int:
    """A 256-bit set of bytes from single bytes and inclusive ``(low, high)`` spans."""
    bits = 0
    for span in spans:
        low, high = span if isinstance(span, tuple) else (span, span)
        for b in range(low, high + 1):
            bits |= 1 << b
    return bits


def _span(chars: str) -> tuple[int, int]:
    return ord(chars[0]), ord(chars[-1])


_ALL_BYTES: Final = (1 << 256) - 1
_DIGIT: Final = _byte_set(_span("09"))
_UPPER: Final = _byte_set(_span("AZ"))
_LOWER: Final = _byte_set(_span("az"))
_ALPHA: Final = _UPPER | _LOWER
_ALNUM: Final = _ALPHA | _DIGIT
_WORD_CHARS: Final = _ALNUM | _byte_set(ord("_"))
_SPACE: Final = _byte_set((0x09, 0x0D), 0x20)
# The C locale's <ctype.h> classes: nothing at or above 0x80 belongs to any of them.
_CHAR_CLASSES: Final = {
    b"alnum": _ALNUM,
    b"cntrl": _byte_set((0x00, 0x1F), 0x7F),
    b"lower": _LOWER,
    b"space": _SPACE,
    b"alpha": _ALPHA,
    b"digit": _DIGIT,
    b"print": _byte_set((0x20, 0x7E)),
    b"upper": _UPPER,
    b"blank": _byte_set(0x09, 0x20),
    b"graph": _byte_set((0x21, 0x7E)),
    b"punct": _byte_set((0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)),
    b"xdigit": _DIGIT | _byte_set(_span("AF"), _span("af")),
}
_DOT: Final = _ALL_BYTES & ~1  # RE_DOT_NEWLINE and RE_DOT_NOT_NULL


# The parse tree. ``None`` stands for glibc's NULL tree: the empty regular expression.
@dataclass(frozen=True, slots=True)
class _Chars:
    bits: int


@dataclass(frozen=True, slots=True)
class _AnchorNode:
    kind: _Anchor


@dataclass(frozen=True, slots=True)
class _Group:
    index: int
    body: _Node | None


@dataclass(frozen=True, slots=True)
class _Concat:
    parts: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _Alt:
    branches: tuple[_Node | None, ...]


@dataclass(frozen=True, slots=True)
class _Repeat:
    body: _Node
    low: int
    high: int | None  # None: unbounded


@dataclass(frozen=True, slots=True)
class _BackRef:
    index: int


_Node = _Chars | _AnchorNode | _Group | _Concat | _Alt | _Repeat | _BackRef


class _BracketElem(NamedTuple):
    kind: str  # "char", "coll", "equiv" or "class"
    char: int = 0
    name: bytes = b""


class _Parser:
    """A port of glibc's ERE parser for a single-byte (C) locale.

    The method names follow posix/regcomp.c; errors are raised as :class:`EreError` with the
    code glibc reports.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.token = _Token(_T.END_OF_RE)
        self.nsub = 0
        self.completed_bkref_map = 0

    # Tokens outside brackets.

    def peek_token(self) -> tuple[_Token, int]:
        data, i = self.data, self.pos
        if i >= len(data):
            return _Token(_T.END_OF_RE), 0
        c = data[i]
        if c == _BACKSLASH:
            if i + 1 >= len(data):
                return _Token(_T.BACK_SLASH, c), 1
            c2 = data[i + 1]
            if c2 in _DIGITS and c2 != ord("0"):
                return _Token(_T.OP_BACK_REF, c2, backref=c2 - ord("0")), 2
            if c2 in _ESCAPED_ANCHORS:
                return _Token(_T.ANCHOR, c2, anchor=_ESCAPED_ANCHORS[c2]), 2
            return _Token(_ESCAPED_OPS.get(c2, _T.CHARACTER), c2), 2
        if c in _PLAIN_ANCHORS:
            return _Token(_T.ANCHOR, c, anchor=_PLAIN_ANCHORS[c]), 1
        return _Token(_PLAIN.get(c, _T.CHARACTER), c), 1

    def fetch_token(self) -> None:
        self.token, length = self.peek_token()
        self.pos += length

    # Grammar.

    def parse(self) -> _Node | None:
        self.fetch_token()
        return self.parse_reg_exp(nest=0)

    def parse_reg_exp(self, nest: int) -> _Node | None:
        initial_bkref_map = self.completed_bkref_map
        branches = [self.parse_branch(nest)]
        while self.token.kind is _T.OP_ALT:
            self.fetch_token()
            kind = self.token.kind
            if kind not in (_T.OP_ALT, _T.END_OF_RE) and (
                nest == 0 or kind is not _T.OP_CLOSE_SUBEXP
            ):
                accumulated_bkref_map = self.completed_bkref_map
                self.completed_bkref_map = initial_bkref_map
                branches.append(self.parse_branch(nest))
                self.completed_bkref_map |= accumulated_bkref_map
            else:
                branches.append(None)
        return branches[0] if len(branches) == 1 else _Alt(tuple(branches))

    def parse_branch(self, nest: int) -> _Node | None:
        parts: list[_Node] = []
        expr = self.parse_expression(nest)
        if expr is not None:
            parts.append(expr)
        while self.token.kind not in (_T.OP_ALT, _T.END_OF_RE) and (
            nest == 0 or self.token.kind is not _T.OP_CLOSE_SUBEXP
        ):
            expr = self.parse_expression(nest)
            if expr is not None:
                parts.append(expr)
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else _Concat(tuple(parts))

    def parse_expression(self, nest: int) -> _Node | None:
        token = self.token
        kind = token.kind
        tree: _Node | None
        if kind in (_T.CHARACTER, _T.OP_CLOSE_SUBEXP, _T.OP_CLOSE_DUP_NUM):
            # A ')' only gets here outside any group (RE_UNMATCHED_RIGHT_PAREN_ORD): a literal.
            tree = _Chars(1 << token.c)
        elif kind is _T.OP_OPEN_SUBEXP:
            tree = self.parse_sub_exp(nest + 1)
        elif kind is _T.OP_OPEN_BRACKET:
            tree = self.parse_bracket_exp()
        elif kind is _T.OP_BACK_REF:
            if not self.completed_bkref_map & (1 << (token.backref - 1)):
                raise EreError(RegError.REG_ESUBREG)
            tree = _BackRef(token.backref)
        elif kind in _DUP_TOKENS:
            raise EreError(RegError.REG_BADRPT)  # RE_CONTEXT_INVALID_OPS
        elif kind is _T.ANCHOR:
            assert token.anchor is not None
            self.fetch_token()
            return _AnchorNode(token.anchor)  # anchors take no repetition
        elif kind is _T.OP_PERIOD:
            tree = _Chars(_DOT)
        elif kind in (_T.OP_WORD, _T.OP_NOTWORD):
            tree = _Chars(_WORD_CHARS if kind is _T.OP_WORD else _ALL_BYTES & ~_WORD_CHARS)
        elif kind in (_T.OP_SPACE, _T.OP_NOTSPACE):
            tree = _Chars(_SPACE if kind is _T.OP_SPACE else _ALL_BYTES & ~_SPACE)
        elif kind in (_T.OP_ALT, _T.END_OF_RE):
            return None
        else:  # BACK_SLASH: a lone trailing backslash
            raise EreError(RegError.REG_EESCAPE)
        self.fetch_token()
        while self.token.kind in _DUP_TOKENS:
            tree = self.parse_dup_op(tree)
        return tree

    def _at(self, kind: _T) -> bool:
        """Whether the current token is `kind` (a call: fetching moves the token on)."""
        return self.token.kind is kind

    def parse_sub_exp(self, nest: int) -> _Group:
        cur_nsub = self.nsub
        self.nsub += 1
        self.fetch_token()
        body: _Node | None = None
        if not self._at(_T.OP_CLOSE_SUBEXP):
            body = self.parse_reg_exp(nest)
            if not self._at(_T.OP_CLOSE_SUBEXP):
                raise EreError(RegError.REG_EPAREN)
        if cur_nsub <= 8:
            self.completed_bkref_map |= 1 << cur_nsub
        return _Group(cur_nsub + 1, body)

    def parse_dup_op(self, elem: _Node | None) -> _Node | None:
        if self.token.kind is _T.OP_OPEN_DUP_NUM:
            start = self.fetch_number()
            if start == -1:
                if not self._token_is_comma():
                    raise EreError(RegError.REG_BADBR)  # "{}"
                start = 0  # "{,m}" is "{0,m}"
            end = -2
            if start != -2:
                if self._at(_T.OP_CLOSE_DUP_NUM):
                    end = start
                elif self._token_is_comma():
                    end = self.fetch_number()
            if start == -2 or end == -2:
                if self._at(_T.END_OF_RE):
                    raise EreError(RegError.REG_EBRACE)
                raise EreError(RegError.REG_BADBR)
            if (end != -1 and start > end) or not self._at(_T.OP_CLOSE_DUP_NUM):
                raise EreError(RegError.REG_BADBR)
            if (start if end == -1 else end) > _RE_DUP_MAX:
                raise EreError(RegError.REG_ESIZE)
        else:
            start = 1 if self.token.kind is _T.OP_DUP_PLUS else 0
            end = 1 if self.token.kind is _T.OP_DUP_QUESTION else -1
        self.fetch_token()
        if elem is None:
            return None
        return _repeat(elem, start, None if end == -1 else end)

    def _token_is_comma(self) -> bool:
        return self.token.kind is _T.CHARACTER and self.token.c == _COMMA

    def fetch_number(self) -> int:
        """-1 for an empty number, -2 for an invalid one, else the value (capped past the max)."""
        num = -1
        while True:
            self.fetch_token()
            token = self.token
            if token.kind is _T.END_OF_RE:
                return -2
            if token.kind is _T.OP_CLOSE_DUP_NUM or self._token_is_comma():
                return num
            if token.kind is not _T.CHARACTER or token.c not in _DIGITS or num == -2:
                num = -2
            elif num == -1:
                num = token.c - ord("0")
            else:
                num = min(_RE_DUP_MAX + 1, num * 10 + token.c - ord("0"))

    # Bracket expressions.

    def peek_token_bracket(self) -> tuple[_Token, int]:
        data, i = self.data, self.pos
        if i >= len(data):
            return _Token(_T.END_OF_RE), 0
        c = data[i]
        if c == _LBRACKET:
            c2 = data[i + 1] if i + 1 < len(data) else 0
            if c2 in _BRACKET_SYMBOLS:
                return _Token(_BRACKET_SYMBOLS[c2], c2), 2
            return _Token(_T.CHARACTER, c), 1
        return _Token(_BRACKET_PLAIN.get(c, _T.CHARACTER), c), 1

    def parse_bracket_exp(self) -> _Chars:
        bits = 0
        token, token_len = self.peek_token_bracket()
        if token.kind is _T.END_OF_RE:
            raise EreError(RegError.REG_BADPAT)
        non_match = token.kind is _T.OP_NON_MATCH_LIST
        if non_match:
            self.pos += token_len
            token, token_len = self.peek_token_bracket()
            if token.kind is _T.END_OF_RE:
                raise EreError(RegError.REG_BADPAT)
        if token.kind is _T.OP_CLOSE_BRACKET:
            token = token._replace(kind=_T.CHARACTER)  # a leading ']' is literal
        first_round = True
        while True:
            start_elem = self.parse_bracket_element(token, token_len, accept_hyphen=first_round)
            first_round = False
            token, token_len = self.peek_token_bracket()
            end_elem: _BracketElem | None = None
            if start_elem.kind not in ("class", "equiv"):
                if token.kind is _T.END_OF_RE:
                    raise EreError(RegError.REG_EBRACK)
                if token.kind is _T.OP_CHARSET_RANGE:
                    self.pos += token_len
                    token2, token_len2 = self.peek_token_bracket()
                    if token2.kind is _T.END_OF_RE:
                        raise EreError(RegError.REG_EBRACK)
                    if token2.kind is _T.OP_CLOSE_BRACKET:
                        self.pos -= token_len  # a '-' before ']' is literal
                        token = token._replace(kind=_T.CHARACTER)
                    else:
                        end_elem = self.parse_bracket_element(token2, token_len2, True)
                        token, token_len = self.peek_token_bracket()
            if end_elem is not None:
                bits |= _build_range(start_elem, end_elem)
            else:
                bits |= _build_elem(start_elem)
            if token.kind is _T.END_OF_RE:
                raise EreError(RegError.REG_EBRACK)
            if token.kind is _T.OP_CLOSE_BRACKET:
                break
        self.pos += token_len
        return _Chars(_ALL_BYTES & ~bits if non_match else bits)

    def parse_bracket_element(
        self, token: _Token, token_len: int, accept_hyphen: bool
    ) -> _BracketElem:
        self.pos += token_len
        if token.kind in (_T.OP_OPEN_COLL_ELEM, _T.OP_OPEN_CHAR_CLASS, _T.OP_OPEN_EQUIV_CLASS):
            return self.parse_bracket_symbol(token)
        if token.kind is _T.OP_CHARSET_RANGE and not accept_hyphen:
            token2, _ = self.peek_token_bracket()
            if token2.kind is not _T.OP_CLOSE_BRACKET:
                raise EreError(RegError.REG_ERANGE)  # a '-' neither first nor last
        return _BracketElem("char", char=token.c)

    def parse_bracket_symbol(self, token: _Token) -> _BracketElem:
        data, delim = self.data, token.c
        if self.pos >= len(data):
            raise EreError(RegError.REG_EBRACK)
        name = bytearray()
        while True:
            if len(name) >= _BRACKET_NAME_BUF_SIZE:
                raise EreError(RegError.REG_EBRACK)
            ch = data[self.pos]
            self.pos += 1
            if self.pos >= len(data):
                raise EreError(RegError.REG_EBRACK)
            if ch == delim and data[self.pos] == _RBRACKET:
                break
            name.append(ch)
        self.pos += 1
        kind = {_T.OP_OPEN_COLL_ELEM: "coll", _T.OP_OPEN_EQUIV_CLASS: "equiv"}.get(
            token.kind, "class"
        )
        return _BracketElem(kind, name=bytes(name))


def _build_elem(elem: _BracketElem) -> int:
    """One non-range bracket element as a byte set (C locale: no multi-byte collation)."""
    if elem.kind == "char":
        return 1 << elem.char
    if elem.kind == "class":
        bits = _CHAR_CLASSES.get(elem.name)
        if bits is None:
            raise EreError(RegError.REG_ECTYPE)
        return bits
    if len(elem.name) != 1:  # a collating symbol or an equivalence class
        raise EreError(RegError.REG_ECOLLATE)
    return 1 << elem.name[0]


def _build_range(start: _BracketElem, end: _BracketElem) -> int:
    """``build_range_exp`` in the C locale, where the collation order is the byte order."""
    if {start.kind, end.kind} & {"class", "equiv"}:
        raise EreError(RegError.REG_ERANGE)
    low, high = _collation_value(start), _collation_value(end)
    if low > high:
        raise EreError(RegError.REG_ERANGE)
    return _byte_set((low, high))


def _collation_value(elem: _BracketElem) -> int:
    if elem.kind == "char":
        return elem.char
    if len(elem.name) != 1:
        raise EreError(RegError.REG_ECOLLATE)
    return elem.name[0]


_SIMPLE_QUANTIFIERS: Final = frozenset({(0, None), (1, None), (0, 1)})


def _repeat(elem: _Node, low: int, high: int | None) -> _Node:
    """``elem{low,high}``, folding stacked ``*``/``+``/``?`` (``a+*`` is ``a*``, ``a??`` is
    ``a?``) so the backtracking engine never sees a needless nested loop."""
    if (
        isinstance(elem, _Repeat)
        and (elem.low, elem.high) in _SIMPLE_QUANTIFIERS
        and (low, high) in _SIMPLE_QUANTIFIERS
    ):
        high = None if high is None or elem.high is None else 1
        return _Repeat(elem.body, elem.low * low, high)
    return _Repeat(elem, low, high)


# --- emitting a `regex` pattern ---------------------------------------------------------------

_WORD: Final = "[0-9A-Z_a-z]"
_ANCHOR_SOURCE: Final = {
    _Anchor.LINE_FIRST: r"\A",  # no REG_NEWLINE and no REG_NOTBOL: start of the name
    _Anchor.BUF_FIRST: r"\A",
    _Anchor.LINE_LAST: r"\Z",  # end of the name, not before a final newline
    _Anchor.BUF_LAST: r"\Z",
    _Anchor.WORD_FIRST: f"(?<!{_WORD})(?={_WORD})",
    _Anchor.WORD_LAST: f"(?<={_WORD})(?!{_WORD})",
    _Anchor.WORD_DELIM: f"(?:(?<!{_WORD})(?={_WORD})|(?<={_WORD})(?!{_WORD}))",
    _Anchor.NOT_WORD_DELIM: f"(?:(?<={_WORD})(?={_WORD})|(?<!{_WORD})(?!{_WORD}))",
}
_PLAIN_BYTES: Final = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _byte_source(b: int) -> str:
    return chr(b) if b in _PLAIN_BYTES else f"\\x{b:02x}"


def _set_source(bits: int) -> str:
    if bits == 0:
        return "(?!)"
    if bits & (bits - 1) == 0:
        return _byte_source(bits.bit_length() - 1)
    out = []
    b = 0
    while b < 256:
        if bits >> b & 1:
            start = b
            while b + 1 < 256 and bits >> (b + 1) & 1:
                b += 1
            out.append(_byte_source(start))
            if b > start:
                out.append("-" + _byte_source(b) if b > start + 1 else _byte_source(b))
        b += 1
    return "[" + "".join(out) + "]"


def _source(node: _Node | None) -> str:
    """The ``regex`` (VERSION0, bytes) source for ``node``; every piece is self-delimiting."""
    if node is None:
        return ""
    if isinstance(node, _Chars):
        return _set_source(node.bits)
    if isinstance(node, _AnchorNode):
        return _ANCHOR_SOURCE[node.kind]
    if isinstance(node, _Group):
        return "(" + _source(node.body) + ")"
    if isinstance(node, _Concat):
        return "".join(_source(part) for part in node.parts)
    if isinstance(node, _Alt):
        return "(?:" + "|".join(_source(branch) for branch in node.branches) + ")"
    if isinstance(node, _Repeat):
        body = "(?:" + _source(node.body) + ")"
        if node.high is None:
            return body + {0: "*", 1: "+"}.get(node.low, f"{{{node.low},}}")
        if (node.low, node.high) == (0, 1):
            return body + "?"
        if node.low == node.high:
            return body + f"{{{node.low}}}"
        return body + f"{{{node.low},{node.high}}}"
    return f"(?:\\{node.index})"


def translate(pattern: str) -> str:
    """Translate a glibc POSIX ERE into equivalent ``regex`` source for a *bytes* pattern.

    Raises :class:`EreError` with glibc's code when ``regcomp(REG_EXTENDED)`` would fail. The
    translation keeps the capture groups (for back-references) and spells every non-alphanumeric
    byte as ``\\xHH``, classes as explicit C-locale byte sets and anchors as look-arounds.
    """
    try:
        return _source(_Parser(_c_bytes(pattern)).parse())
    except RecursionError:  # absurd nesting; native's validator would have refused it first
        raise EreError(RegError.REG_ESPACE) from None


class Ere:
    """A glibc ERE compiled once, searched like ``regexec``: by glibc itself where the
    process has it (glibc_regex.py: exact, never exponential), else by the ``regex`` port."""

    __slots__ = ("_compiled", "_native", "pattern", "source", "verdicts")

    def __init__(self, pattern: str, *, native: bool = True) -> None:
        """Compile ``pattern``; raises :class:`EreError` where glibc's ``regcomp`` fails.
        `native=False` keeps to the port (the tests compare the two)."""
        self.pattern = pattern
        self.source = translate(pattern)
        try:
            self._compiled = regex.compile(self.source.encode("ascii"))
        except regex.error:  # a translation bug; refuse rather than guess
            raise EreError(RegError.REG_BADPAT) from None
        glibc = GlibcRegex.load() if native else None
        self._native = glibc.compile(_c_bytes(pattern)) if glibc is not None else None
        # Verdicts per application name: a dialplan uses a handful of filters (each Ere is
        # compiled once), applications come and go slowly, and every call matches every
        # connected application. Only definite ones (a timeout may go the other way later).
        self.verdicts: dict[str, bool] = {}

    @property
    def native(self) -> bool:
        """Whether glibc's own regexec does the matching."""
        return self._native is not None

    def search(self, name: str, timeout: float | None = None) -> bool:
        """Unanchored, case-sensitive search of ``name``'s UTF-8 bytes.

        Raises :class:`TimeoutError` when ``timeout`` seconds pass first (the port only).
        """
        if self._native is not None:
            return self._native.search(_c_bytes(name))
        return self._compiled.search(_c_bytes(name), timeout=timeout) is not None


# --- native policy --------------------------------------------------------------------------


class FilterState(enum.Enum):
    """What native ended up doing with an ``app_filter``."""

    NONE = "none"
    """Empty filter: every application matches, nothing is logged."""
    ACTIVE = "active"
    """Compiled: only matching application names."""
    REJECTED = "rejected"
    """Refused by :func:`validate_pattern`: every application matches."""
    INVALID = "invalid"
    """Refused by ``regcomp``: every application matches."""


class AppFilter:
    """The application-name filter of one broadcast, compiled once.

    Build it with :meth:`compile`. :meth:`matches` never raises and never runs longer than
    :attr:`timeout`; a search that times out counts as "no match" and increments
    :attr:`timeouts` so the caller can log it (:meth:`search` reports it directly).
    """

    __slots__ = ("_ere", "pattern", "reason", "state", "timeout", "timeouts")

    def __init__(
        self,
        pattern: str,
        state: FilterState,
        ere: Ere | None = None,
        *,
        reason: str | None = None,
        timeout: float = DEFAULT_MATCH_TIMEOUT,
    ) -> None:
        if (ere is None) == (state is FilterState.ACTIVE):
            raise ValueError("an ACTIVE filter needs a compiled Ere, and only it")
        self.pattern = pattern
        self.state = state
        self.reason = reason
        self.timeout = timeout
        self.timeouts = 0
        self._ere = ere

    @classmethod
    def compile(
        cls, pattern: str, *, timeout: float = DEFAULT_MATCH_TIMEOUT
    ) -> tuple[AppFilter, list[str]]:
        """Apply native's filter policy to ``pattern``.

        Returns the filter and the warnings native logs, in order, without their
        ``"Channel <uniqueid>: "`` prefix (native logs the channel's uniqueid here, not its
        name). An empty pattern matches everything silently. A rejected or uncompilable one
        also matches everything, with two warnings.
        """
        state, ere, reason, warnings = _judge(pattern)
        return cls(pattern, state, ere, reason=reason, timeout=timeout), list(warnings)

    @property
    def active(self) -> bool:
        """True when the filter restricts recipients (native's ``filter_compiled``)."""
        return self._ere is not None

    def search(self, name: str) -> bool | None:
        """Whether ``name`` is a recipient; None if the search timed out."""
        if self._ere is None:
            return True
        try:
            return self._ere.search(name, self.timeout)
        except TimeoutError:
            return None

    def matches(self, name: str) -> bool:
        """Whether ``name`` is a recipient; a timed-out search is "no" and bumps ``timeouts``."""
        if self._ere is None:
            return True
        verdicts = self._ere.verdicts
        found = verdicts.get(name)
        if found is None:
            found = self.search(name)
            if found is None:
                self.timeouts += 1
                return False
            if len(verdicts) >= _VERDICTS_KEPT:
                del verdicts[next(iter(verdicts))]  # the oldest
            verdicts[name] = found
        return found

    def recipients(self, apps: Iterable[str], budget: float = MATCH_BUDGET) -> list[str]:
        """The matching ones of `apps`, in order. Past `budget` seconds of matching (only
        the port can take that long) the rest count as not matching, and as timeouts."""
        if self._ere is None:
            return list(apps)
        deadline = time.monotonic() + budget
        chosen = []
        for app in apps:
            if time.monotonic() > deadline and app not in self._ere.verdicts:
                self.timeouts += 1
                continue
            if self.matches(app):
                chosen.append(app)
        return chosen

    def __repr__(self) -> str:
        return f"AppFilter({self.pattern!r}, {self.state.name})"


@functools.lru_cache(maxsize=256)
def _judge(pattern: str) -> tuple[FilterState, Ere | None, str | None, tuple[str, ...]]:
    """Native's verdict on a pattern, compiled once: a dialplan uses a handful of filters,
    and validating and translating one costs far more than the rest of a broadcast."""
    text = pattern.split("\0", 1)[0]  # what the C string holds, and so what native logs
    if not text:
        return FilterState.NONE, None, None, ()
    fallback = "proceeding without application filtering due to invalid regex"
    reason = validate_pattern(pattern)
    if reason is not None:
        warning = f"rejecting app_filter regex as potentially dangerous: {text}"
        return FilterState.REJECTED, None, reason, (warning, fallback)
    try:
        ere = Ere(pattern)
    except EreError as exc:
        warning = f"failed to compile app_filter regex '{text}'"
        return FilterState.INVALID, None, exc.code.name, (warning, fallback)
    return FilterState.ACTIVE, ere, None, ()
