"""Claim parameters, read exactly as Asterisk's generated glue reads them.

Query string (form body variables merged ahead of it, the last occurrence winning), then a
JSON body overriding both; a non-string JSON value counts as missing. Messages are native's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import BadRequest

__all__ = [
    "CLAIM_CONFLICT",
    "CLAIM_NOT_FOUND",
    "CLAIM_NOT_OFFERED",
    "ClaimParams",
    "claim_params",
]

CLAIM_NOT_FOUND = "Channel not found or not in broadcast state"
CLAIM_CONFLICT = "Channel has already been claimed by another application"
CLAIM_NOT_OFFERED = "Application was not offered this channel"


@dataclass(frozen=True)
class ClaimParams:
    channel_id: str
    application: str


def claim_params(params: Iterable[tuple[str, str]], json_body: Any | None = None) -> ClaimParams:
    """Validate a claim's parameters; BadRequest carries native's message."""
    values: dict[str, str | None] = {}
    for name, value in params:
        if name in ("channelId", "application"):
            values[name] = value
    if isinstance(json_body, dict):
        for name in ("channelId", "application"):
            if name in json_body:
                value = json_body[name]
                values[name] = value if isinstance(value, str) else None
    channel_id, application = values.get("channelId"), values.get("application")
    if not channel_id:
        raise BadRequest("channelId parameter is required")
    if not application:
        raise BadRequest("application parameter is required")
    return ClaimParams(channel_id, application)
