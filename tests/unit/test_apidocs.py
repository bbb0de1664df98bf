"""Tests for ari_broadcast_proxy.apidocs (Swagger api-docs rewriting)."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import orjson
import pytest

from ari_broadcast_proxy.apidocs import (
    CLAIM_API,
    CLAIM_MODELS,
    CLAIM_SUBTYPES,
    ApiDocsError,
    base_url_for,
    rewrite_document,
)

DATA = Path(__file__).parent / "data"
BASE = "http://127.0.0.1:8089/ari"
# Optional: the untouched Asterisk 22.10.1 documents, used only when this machine has them.

CLAIM_DATA: dict[str, Any] = json.loads(
    files("ari_broadcast_proxy").joinpath("data", "events_claim.json").read_text("utf-8")
)


def _old_events() -> bytes:
    return (DATA / "events_without_claim.json").read_bytes()


def _rewrite(name: str, body: bytes | dict[str, Any], base: str = BASE) -> dict[str, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return orjson.loads(rewrite_document(name, raw, base))


def _claim_op(doc: dict[str, Any]) -> dict[str, Any]:
    [api] = [a for a in doc["apis"] if a["path"] == "/events/claim"]
    [op] = api["operations"]
    return op


# --- data file --------------------------------------------------------------------------------


def test_data_file_holds_exactly_the_claim_pieces() -> None:
    assert list(CLAIM_DATA) == ["api", "models", "subTypes"]
    assert CLAIM_DATA["api"]["path"] == "/events/claim"
    assert CLAIM_DATA["api"]["description"] == "Broadcast channel claim operations"
    assert list(CLAIM_DATA["models"]) == ["CallBroadcast", "CallClaimed"]
    assert CLAIM_DATA["subTypes"] == ["CallBroadcast", "CallClaimed"]
    assert CLAIM_DATA["api"] == CLAIM_API
    assert CLAIM_DATA["models"] == CLAIM_MODELS
    assert CLAIM_SUBTYPES == ("CallBroadcast", "CallClaimed")


def test_fixture_really_lacks_the_claim_pieces() -> None:
    doc = json.loads(_old_events())
    assert all(a["path"] != "/events/claim" for a in doc["apis"])
    assert not set(CLAIM_MODELS) & set(doc["models"])
    assert not set(CLAIM_SUBTYPES) & set(doc["models"]["Event"]["subTypes"])
    assert {"Message", "Event"} <= set(doc["models"])


# --- basePath ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("resources.json", DATA / "resources.json"),
        ("events.json", DATA / "events_without_claim.json"),
    ],
)
def test_base_path_rewritten_in_fixture_docs(name: str, path: Path) -> None:
    original = json.loads(path.read_bytes())
    assert original["basePath"] == "http://localhost:8088/ari"
    doc = _rewrite(name, path.read_bytes())
    assert doc["basePath"] == BASE
    assert list(doc) == list(original)  # key order preserved


def test_resources_json_only_base_path_changes() -> None:
    original = json.loads((DATA / "resources.json").read_bytes())
    doc = _rewrite("resources.json", (DATA / "resources.json").read_bytes())
    assert doc == {**original, "basePath": BASE}
    assert original["swaggerVersion"] == "1.1"
    assert {"path": "/api-docs/events.{format}", "description": "WebSocket resource"} in doc["apis"]


def test_other_documents_untouched_except_base_path() -> None:
    channels = {
        "apiVersion": "2.0.0",
        "swaggerVersion": "1.2",
        "basePath": "http://10.0.0.1:8088/ari",
        "resourcePath": "/api-docs/channels.{format}",
        "apis": [{"path": "/channels", "operations": []}],
        "models": {"Event": {"id": "Event", "subTypes": ["RESTResponse"]}},
    }
    doc = _rewrite("channels.json", channels, "https://proxy.example:443/ari")
    assert doc == {**channels, "basePath": "https://proxy.example:443/ari"}
    assert list(doc) == list(channels)


def test_missing_base_path_inserted_after_swagger_version() -> None:
    doc = _rewrite("sounds.json", {"apiVersion": "2.0.0", "swaggerVersion": "1.2", "apis": []})
    assert list(doc) == ["apiVersion", "swaggerVersion", "basePath", "apis"]
    assert doc["basePath"] == BASE
    assert list(_rewrite("x.json", {"a": 1})) == ["a", "basePath"]


def test_output_is_compact_bytes() -> None:
    out = rewrite_document("resources.json", (DATA / "resources.json").read_bytes(), BASE)
    assert isinstance(out, bytes)
    assert b"\n" not in out
    assert b'"basePath":"http://127.0.0.1:8089/ari"' in out


# --- events.json additions --------------------------------------------------------------------


def test_claim_operation_added() -> None:
    original = json.loads(_old_events())
    doc = _rewrite("events.json", _old_events())
    paths = [a["path"] for a in doc["apis"]]
    assert paths == [*(a["path"] for a in original["apis"]), "/events/claim"]
    assert doc["apis"][-1] == CLAIM_DATA["api"]

    op = _claim_op(doc)
    assert op["httpMethod"] == "POST"
    assert op["nickname"] == "claimChannel"
    assert op["responseClass"] == "void"
    assert op["since"] == ["20.17.0", "22.7.0", "23.1.0"]
    params = {p["name"]: p for p in op["parameters"]}
    assert list(params) == ["channelId", "application"]
    for param in params.values():
        assert param["required"] is True
        assert param["paramType"] == "query"
        assert param["dataType"] == "string"
        assert param["allowMultiple"] is False
    assert [e["code"] for e in op["errorResponses"]] == [404, 409]


def test_claim_models_added_exactly() -> None:
    original = json.loads(_old_events())
    doc = _rewrite("events.json", _old_events())
    assert list(doc["models"]) == [*original["models"], "CallBroadcast", "CallClaimed"]
    for model_id, model in CLAIM_DATA["models"].items():
        assert doc["models"][model_id] == model
    # Untouched models keep their content.
    for model_id in original["models"]:
        if model_id != "Event":
            assert doc["models"][model_id] == original["models"][model_id]


def test_event_subtypes_after_rest_response() -> None:
    original = json.loads(_old_events())
    doc = _rewrite("events.json", _old_events())
    subtypes = doc["models"]["Event"]["subTypes"]
    assert subtypes == [*original["models"]["Event"]["subTypes"], "CallBroadcast", "CallClaimed"]
    assert subtypes[-3:] == ["RESTResponse", "CallBroadcast", "CallClaimed"]
    assert doc["models"]["Message"] == original["models"]["Message"]


def test_whole_events_document_matches_expected() -> None:
    expected = json.loads(_old_events())
    expected["basePath"] = BASE
    expected["apis"].append(CLAIM_DATA["api"])
    expected["models"].update(CLAIM_DATA["models"])
    expected["models"]["Event"]["subTypes"] += CLAIM_DATA["subTypes"]
    out = rewrite_document("events.json", _old_events(), BASE)
    assert out == orjson.dumps(expected)


def _events(subtypes: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "swaggerVersion": "1.2",
        "basePath": "http://localhost:8088/ari",
        "apis": [{"path": "/events", "operations": []}],
        "models": {"Event": {"id": "Event", "subTypes": subtypes}, **extra},
    }


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (["A", "RESTResponse", "B"], ["A", "RESTResponse", "CallBroadcast", "CallClaimed", "B"]),
        (["A", "B"], ["A", "B", "CallBroadcast", "CallClaimed"]),
        ([], ["CallBroadcast", "CallClaimed"]),
        (
            ["RESTResponse", "CallBroadcast", "B"],
            ["RESTResponse", "CallBroadcast", "CallClaimed", "B"],
        ),
        (["CallClaimed", "A"], ["CallClaimed", "CallBroadcast", "A"]),
        (["CallBroadcast", "A", "CallClaimed"], ["CallBroadcast", "A", "CallClaimed"]),
    ],
)
def test_subtypes_positions_and_no_duplicates(before: list[str], after: list[str]) -> None:
    doc = _rewrite("events.json", _events(before))
    assert doc["models"]["Event"]["subTypes"] == after


def test_event_without_subtypes_gets_them() -> None:
    body = _events([])
    del body["models"]["Event"]["subTypes"]
    doc = _rewrite("events.json", body)
    assert doc["models"]["Event"]["subTypes"] == ["CallBroadcast", "CallClaimed"]


def test_existing_claim_parts_left_as_upstream_has_them() -> None:
    custom_api = {"path": "/events/claim", "description": "custom", "operations": []}
    custom_model = {"id": "CallClaimed", "properties": {}}
    body = _events(["RESTResponse"], CallClaimed=custom_model)
    body["apis"].insert(0, custom_api)
    doc = _rewrite("events.json", body)
    assert doc["apis"] == [custom_api, {"path": "/events", "operations": []}]
    assert doc["models"]["CallClaimed"] == custom_model
    assert list(doc["models"]) == ["Event", "CallClaimed", "CallBroadcast"]
    assert doc["models"]["CallBroadcast"] == CLAIM_DATA["models"]["CallBroadcast"]


def test_idempotent() -> None:
    once = rewrite_document("events.json", _old_events(), BASE)
    assert rewrite_document("events.json", once, BASE) == once
    other = rewrite_document("events.json", once, "http://other:1/ari")
    assert orjson.loads(other) == {**orjson.loads(once), "basePath": "http://other:1/ari"}


def test_complete_document_changes_only_base_path() -> None:
    complete = json.loads(rewrite_document("events.json", _old_events(), "http://old:1/ari"))
    complete["apis"].insert(0, complete["apis"].pop())  # claim api elsewhere: left in place
    out = _rewrite("events.json", json.dumps(complete).encode())
    assert out == {**complete, "basePath": BASE}
    assert list(out["models"]) == list(complete["models"])


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"{", b"\xff\xfe", b"[]", b'"str"', b"1", b"null", b'[{"basePath": 1}]'],
)
def test_invalid_body_raises(body: bytes) -> None:
    with pytest.raises(ApiDocsError, match=r"channels\.json"):
        rewrite_document("channels.json", body, BASE)


def test_api_docs_error_is_value_error() -> None:
    assert issubclass(ApiDocsError, ValueError)


@pytest.mark.parametrize(
    "body",
    [
        {"apis": {}, "models": {}},
        {"apis": [], "models": []},
        {"apis": [], "models": {"Event": {"id": "Event", "subTypes": "RESTResponse"}}},
    ],
)
def test_malformed_events_sections_raise(body: dict[str, Any]) -> None:
    with pytest.raises(ApiDocsError, match=r"events\.json"):
        rewrite_document("events.json", json.dumps(body).encode(), BASE)


def test_events_without_sections_get_them() -> None:
    doc = _rewrite("events.json", {"swaggerVersion": "1.2"})
    assert doc["apis"] == [CLAIM_DATA["api"]]
    assert doc["models"] == CLAIM_DATA["models"]


# --- base_url_for -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "host", "expected"),
    [
        ("http", "pbx.example:8089", "http://pbx.example:8089/ari"),
        ("https", "pbx.example", "https://pbx.example/ari"),
        ("HTTP", "10.1.2.3:80", "http://10.1.2.3:80/ari"),
        ("ws", "[::1]:8089", "http://[::1]:8089/ari"),
        ("wss", "pbx.example:443", "https://pbx.example:443/ari"),
        ("http", " pbx.example ", "http://pbx.example/ari"),
    ],
)
def test_base_url_for_with_host(scheme: str, host: str, expected: str) -> None:
    assert base_url_for(scheme, host, "127.0.0.1:8089") == expected


@pytest.mark.parametrize(
    "host", [None, "", "   ", "evil/x", "a b", "u@h", "h?x", "::1", "h:123456"]
)
def test_base_url_for_falls_back(host: str | None) -> None:
    assert base_url_for("http", host, "127.0.0.1:8089") == "http://127.0.0.1:8089/ari"


def test_base_url_for_rejects_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="ftp"):
        base_url_for("ftp", "h", "127.0.0.1:8089")
