"""How the broadcast feature plugs into every downstream events session.

From Asterisk: broadcast channels are presented as native's, the proxy's internal variable
events are dropped, ApplicationReplaced updates the registry, and a forwarded claim that an
Asterisk without res_stasis_broadcast answers with 501 is turned into native's 404.
From the client: `RESTRequest` claims are answered by the proxy, and so are control calls on
channels still on offer (409, as native: not in Stasis yet); an accepted `continue` or hangup
ends the winner's session at once, as over HTTP.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable

import orjson

from ..auth import Credentials
from ..errors import BadRequest
from ..registry import AppRegistry
from ..rest_over_ws import RestRequest, parse_rest_request, rest_response
from ..sessions import EventSession
from .claims import ClaimAnswer, ClaimService, native_404_for_501
from .controller import BroadcastController
from .presentation import asterisk_timestamp
from .request_rules import (
    APP_NOT_FOUND,
    VARIABLE_NOT_FOUND,
    AriCall,
    RequestRules,
    without_reserved_variables,
)

__all__ = ["BroadcastHooks"]

log = logging.getLogger(__name__)


class BroadcastHooks:
    def __init__(
        self,
        controller: BroadcastController,
        claims: ClaimService,
        registry: AppRegistry,
        rules: RequestRules,
    ) -> None:
        self._controller = controller
        self._rules = rules
        self._claims = claims
        self._registry = registry
        # Per session, by (transaction_id, request_id): claims forwarded to Asterisk, and
        # the channel of each `continue`/hangup on its way.
        self._forwarded: weakref.WeakKeyDictionary[EventSession, set[tuple[str, str]]] = (
            weakref.WeakKeyDictionary()
        )
        self._releases: weakref.WeakKeyDictionary[EventSession, dict[tuple[str, str], str]] = (
            weakref.WeakKeyDictionary()
        )
        self._rewrites: weakref.WeakKeyDictionary[
            EventSession, dict[tuple[str, str], Callable[[bytes], bytes]]
        ] = weakref.WeakKeyDictionary()

    def upstream_frame(self, session: EventSession, text: str) -> str | None:
        if '"ApplicationReplaced"' in text:
            event = orjson.loads(text)
            if event.get("type") == "ApplicationReplaced":
                self._registry.unregister(session, [event.get("application", "")])
        if (self._forwarded or self._releases or self._rewrites) and '"RESTResponse"' in text:
            text = self._rest_response(session, text)
        return self._controller.observe_upstream_frame(text)

    def _rest_response(self, session: EventSession, text: str) -> str:
        """Note a release Asterisk accepted; turn a forwarded claim's 501 into native's 404."""
        message = orjson.loads(text)
        if not isinstance(message, dict) or message.get("type") != "RESTResponse":
            return text
        key = (str(message.get("transaction_id", "")), str(message.get("request_id", "")))
        status = message.get("status_code", 0)
        releases = self._releases.get(session)
        if releases and (released := releases.pop(key, None)) is not None:
            if not releases:
                del self._releases[session]
            if isinstance(status, int) and 200 <= status < 300:
                self._controller.released(released)
        rewrites = self._rewrites.get(session)
        if rewrites and (rewrite := rewrites.pop(key, None)) is not None:
            if not rewrites:
                del self._rewrites[session]
            body = message.get("message_body")
            if status == 200 and isinstance(body, str):
                new_body = rewrite(body.encode()).decode()
                if new_body != body:
                    message["message_body"] = new_body
                    return orjson.dumps(message).decode()
            return text
        pending = self._forwarded.get(session)
        if not pending or key not in pending:
            return text
        pending.discard(key)
        if not pending:
            del self._forwarded[session]
        native, body = native_404_for_501(status, b"")
        if native == status:
            return text
        message.update(
            status_code=native,
            reason_phrase="Not Found",
            content_type="application/json",
            message_body=body.decode(),
        )
        return orjson.dumps(message).decode()

    async def client_frame(self, session: EventSession, text: str) -> bool:
        """Answer claims, and what the request rules refuse or hide; note releases and the
        answers to rewrite."""
        if '"RESTRequest"' not in text:
            return False
        try:
            request = parse_rest_request(text)
        except BadRequest as exc:
            request = _ids_only(text)
            if request is None:
                return False
            self._answer(session, request, ClaimAnswer(400, {"message": exc.message}))
            return True
        if request is None or request.body_error is not None:
            return False
        credentials = Credentials(
            session.headers.get("authorization"), session.query.get("api_key")
        )
        key = (request.transaction_id, request.request_id)
        if request.path == "events/claim" and request.method == "POST":
            answer = await self._claims.answer(credentials, request.params, request.json_body)
            if answer is None:
                self._forwarded.setdefault(session, set()).add(key)
                return False
            self._answer(session, request, answer)
            return True
        call = AriCall(request.method, request.segments, tuple(request.params), request.json_body)
        answer = self._own_answer(call)
        if answer is None:
            refusal = self._rules.refusal(call)
            if refusal is None:
                self._note(session, key, call)
                return False
            answer = ClaimAnswer(refusal.status, {"message": refusal.message})
        if call.method != "GET":
            answer = await self._claims.write_refusal(credentials) or answer
        log.info("RESTRequest %s /%s -> %d", request.method, request.path, answer.status)
        self._answer(session, request, answer)
        return True

    def _own_answer(self, call: AriCall) -> ClaimAnswer | None:
        """Asterisk's answer for what does not exist natively: the proxy's application, or
        its variables (read)."""
        if self._rules.names_reserved_app(call):
            return ClaimAnswer(404, {"message": APP_NOT_FOUND})
        if self._rules.reads_reserved_variable(call):
            if call.segments[:1] == ("channels",):
                return ClaimAnswer(404, {"message": VARIABLE_NOT_FOUND})
            return ClaimAnswer(200, {"value": ""})
        return None

    def _note(self, session: EventSession, key: tuple[str, str], call: AriCall) -> None:
        """Remember what to do with Asterisk's answer to a forwarded request."""
        released = self._rules.released_channel(call)
        if released is not None and self._controller.in_session(released):
            self._releases.setdefault(session, {})[key] = released
        elif call.method == "GET" and call.segments == ("applications",):
            self._rewrites.setdefault(session, {})[key] = self._rules.without_reserved_app
        elif (
            call.method == "GET"
            and call.segments[:1] == ("channels",)
            and (call.segments[2:] == ("variables",))
        ):
            self._rewrites.setdefault(session, {})[key] = without_reserved_variables

    def _answer(self, session: EventSession, request: RestRequest, answer: ClaimAnswer) -> None:
        session.send_event(
            rest_response(
                request,
                answer.status,
                answer.body,
                timestamp=asterisk_timestamp(),
                asterisk_id=self._controller.asterisk_id,
                application=session.first_app,
            )
        )


def _ids_only(text: str) -> RestRequest | None:
    """A RESTRequest that cannot be read safely, with only what an answer needs."""
    message = orjson.loads(text)
    if not isinstance(message, dict) or not isinstance(message.get("uri"), str):
        return None
    return RestRequest(
        transaction_id=str(message.get("transaction_id", "")),
        request_id=str(message.get("request_id", "")),
        method=str(message.get("method", "")),
        path=message["uri"].partition("?")[0],
        segments=(),
        params=[],
        json_body=None,
        body_error=None,
    )
