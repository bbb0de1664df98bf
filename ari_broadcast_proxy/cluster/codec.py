"""A broadcast's offer as it travels between replicas (JSON in Redis and in messages)."""

from __future__ import annotations

from typing import Any

from ..broadcast.app_filter import AppFilter
from ..broadcast.dialplan import parse_broadcast_data
from ..broadcast.executor import Offer
from ..broadcast.presentation import Invocation

__all__ = ["offer_from_wire", "offer_to_wire"]


def offer_to_wire(offer: Offer) -> dict[str, Any]:
    """What another replica needs to present the offer as native (the options and the
    filter are read again from the raw StasisBroadcast data)."""
    invocation = offer.invocation
    return {
        "form": invocation.form,
        "data": invocation.raw_data,
        "context": invocation.context,
        "exten": invocation.exten,
        "priority": invocation.priority,
        "channel": offer.channel,
        "asterisk_id": offer.asterisk_id,
        "timestamp": offer.timestamp,
    }


def offer_from_wire(wire: dict[str, Any]) -> Offer:
    invocation = Invocation(
        wire["form"], wire["data"], wire["context"], wire["exten"], int(wire["priority"])
    )
    options = parse_broadcast_data(invocation.raw_data)
    return Offer(
        invocation=invocation,
        options=options,
        app_filter=AppFilter.compile(options.app_filter)[0],
        channel=wire["channel"],
        asterisk_id=wire.get("asterisk_id"),
        timestamp=wire["timestamp"],
    )
