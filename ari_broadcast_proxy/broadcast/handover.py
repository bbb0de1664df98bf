"""Sending a channel on from the broadcast application: into the winner's Stasis(), or back
to the dialplan with a verdict. Everything here is an upstream ARI call with a timeout.

Both go through `continue` into the drop-in subroutine's labels (see asterisk-conf/
extensions.conf), not `move`: `move` drops empty arguments, the winner's StasisStart.args
must equal native's, and a failed `Stasis(<winner>)` gives the dialplan FAILED by itself.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import re
from collections.abc import Iterator
from typing import Any

from ..errors import ProxyError
from ..upstream.rest import UpstreamRest
from .core import Verdict
from .presentation import Invocation

__all__ = ["Dialplan", "HandOverResult", "backoff", "stasis_data"]

log = logging.getLogger(__name__)

_STASIS_SPECIALS = re.compile(r'([,"\\()\[\]])')
_RESUME_ATTEMPTS = 6


def backoff(initial: float = 0.2, factor: float = 2.0, cap: float = 10.0) -> Iterator[float]:
    """Retry delays: 0.2, 0.4, 0.8 ... capped, with jitter."""
    delay = initial
    while True:
        yield delay * random.uniform(0.8, 1.2)
        delay = min(delay * factor, cap)


def stasis_data(winner: str, args: tuple[str, ...]) -> str:
    """Stasis() application data that gives the winner exactly `args`.

    Every character Asterisk's argument splitter treats specially is backslash-escaped
    (quoting would not do: brackets count even inside quotes, and a trailing `""` makes
    Asterisk add one more empty argument).
    """
    return ",".join([winner, *(_STASIS_SPECIALS.sub(r"\\\1", a) for a in args)])


class HandOverResult(enum.Enum):
    DONE = "done"
    CHANNEL_GONE = "channel gone"
    FAILED = "failed"


class Dialplan:
    def __init__(self, rest: UpstreamRest, subroutine_context: str) -> None:
        self._rest = rest
        self._context = subroutine_context

    async def _channel_call(self, channel_id: str, action: str, params: dict[str, Any]) -> int:
        response = await self._rest.call("POST", f"channels/{channel_id}/{action}", params)
        if response.status_code >= 300 and response.status_code != 404:
            log.error(
                "channel %s: %s -> %d %s",
                channel_id,
                action,
                response.status_code,
                response.text[:200],
                extra={"channel_id": channel_id},
            )
        return response.status_code

    async def hand_over(
        self, channel_id: str, invocation: Invocation, winner: str, args: tuple[str, ...]
    ) -> HandOverResult:
        """Set ARI_BROADCAST_WINNER (and the return address for the direct form), then
        continue to the subroutine's `claimed` label (`direct` extension)."""
        variables = {"ARI_BROADCAST_WINNER": stasis_data(winner, args)}
        if invocation.form == "direct":
            variables["ARI_BROADCAST_RETURN"] = (
                f"{invocation.context},{invocation.exten},{invocation.priority + 1}"
            )
        statuses = await asyncio.gather(
            *(
                self._channel_call(channel_id, "variable", {"variable": k, "value": v})
                for k, v in variables.items()
            )
        )
        if 404 in statuses:
            return HandOverResult.CHANNEL_GONE
        if any(status >= 300 for status in statuses):
            return HandOverResult.FAILED
        target: dict[str, Any] = {"context": self._context}
        if invocation.form == "subroutine":
            target.update(extension="s", label="claimed")
        else:
            target.update(extension="direct", priority=1)
        status = await self._channel_call(channel_id, "continue", target)
        if status == 404:
            return HandOverResult.CHANNEL_GONE
        return HandOverResult.DONE if status < 300 else HandOverResult.FAILED

    async def resume(self, channel_id: str, invocation: Invocation, verdict: Verdict) -> bool:
        """Back to the dialplan with a verdict, retried so no channel is left stranded.
        False if Asterisk could not be told (the next reconnect's recovery retries)."""
        delays = backoff(0.1, 2.0, 2.0)
        for _ in range(_RESUME_ATTEMPTS):
            try:
                if invocation.form == "subroutine":
                    target = {
                        "context": self._context,
                        "extension": "s",
                        "label": verdict.value.lower(),
                    }
                    status = await self._channel_call(channel_id, "continue", target)
                else:
                    status = await self._channel_call(
                        channel_id,
                        "variable",
                        {"variable": "ARI_BROADCAST_STATUS", "value": verdict.value},
                    )
                    if status < 300:
                        status = await self._channel_call(channel_id, "continue", {})
                if status < 300 or status == 404:
                    return True
            except ProxyError as exc:
                log.warning(
                    "channel %s: returning to the dialplan failed: %s",
                    channel_id,
                    exc.message,
                    extra={"channel_id": channel_id},
                )
            await asyncio.sleep(next(delays))
        log.error(
            "channel %s: could not return it to the dialplan",
            channel_id,
            extra={"channel_id": channel_id},
        )
        return False

    async def invocation_of(self, channel_id: str) -> Invocation | None:
        """Where a channel we know nothing about sits (for sending it back)."""
        response = await self._rest.call("GET", f"channels/{channel_id}")
        if response.status_code != 200:
            return None
        dialplan = response.json()["dialplan"]
        form = "subroutine" if dialplan["context"] == self._context else "direct"
        return Invocation(form, "", dialplan["context"], dialplan["exten"], dialplan["priority"])

    async def channels_in(self, app: str) -> list[str]:
        response = await self._rest.call("GET", f"applications/{app}")
        return response.json().get("channel_ids", []) if response.status_code == 200 else []

    async def exists(self, channel_id: str) -> bool:
        return (await self._rest.call("GET", f"channels/{channel_id}")).status_code != 404
