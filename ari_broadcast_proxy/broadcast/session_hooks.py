"""How the broadcast feature plugs into every downstream events session.

From Asterisk: broadcast channels are presented as native's, the proxy's internal variable
events and the subroutine's steps are dropped, ApplicationReplaced updates the registry, and
the answers to requests the gate follows are adjusted as over HTTP (a claim's 501, a release,
a listing). From the client: `RESTRequest` frames are read as Asterisk reads them and go
through the same gate as HTTP requests (gate.py): claims and refusals are answered here.
"""

from __future__ import annotations

import logging
import weakref
from http import HTTPStatus

import orjson

from ..ari_request import AriAnswer, AriCall
from ..auth import Credentials
from ..client_rest import RestRequest, parse_rest_request, rest_response
from ..errors import BadRequest
from ..event_session import EventSession
from ..registry import AppRegistry
from .controller import BroadcastController
from .gate import BroadcastGate
from .presentation import asterisk_timestamp

__all__ = ["BroadcastHooks"]

log = logging.getLogger(__name__)


class BroadcastHooks:
    def __init__(
        self, controller: BroadcastController, gate: BroadcastGate, registry: AppRegistry
    ) -> None:
        self._controller = controller
        self._gate = gate
        self._registry = registry
        # Per session, by (transaction_id, request_id): the forwarded requests whose answer
        # the gate must see (a claim's 501, a release, a listing).
        self._following: weakref.WeakKeyDictionary[EventSession, dict[tuple[str, str], AriCall]] = (
            weakref.WeakKeyDictionary()
        )

    def upstream_frame(self, session: EventSession, text: str) -> str | None:
        if '"ApplicationReplaced"' in text:
            event = orjson.loads(text)
            if event.get("type") == "ApplicationReplaced":
                self._registry.unregister(session, [event.get("application", "")])
        if self._following and '"RESTResponse"' in text:
            text = self._rest_response(session, text)
        return self._controller.observe_upstream_frame(text)

    def _rest_response(self, session: EventSession, text: str) -> str:
        """Asterisk's answer to a request the gate follows, as the client gets it."""
        message = orjson.loads(text)
        if not isinstance(message, dict) or message.get("type") != "RESTResponse":
            return text
        key = (str(message.get("transaction_id", "")), str(message.get("request_id", "")))
        following = self._following.get(session)
        call = following.pop(key, None) if following else None
        if call is None:
            return text
        if not following:
            del self._following[session]
        status = message.get("status_code", 0)
        body = message.get("message_body")
        content = body.encode() if isinstance(body, str) else b""
        new_status, new_content = self._gate.answered(
            call, status if isinstance(status, int) else 0, content, snapshots=False
        )
        if (new_status, new_content) == (status, content):
            return text
        if new_status != status:
            message.update(status_code=new_status, reason_phrase=HTTPStatus(new_status).phrase)
        if new_content:
            message.update(content_type="application/json", message_body=new_content.decode())
        return orjson.dumps(message).decode()

    async def client_frame(self, session: EventSession, text: str) -> bool:
        """Answer what the gate answers itself; follow what it must see the answer of.
        Every frame is read (a JSON escape can spell "RESTRequest" in any way)."""
        try:
            request = parse_rest_request(text)
        except BadRequest as exc:
            self._answer(session, _ids_only(text), AriAnswer(400, {"message": exc.message}))
            return True
        if request is None:
            return False  # no request, or one Asterisk refuses itself
        call = AriCall(
            request.method,
            request.segments,
            tuple(request.params),
            request.json_body,
            request.body_error,
        )
        credentials = Credentials(
            session.headers.get("authorization"), session.query.get("api_key")
        )
        answer = await self._gate.own_answer(call, credentials, rewritable=False)
        if answer is None:
            if self._gate.follows(call):
                key = (request.transaction_id, request.request_id)
                self._following.setdefault(session, {})[key] = call
            return False
        self._answer(session, request, answer)
        return True

    def _answer(self, session: EventSession, request: RestRequest, answer: AriAnswer) -> None:
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


def _ids_only(text: str) -> RestRequest:
    """A RESTRequest that cannot be read safely, with what an answer can carry of it."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        message = {}
    if not isinstance(message, dict):
        message = {}
    uri = message.get("uri")
    return RestRequest(
        transaction_id=str(message.get("transaction_id", "")),
        request_id=str(message.get("request_id", "")),
        method=str(message.get("method", "")),
        path=uri.partition("?")[0] if isinstance(uri, str) else "",
        segments=(),
        params=[],
        json_body=None,
        body_error=None,
    )
