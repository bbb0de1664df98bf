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

import orjson

from ..auth import Credentials
from ..registry import AppRegistry
from ..rest_over_ws import parse_rest_request, rest_response
from ..sessions import EventSession
from .channel_ops import NOT_IN_STASIS, controlled_channel, released_channel
from .claims import ClaimAnswer, ClaimService, native_404_for_501
from .controller import BroadcastController
from .presentation import asterisk_timestamp

__all__ = ["BroadcastHooks"]

log = logging.getLogger(__name__)


class BroadcastHooks:
    def __init__(
        self, controller: BroadcastController, claims: ClaimService, registry: AppRegistry
    ) -> None:
        self._controller = controller
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

    def upstream_frame(self, session: EventSession, text: str) -> str | None:
        if '"ApplicationReplaced"' in text:
            event = orjson.loads(text)
            if event.get("type") == "ApplicationReplaced":
                self._registry.unregister(session, [event.get("application", "")])
        if (self._forwarded or self._releases) and '"RESTResponse"' in text:
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
        """Answer claims and control calls on channels under broadcast; note releases."""
        if '"RESTRequest"' not in text:
            return False
        request = parse_rest_request(text)
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
        elif (channel := controlled_channel(request.method, request.path)) is not None and (
            self._controller.is_locked(channel)
        ):
            answer = await self._claims.write_refusal(credentials) or ClaimAnswer(
                409, {"message": NOT_IN_STASIS}
            )
            log.info("RESTRequest %s /%s -> %d", request.method, request.path, answer.status)
        else:
            released = released_channel(request.method, request.path)
            if released is not None and self._controller.in_session(released):
                self._releases.setdefault(session, {})[key] = released
            return False
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
        return True
