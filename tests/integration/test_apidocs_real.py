"""The api-docs rewrite on the documents the real Asterisk 22.10.1 serves."""

from __future__ import annotations

import json

import orjson

from ari_broadcast_proxy.apidocs import CLAIM_MODELS, CLAIM_SUBTYPES, rewrite_document

from ..ari import Ari

BASE = "http://proxy.example:8089/ari"


async def _documents(ari: Ari) -> dict[str, bytes]:
    listing = (await ari.http.get("api-docs/resources.json")).json()
    names = ["resources.json"] + [
        api["path"].rsplit("/", 1)[1].replace("{format}", "json") for api in listing["apis"]
    ]
    return {name: (await ari.http.get(f"api-docs/{name}")).content for name in names}


async def test_every_real_document_only_changes_base_path(ari: Ari) -> None:
    documents = await _documents(ari)
    assert len(documents) > 10
    for name, body in documents.items():
        original = json.loads(body)
        rewritten = json.loads(rewrite_document(name, body, BASE))
        assert rewritten == {**original, "basePath": BASE}, name
        assert list(rewritten) == list(original), name


async def test_a_pre_broadcast_events_document_gets_exactly_the_real_claim_parts(ari: Ari) -> None:
    body = (await ari.http.get("api-docs/events.json")).content
    real = json.loads(body)
    stripped = json.loads(body)
    stripped["apis"] = [a for a in stripped["apis"] if a["path"] != "/events/claim"]
    for model_id in CLAIM_MODELS:
        del stripped["models"][model_id]
    event = stripped["models"]["Event"]
    event["subTypes"] = [s for s in event["subTypes"] if s not in CLAIM_SUBTYPES]
    assert stripped != real
    out = rewrite_document("events.json", json.dumps(stripped).encode(), BASE)
    assert out == orjson.dumps({**real, "basePath": BASE})
