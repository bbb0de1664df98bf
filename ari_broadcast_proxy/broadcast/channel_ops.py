"""Which ARI requests touch a channel the broadcast feature cares about, over HTTP and over
REST-over-WebSocket alike: control calls Asterisk would refuse while the channel is on offer
(native: not in Stasis yet), and calls that end the winner's Stasis session."""

from __future__ import annotations

import re

__all__ = ["NOT_IN_STASIS", "STASIS_CONTROL", "controlled_channel", "released_channel"]

NOT_IN_STASIS = "Channel not in Stasis application"  # Asterisk's 409 message

# Operations Asterisk refuses with 409 "Channel not in Stasis application" (find_control()).
STASIS_CONTROL = frozenset(
    {
        "continue",
        "move",
        "redirect",
        "answer",
        "ring",
        "mute",
        "dtmf",
        "hold",
        "moh",
        "silence",
        "play",
        "record",
        "dial",
    }
)
_CHANNEL_OP = re.compile(r"^channels/([^/?]+)/([^/?]+)")
# Requests that end a channel's Stasis session when Asterisk accepts them: continue, hangup.
_RELEASES = {
    "POST": re.compile(r"^channels/([^/?]+)/continue(?:\?|$)"),
    "DELETE": re.compile(r"^channels/([^/?]+)(?:\?|$)"),
}


def controlled_channel(method: str, path: str) -> str | None:
    """The channel a Stasis control call (any method but GET) is about, else None.
    `path` is below /ari/, decoded, without a leading slash."""
    if method == "GET":
        return None
    match = _CHANNEL_OP.match(path)
    return match.group(1) if match and match.group(2) in STASIS_CONTROL else None


def released_channel(method: str, path: str) -> str | None:
    """The channel whose Stasis session a successful `continue` or hangup ends, else None."""
    pattern = _RELEASES.get(method)
    match = pattern.match(path) if pattern else None
    return match.group(1) if match else None
