"""uvicorn's HTTP/1.1 protocol, with losing claims answered as they are read.

Under a race nine claims in ten lose. Through uvicorn each costs a scope, a task, an event and
two writes around a decision that is one dictionary look-up: most of the proxy's CPU per
call (bench/run, section claims). This protocol reads a request that is one whole
`POST /ari/events/claim` with no body itself and, when its answer is known at once
(`QuickClaims`: the call was claimed already, or not offered to that application), writes
the answer in one piece, byte for byte what the ASGI path writes. Everything else goes to
uvicorn unchanged: the claim that may win, credentials Asterisk has not accepted lately, a
body, pipelined or partial requests, anything unusual.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .ari_request import AriAnswer, parse_query
from .auth import Credentials
from .passthrough import MAX_TARGET

__all__ = ["ClaimsReadingProtocol", "QuickClaims", "protocol_answering"]

_CLAIM = b"POST /ari/events/claim"
_CLAIM_PATH = b"/ari/events/claim"
# Headers that take a request off the quick path: a body, or a request to change protocol.
_UNUSUAL = frozenset({b"transfer-encoding", b"expect", b"upgrade"})


class QuickClaims(Protocol):
    def answer_at_once(
        self,
        credentials: Credentials,
        params: Iterable[tuple[str, str]],
        reply: Callable[[AriAnswer], None],
    ) -> bool:
        """Answer through `reply` (now or later) and return True, or return False."""


class _Claim:
    """httptools callbacks: what the quick path reads of a request."""

    __slots__ = ("authorization", "complete", "parser", "unusual", "url")

    def __init__(self) -> None:
        self.url = b""
        self.authorization: bytes | None = None
        self.unusual = False
        self.complete = False
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"authorization":
            # The first one, as the ASGI path reads it; trailing blanks as uvicorn trims.
            self.authorization = self.authorization or value.rstrip(b" \t")
        elif name == b"content-length":
            self.unusual |= value.strip() != b"0"
        elif name in _UNUSUAL:
            self.unusual = True

    def on_headers_complete(self) -> None:
        # Read here, as uvicorn does: once the message is complete the parser starts over.
        parser = self.parser
        self.unusual |= parser.get_http_version() != "1.1" or not parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self.complete = True


class ClaimsReadingProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; `quick` answers the claims it can as they are read."""

    quick: QuickClaims
    _in_message = False  # uvicorn's parser is part-way through a request
    _answering = False  # a claim read here waits for its answer (the winner's hand-over)
    _close_when_answered = False

    def on_message_begin(self) -> None:
        self._in_message = True
        super().on_message_begin()

    def on_message_complete(self) -> None:
        self._in_message = False
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if data.startswith(_CLAIM) and (claim := self._claim_in(data)) is not None:
            # As uvicorn does around a request: no idle timeout while it is handled.
            self._unset_keepalive_if_required()
            self._answering = True
            if self.quick.answer_at_once(*claim, self._reply):
                if self._answering:  # nothing more is read until it is answered
                    self.flow.pause_reading()
                return
            self._answering = False
        super().data_received(data)

    def _reply(self, answer: AriAnswer) -> None:
        self._answering = False
        if not self.transport.is_closing():
            self.transport.write(_render(answer, self.server_state.default_headers))
        self.on_response_complete()  # uvicorn's: counted, reading on, the idle timer armed
        if self._close_when_answered:
            self.transport.close()

    def shutdown(self) -> None:
        if self._answering:  # as uvicorn closes after a request in progress is answered
            self._close_when_answered = True
        else:
            super().shutdown()

    def _claim_in(self, data: bytes) -> tuple[Credentials, list[tuple[str, str]]] | None:
        """The credentials and parameters of `data` if it is one whole claim with no body
        that arrived between requests, else None."""
        idle = self.cycle is None or self.cycle.response_complete
        if not idle or self._in_message or self._answering or self.pipeline:
            return None
        if self.flow.write_paused or data.find(b"\r\n\r\n") != len(data) - 4:
            return None
        claim = _Claim()
        try:
            claim.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return None  # uvicorn answers (400) or upgrades as usual
        finally:
            del claim.parser  # no cycle left to collect
        if not claim.complete or claim.unusual or len(claim.url) > MAX_TARGET:
            return None
        url = httptools.parse_url(claim.url)
        if url.path != _CLAIM_PATH:
            return None
        params = parse_query(url.query or b"")
        authorization = claim.authorization
        credentials = Credentials(
            None if authorization is None else authorization.decode("latin-1"),
            dict(params).get("api_key"),  # the last one, as the ASGI path reads it
        )
        return credentials, params


def _render(answer: AriAnswer, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """The answer as uvicorn writes the ASGI path's (`http_exchange.Answer`), in one piece."""
    head = [STATUS_LINE[answer.status]]
    for name, value in default_headers:
        head += (name, b": ", value, b"\r\n")
    body = b""
    if answer.body is not None:
        body = orjson.dumps(answer.body)
        head += (b"content-type: application/json\r\ncontent-length: ", b"%d\r\n" % len(body))
    return b"".join((*head, b"\r\n", body))


def protocol_answering(claims: QuickClaims) -> type[ClaimsReadingProtocol]:
    """The protocol class for uvicorn's `http` setting, answering through `claims`."""

    class Protocol(ClaimsReadingProtocol):
        quick = claims

    return Protocol
