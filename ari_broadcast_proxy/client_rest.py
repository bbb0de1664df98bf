"""REST over WebSocket from clients (ARI 20.14+/22.4+): their `RESTRequest` frames read as
Asterisk reads them, `RESTResponse` frames written as Asterisk writes them. (The proxy's own
requests to Asterisk over its broadcast socket are upstream/ws_rest.py.)

The events sessions forward every request to Asterisk untouched except what the broadcast
gate answers itself (broadcast/gate.py); this module reads the requests and builds those
answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson

from .ari_request import c_string, parse_query, path_segments
from .errors import BadRequest

__all__ = ["UNREADABLE", "RestRequest", "parse_rest_request", "rest_response"]


@dataclass(frozen=True)
class RestRequest:
    transaction_id: str
    request_id: str
    method: str
    path: str  # the segments Asterisk routes on, joined: "events/claim"
    segments: tuple[str, ...]
    params: list[tuple[str, str]]  # query string, then query_strings, then form body
    json_body: Any | None
    body_error: str | None  # Asterisk's message when message_body does not parse


UNREADABLE = "Unable to parse the frame as JSON"


def parse_rest_request(text: str) -> RestRequest | None:
    """The request in a client frame as Asterisk reads it, or None when the frame is no
    RESTRequest or one Asterisk itself refuses (it answers with its own 400). BadRequest for
    what the proxy cannot read but Asterisk might (a frame nested deeper than orjson parses,
    a percent escape Asterisk would read its own way): refused, never forwarded unread."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise BadRequest(UNREADABLE) from None
    if not isinstance(message, dict) or message.get("type") != "RESTRequest":
        return None
    if _has_nul(message):
        return None  # Asterisk's JSON parser refuses the frame: nothing runs
    uri, method = message.get("uri"), message.get("method")
    if not isinstance(uri, str) or not uri or not isinstance(method, str):
        return None
    path, _, query = c_string(uri).partition("?")
    params = parse_query(query.encode("utf-8", "surrogateescape"))
    extra = message.get("query_strings")
    if isinstance(extra, list):  # anything else Asterisk ignores (json_array_size() is 0)
        if not all(
            isinstance(q, dict)
            and isinstance(q.get("name"), str)
            and isinstance(q.get("value"), str)
            for q in extra
        ):
            return None
        params += [(c_string(q["name"]), c_string(q["value"])) for q in extra]
    segments = path_segments(path.encode("utf-8", "surrogateescape"))
    json_body, body_error = None, None
    body = message.get("message_body")
    if isinstance(body, str) and body:
        content_type = str(message.get("content_type", "")).split(";")[0].strip().lower()
        if content_type == "application/x-www-form-urlencoded":
            params += parse_query(body.encode("utf-8", "surrogateescape"))
        elif content_type == "application/json":
            try:
                json_body = orjson.loads(body)
            except orjson.JSONDecodeError:
                body_error = f"Unable to parse 'message_body' as '{content_type}'."
        else:
            return None  # let Asterisk produce its own content-type error
    return RestRequest(
        transaction_id=str(message.get("transaction_id", "")),
        request_id=str(message.get("request_id", "")),
        method=method.upper(),
        path="/".join(segments),
        segments=segments,
        params=params,
        json_body=json_body,
        body_error=body_error,
    )


def rest_response(
    request: RestRequest,
    status: int,
    body: dict[str, Any] | None,
    *,
    timestamp: str,
    asterisk_id: str | None,
    application: str,
) -> str:
    """A RESTResponse frame as Asterisk writes it (no body fields for 204)."""
    message: dict[str, Any] = {
        "type": "RESTResponse",
        "transaction_id": request.transaction_id,
        "request_id": request.request_id,
        "status_code": status,
        "reason_phrase": HTTPStatus(status).phrase,
        "uri": request.path,
    }
    if body is not None:
        message["content_type"] = "application/json"
        message["message_body"] = orjson.dumps(body).decode()
    message["timestamp"] = timestamp
    if asterisk_id:
        message["asterisk_id"] = asterisk_id
    message["application"] = application
    return orjson.dumps(message).decode()


def _has_nul(value: Any) -> bool:
    """Whether a NUL is anywhere in a decoded JSON document (keys or strings)."""
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False
