"""How the broadcast feature plugs into every downstream events session.

From Asterisk: broadcast channels are presented as native's, the proxy's internal variable
events are dropped, ApplicationReplaced updates the registry, and a forwarded claim that an
Asterisk without res_stasis_broadcast answers with 501 is turned into native's 404.
From the client: `RESTRequest` claims are answered by the proxy.
"""

from __future__ import annotations

import weakref

import orjson

from ..auth import Credentials
from ..registry import AppRegistry
from ..rest_over_ws import parse_rest_request, rest_response
from ..sessions import EventSession
from .claims import ClaimService, native_404_for_501
from .controller import BroadcastController
from .presentation import asterisk_timestamp

__all__ = ["BroadcastHooks"]


class BroadcastHooks:
    def __init__(
        self, controller: BroadcastController, claims: ClaimService, registry: AppRegistry
    ) -> None:
        self._controller = controller
        self._claims = claims
        self._registry = registry
        # Claims forwarded to Asterisk per session: {(transaction_id, request_id)}.
        self._forwarded: weakref.WeakKeyDictionary[EventSession, set[tuple[str, str]]] = (
            weakref.WeakKeyDictionary()
        )

    def upstream_frame(self, session: EventSession, text: str) -> str | None:
        if '"ApplicationReplaced"' in text:
            event = orjson.loads(text)
            if event.get("type") == "ApplicationReplaced":
                self._registry.unregister(session, [event.get("application", "")])
        pending = self._forwarded.get(session)
        if pending and '"RESTResponse"' in text:
            text = self._native_claim_response(pending, text)
        return self._controller.observe_upstream_frame(text)

    def _native_claim_response(self, pending: set[tuple[str, str]], text: str) -> str:
        message = orjson.loads(text)
        key = (message.get("transaction_id", ""), message.get("request_id", ""))
        if message.get("type") != "RESTResponse" or key not in pending:
            return text
        pending.discard(key)
        status, body = native_404_for_501(message.get("status_code", 0), b"")
        if status == message.get("status_code"):
            return text
        message.update(
            status_code=status,
            reason_phrase="Not Found",
            content_type="application/json",
            message_body=body.decode(),
        )
        return orjson.dumps(message).decode()

    async def client_frame(self, session: EventSession, text: str) -> bool:
        if '"RESTRequest"' not in text or "events/claim" not in text:
            return False
        request = parse_rest_request(text)
        if (
            request is None
            or request.path != "events/claim"
            or request.method != "POST"
            or request.body_error is not None
        ):
            return False
        credentials = Credentials(
            session.headers.get("authorization"), session.query.get("api_key")
        )
        answer = await self._claims.answer(credentials, request.params, request.json_body)
        if answer is None:
            self._forwarded.setdefault(session, set()).add(
                (request.transaction_id, request.request_id)
            )
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
