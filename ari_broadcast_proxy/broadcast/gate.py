"""The broadcast feature's one policy for client requests, over HTTP and REST over WebSocket.

Both transports hand every request to the gate, read as Asterisk reads it (`AriCall`):

- `own_answer`: what the proxy answers itself: claims for its broadcasts, and what the
  request rules refuse (after Asterisk has accepted the client's credentials for writing);
- `target`: over HTTP, the request to send instead of the client's, so that Asterisk itself
  answers for the proxy's application or variables as for ones that do not exist (REST over
  WebSocket answers those directly: its frames echo the request's uri);
- `follows` / `answered`: what becomes of Asterisk's answer to a forwarded request (a claim's
  501 turned into native's 404, the winner's session ended by an accepted `continue` or
  hangup, listings without the proxy's application or variables, snapshots as native's).

Pass-through and the events sessions stay plumbing: they carry requests and answers and ask
the gate, as `sessions.py` asks its Interceptor.
"""

from __future__ import annotations

import logging
from urllib.parse import quote, urlencode

from ..ari_request import AriAnswer, AriCall
from ..auth import Credentials
from .claims import ClaimService, native_404_for_501
from .controller import BroadcastController
from .presentation import Presenter
from .request_rules import (
    APP_NOT_FOUND,
    VARIABLE_NOT_FOUND,
    RequestRules,
    unset_reserved,
    without_reserved_variables,
)

__all__ = ["BroadcastGate"]

log = logging.getLogger(__name__)


def _is_claim(call: AriCall) -> bool:
    return call.method == "POST" and call.segments == ("events", "claim")


class BroadcastGate:
    def __init__(
        self,
        controller: BroadcastController,
        claims: ClaimService,
        rules: RequestRules,
        presenter: Presenter,
    ) -> None:
        self._controller = controller
        self._claims = claims
        self._rules = rules
        self._presenter = presenter

    async def own_answer(
        self, call: AriCall, credentials: Credentials, *, rewritable: bool
    ) -> AriAnswer | None:
        """The proxy's answer, or None to forward the request. `rewritable`: the transport
        sends `target(call)` instead of the request (HTTP)."""
        if call.body_error is not None:
            # Never forwarded unread: Asterisk may parse what the proxy could not (JSON
            # nested deeper than orjson goes) and act on what no rule has seen.
            unread = AriAnswer(400, {"message": call.body_error})
            if call.method != "GET" and not _is_claim(call):
                return await self._claims.write_refusal(credentials) or unread
            return unread
        if _is_claim(call):
            return await self._claims.answer(credentials, call.params, call.json_body)
        # Over HTTP a read of the proxy's variables is sent on as a read of one nobody can
        # set, which rewrites the query only: with a JSON body (which Asterisk reads for any
        # method, over the query) the proxy answers itself.
        directly = not rewritable or call.json_body is not None
        answer = self._not_there(call) if directly else None
        if answer is None:
            refusal = self._rules.refusal(call)
            if refusal is None:
                return None
            log.info("%s /%s -> %d %s", call.method, call.path, refusal.status, refusal.message)
            answer = AriAnswer(refusal.status, {"message": refusal.message})
        if call.method != "GET":
            answer = await self._claims.write_refusal(credentials) or answer
        return answer

    def _not_there(self, call: AriCall) -> AriAnswer | None:
        """Asterisk's answers for what natively does not exist: the proxy's application, or
        its variables (read)."""
        if self._rules.names_reserved_app(call):
            return AriAnswer(404, {"message": APP_NOT_FOUND})
        if self._rules.reads_reserved_variable(call):
            if call.segments[:1] == ("channels",):
                return AriAnswer(404, {"message": VARIABLE_NOT_FOUND})
            return AriAnswer(200, {"value": ""})
        return None

    def target(self, call: AriCall) -> bytes | None:
        """The request target (below /ari) to send instead of the client's, None for its
        own: the proxy's application or variables become ones that do not exist."""
        hidden_app = self._rules.names_reserved_app(call)
        if not hidden_app and not self._rules.reads_reserved_variable(call):
            return None
        segments = list(call.segments)
        if hidden_app:
            segments[1] = " " + segments[1]  # Asterisk trims app names: never registered
        params = [(name, unset_reserved(name, value)) for name, value in call.params]
        # Undecodable bytes were kept as surrogates (ari_request): back to the same bytes.
        target = "/" + "/".join(quote(s, safe="", errors="surrogateescape") for s in segments)
        query = urlencode(params, errors="surrogateescape")
        return (target + ("?" + query if params else "")).encode("latin-1")

    def follows(self, call: AriCall) -> bool:
        """Whether Asterisk's answer to this forwarded request matters to the gate."""
        if _is_claim(call) or self._listing(call):
            return True
        released = self._rules.released_channel(call)
        return released is not None and self._controller.holds(released)

    def rewrites(self, call: AriCall) -> bool:
        """Whether Asterisk's answer may be rewritten, so must be read whole."""
        return self._listing(call) or (
            call.segments[:1] == ("channels",) and len(self._presenter) > 0
        )

    def _listing(self, call: AriCall) -> bool:
        segments = call.segments
        return call.method == "GET" and (
            segments == ("applications",)
            or (segments[:1] == ("channels",) and segments[2:] == ("variables",))
        )

    def answered(
        self, call: AriCall, status: int, content: bytes, *, snapshots: bool
    ) -> tuple[int, bytes]:
        """Asterisk's answer to a forwarded request as the client gets it. `snapshots`:
        present channel snapshots as native's here (REST over WebSocket answers get that
        with every other frame from Asterisk)."""
        if _is_claim(call):
            return native_404_for_501(status, content)
        released = self._rules.released_channel(call)
        if released is not None and 200 <= status < 300:
            self._controller.released(released)
        if status != 200:
            return status, content
        if call.segments == ("applications",):
            return status, self._rules.without_reserved_app(content)
        if call.segments[:1] == ("channels",):
            if snapshots and len(self._presenter):
                content = self._presenter.body(content)
            if call.segments[2:] == ("variables",):
                content = without_reserved_variables(content)
        return status, content
