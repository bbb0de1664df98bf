"""Rewrite Asterisk's Swagger 1.x ``/ari/api-docs/*.json`` documents for clients of the proxy.

Every document gets a ``basePath`` pointing at the proxy. ``events.json`` also gets the
``/events/claim`` operation (nickname ``claimChannel``), the ``CallBroadcast`` and
``CallClaimed`` models and their ``Event.subTypes`` entries when the upstream lacks them.
Client libraries need these: node ari-client throws on events whose model is unknown, and
ari-py/asyncari build operations from nicknames and send credentials only to the basePath host.
"""

from __future__ import annotations

import re
from importlib.resources import files
from types import MappingProxyType
from typing import Any, Final

import orjson

__all__ = [
    "CLAIM_API",
    "CLAIM_MODELS",
    "CLAIM_SUBTYPES",
    "EVENTS_DOCUMENT",
    "ApiDocsError",
    "base_url_for",
    "rewrite_document",
]

EVENTS_DOCUMENT: Final = "events.json"
"""File name (after ``/ari/api-docs/``) of the document that receives the claim additions."""

_SUBTYPE_ANCHOR: Final = "RESTResponse"
_SCHEMES: Final = MappingProxyType({"http": "http", "https": "https", "ws": "http", "wss": "https"})
# An RFC 3986 authority without userinfo: IP literal or reg-name/IPv4, then an optional port.
_HOST_RE: Final = re.compile(
    r"(?:\[[0-9A-Za-z:.%_~-]+\]|[0-9A-Za-z._~!$&'()*+,;=%-]+)(?::[0-9]{0,5})?",
    re.ASCII,
)


class ApiDocsError(ValueError):
    """An upstream api-docs document could not be rewritten (the HTTP layer answers 502)."""


def _load_additions() -> tuple[dict[str, Any], dict[str, Any], tuple[str, ...]]:
    """Load the claim additions shipped in ``data/events_claim.json``."""
    raw = files("ari_broadcast_proxy").joinpath("data", "events_claim.json").read_bytes()
    data = orjson.loads(raw)
    return data["api"], data["models"], tuple(data["subTypes"])


CLAIM_API, CLAIM_MODELS, CLAIM_SUBTYPES = _load_additions()
"""The ``/events/claim`` api object, the two model objects (by id) and the subType names.

Treat these as read-only: :func:`rewrite_document` serialises them into its output.
"""


def rewrite_document(name: str, body: bytes, base_url: str) -> bytes:
    """Return ``body`` with ``basePath`` set to ``base_url``, plus the claim parts for events.json.

    ``name`` is the file name after ``/ari/api-docs/`` (e.g. ``events.json``). Key order is kept;
    anything already present upstream is left as it is. The result is compact JSON.
    Raises :class:`ApiDocsError` when ``body`` is not a JSON object or events.json is malformed.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiDocsError(f"upstream api-docs {name!r} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ApiDocsError(
            f"upstream api-docs {name!r} is a JSON {type(doc).__name__}, expected an object"
        )
    doc = _set_base_path(doc, base_url)
    if name == EVENTS_DOCUMENT:
        _add_claim(doc, name)
    return orjson.dumps(doc)


def _set_base_path(doc: dict[str, Any], base_url: str) -> dict[str, Any]:
    """Set ``basePath``; when absent, insert it after ``swaggerVersion`` (else at the end)."""
    if "basePath" in doc or "swaggerVersion" not in doc:
        doc["basePath"] = base_url
        return doc
    out: dict[str, Any] = {}
    for key, value in doc.items():
        out[key] = value
        if key == "swaggerVersion":
            out["basePath"] = base_url
    return out


def _section(doc: dict[str, Any], key: str, kind: type, name: str) -> Any:
    """Return ``doc[key]``, creating an empty ``kind`` if absent; reject a wrong type."""
    value = doc.setdefault(key, kind())
    if not isinstance(value, kind):
        raise ApiDocsError(
            f"upstream api-docs {name!r}: {key!r} is a JSON {type(value).__name__}, "
            f"expected {'an array' if kind is list else 'an object'}"
        )
    return value


def _add_claim(doc: dict[str, Any], name: str) -> None:
    """Add the claim api, models and Event subTypes that ``doc`` lacks (in place)."""
    apis: list[Any] = _section(doc, "apis", list, name)
    if not any(isinstance(api, dict) and api.get("path") == CLAIM_API["path"] for api in apis):
        apis.append(CLAIM_API)

    models: dict[str, Any] = _section(doc, "models", dict, name)
    for model_id, model in CLAIM_MODELS.items():
        models.setdefault(model_id, model)

    event = models.get("Event")
    if not isinstance(event, dict):
        return
    subtypes: list[Any] = _section(event, "subTypes", list, f"{name} models.Event")
    missing = [sub for sub in CLAIM_SUBTYPES if sub not in subtypes]
    if not missing:
        return
    anchors = (_SUBTYPE_ANCHOR, *CLAIM_SUBTYPES)
    present = [i for i, sub in enumerate(subtypes) if sub in anchors]
    at = present[-1] + 1 if present else len(subtypes)
    subtypes[at:at] = missing


def base_url_for(scheme: str, host_header: str | None, fallback_host: str) -> str:
    """Build the ARI base URL (``http(s)://host/ari``) a client used to reach the proxy.

    ``scheme`` is the request's scheme (``ws``/``wss`` map to ``http``/``https``).
    ``host_header`` is the request's Host header; when it is absent, empty or not a valid
    ``host[:port]``, ``fallback_host`` (the proxy's listen address in the same form) is used.
    """
    normalized = _SCHEMES.get(scheme.lower())
    if normalized is None:
        raise ValueError(f"unsupported scheme {scheme!r}")
    host = (host_header or "").strip()
    if not _HOST_RE.fullmatch(host):
        host = fallback_host
    return f"{normalized}://{host}/ari"
