"""Claim parameters read as Asterisk's generated glue reads them."""

from __future__ import annotations

import pytest

from ari_broadcast_proxy.broadcast.claim_params import ClaimParams, claim_params
from ari_broadcast_proxy.errors import BadRequest

CHANNEL, APP = ("channelId", "1.2"), ("application", "a")


def test_query_parameters() -> None:
    assert claim_params([CHANNEL, APP]) == ClaimParams("1.2", "a")


def test_the_last_occurrence_wins() -> None:
    params = [("channelId", "1.1"), APP, ("channelId", "1.2")]
    assert claim_params(params).channel_id == "1.2"


def test_json_body_overrides_query() -> None:
    assert claim_params([CHANNEL, APP], {"channelId": "9.9"}) == ClaimParams("9.9", "a")


@pytest.mark.parametrize(
    ("params", "body", "message"),
    [
        ([], None, "channelId parameter is required"),
        ([APP], None, "channelId parameter is required"),
        ([("channelId", ""), APP], None, "channelId parameter is required"),
        ([CHANNEL], None, "application parameter is required"),
        ([CHANNEL, ("application", "")], None, "application parameter is required"),
        # A non-string JSON value counts as missing, even over a good query value.
        ([CHANNEL, APP], {"channelId": 12}, "channelId parameter is required"),
        ([CHANNEL, APP], {"application": None}, "application parameter is required"),
    ],
)
def test_missing_parameters_give_natives_messages(
    params: list[tuple[str, str]], body: object, message: str
) -> None:
    with pytest.raises(BadRequest) as refused:
        claim_params(params, body)
    assert refused.value.message == message
    assert refused.value.status == 400
