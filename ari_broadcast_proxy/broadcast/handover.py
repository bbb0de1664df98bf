"""Sending a channel on from the broadcast application: into the winner's Stasis(), or back
to the dialplan with a verdict. Everything here is an upstream ARI call with a timeout.

The winner's StasisStart.args must equal native's. From the drop-in subroutine, when every
argument survives `move` (which splits appArgs on commas and drops empty ones), the channel
is moved into the winner's application in place: one call, and Asterisk switches
applications without running any dialplan; the Stasis(broadcast) line then returns SUCCESS
when the winner lets go, as native. Otherwise, and for the direct form, the proxy sets
ARI_BROADCAST_WINNER and `continue`s into the subroutine's labels (see asterisk-conf/
extensions.conf), where `Stasis(<winner>)` runs and a failure gives FAILED by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import re
from collections.abc import Awaitable, Coroutine, Iterator
from typing import Any, Literal

from ..errors import ProxyError
from ..upstream.rest import AriRest
from ..upstream.ws_rest import RestOverWebSocket
from .core import Verdict
from .presentation import Invocation, asterisk_timestamp

__all__ = ["ChannelGateway", "HandOverResult", "backoff", "stasis_data"]

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
    """Stasis() application data that starts the winner (any name) with exactly `args`.

    Every character Asterisk's argument splitter treats specially is backslash-escaped, in
    the application name as in the arguments (quoting would not do: brackets count even
    inside quotes, and a trailing `""` makes Asterisk add one more empty argument).
    """
    return ",".join(_STASIS_SPECIALS.sub(r"\\\1", a) for a in (winner, *args))


class HandOverResult(enum.Enum):
    DONE = "done"
    CHANNEL_GONE = "channel gone"
    FAILED = "failed"
    UNKNOWN = "no answer from Asterisk"  # it may or may not have taken the hand-over


class ChannelGateway:
    def __init__(self, rest: AriRest, broadcast_app: str, subroutine_context: str) -> None:
        self._rest = rest
        self._app = broadcast_app
        self._context = subroutine_context
        self._socket: RestOverWebSocket | None = None
        self._presets: dict[str, asyncio.Future[Any]] = {}  # direct form, in flight

    def attach(self, socket: RestOverWebSocket | None) -> None:
        """Carry channel calls over the broadcast application's socket (None: over HTTP)."""
        self._socket = socket

    async def _channel_calls(
        self, channel_id: str, calls: list[tuple[str, dict[str, Any]]], required: int = 0
    ) -> list[int]:
        """POST channels/{id}/{action} for each call, applied in order; their statuses."""
        return await (await self._start_calls(channel_id, calls, required))

    async def _start_calls(
        self, channel_id: str, calls: list[tuple[str, dict[str, Any]]], required: int = 0
    ) -> Coroutine[Any, Any, list[int]]:
        """Start the calls; awaiting the result gives their statuses. Only the first
        `required` calls (0: all) log their failures.

        Over the socket all are written before this returns, back to back (one round
        trip); over HTTP they go one after the other (separate connections would not keep
        the order), when the result is awaited."""
        requests = [("POST", f"channels/{channel_id}/{action}", params) for action, params in calls]
        socket = self._socket
        if socket is not None:
            statuses = socket.statuses(socket.submit(requests))
        else:
            statuses = self._over_http(requests)
        logged = [action for action, _ in calls][: required or None]
        return self._logged(channel_id, logged, statuses)

    async def _over_http(self, requests: list[tuple[str, str, dict[str, Any]]]) -> list[int]:
        statuses: list[int] = []
        for method, path, params in requests:
            statuses.append((await self._rest.call(method, path, params)).status_code)
            if statuses[-1] >= 300:
                break  # what follows depended on this one
        return statuses

    async def _logged(
        self, channel_id: str, actions: list[str], statuses: Awaitable[list[int]]
    ) -> list[int]:
        answered = await statuses
        for action, status in zip(actions, answered, strict=False):
            if status >= 300 and status != 404:
                log.error(
                    "channel %s: %s -> %d",
                    channel_id,
                    action,
                    status,
                    extra={"channel_id": channel_id},
                )
        return answered

    @staticmethod
    def moves(invocation: Invocation, args: tuple[str, ...]) -> bool:
        """Whether the hand-over is a `move` (subroutine form, every argument survives it)
        rather than a `continue` to the subroutine's labels."""
        return invocation.form == "subroutine" and all(arg and "," not in arg for arg in args)

    async def preset_status(self, channel_id: str) -> None:
        """Direct form: ARI_BROADCAST_STATUS is TIMEOUT from the start of the broadcast, the
        verdict a hangup during it leaves (native: STASISSTATUS=TIMEOUT); a hand-over or a
        return replaces it. Over the broadcast socket those are written after this anyway;
        over HTTP (separate connections keep no order) they wait for it."""
        task = asyncio.current_task()
        assert task is not None
        self._presets[channel_id] = task
        try:
            status = {"variable": "ARI_BROADCAST_STATUS", "value": Verdict.TIMEOUT.value}
            await self._channel_calls(channel_id, [("variable", status)])
        finally:
            self._presets.pop(channel_id, None)

    async def _after_preset(self, channel_id: str) -> None:
        preset = self._presets.get(channel_id)
        if preset is not None and self._socket is None:
            with contextlib.suppress(Exception):
                await asyncio.shield(preset)

    async def hand_over(
        self, channel_id: str, invocation: Invocation, winner: str, args: tuple[str, ...]
    ) -> Coroutine[Any, Any, HandOverResult]:
        """Start handing the channel to the winner; awaiting the result gives Asterisk's
        verdict. Over the broadcast socket the calls are written before this returns.

        Moves the channel (subroutine form, `move`-safe args), or sets ARI_BROADCAST_WINNER
        (and the return address for the direct form) and continues to the subroutine's
        `claimed` label (`direct` extension). DONE means Asterisk accepted it; a move to an
        application that is gone is reported later (ApplicationMoveFailed)."""
        if self.moves(invocation, args):
            move = {"app": winner, "appArgs": ",".join(args)} if args else {"app": winner}
            # The subroutine's hangup handler keeps the winner's STASISSTATUS once this is
            # set; after the move, so it costs the hand-over nothing (if the winner already
            # let go, the channel has left the subroutine and this answers 409: harmless).
            handed = {"variable": "LOCAL(ARI_BROADCAST_HANDED)", "value": "1"}
            calls = [("move", move), ("variable", handed)]
            return self._verdict(
                channel_id, calls, await self._start_calls(channel_id, calls, required=1), 1
            )
        calls = [
            ("variable", {"variable": "ARI_BROADCAST_WINNER", "value": stasis_data(winner, args)})
        ]
        await self._after_preset(channel_id)
        target: dict[str, Any] = {"context": self._context}
        if invocation.form == "subroutine":
            target.update(extension="s", label="claimed")
        else:
            address = f"{invocation.context},{invocation.exten},{invocation.priority + 1}"
            calls.append(("variable", {"variable": "ARI_BROADCAST_RETURN", "value": address}))
            target.update(extension="direct", priority=1)
        calls.append(("continue", target))
        return self._verdict(
            channel_id, calls, await self._start_calls(channel_id, calls), len(calls)
        )

    async def _verdict(
        self,
        channel_id: str,
        calls: list[tuple[str, dict[str, Any]]],
        pending: Awaitable[list[int]],
        counted: int,
    ) -> HandOverResult:
        """The hand-over's result from the statuses of its first `counted` calls."""
        statuses = (await pending)[:counted]
        if 404 in statuses:
            with contextlib.suppress(ProxyError):
                if not await self._gone(channel_id, calls[statuses.index(404)]):
                    return HandOverResult.FAILED
            return HandOverResult.CHANNEL_GONE
        if len(statuses) < counted or any(status >= 300 for status in statuses):
            return HandOverResult.FAILED
        return HandOverResult.DONE

    async def resume(self, channel_id: str, invocation: Invocation, verdict: Verdict) -> bool:
        """Back to the dialplan with a verdict, retried so no channel is left stranded.
        False if Asterisk could not be told (the controller's sweep, or the recovery after a
        reconnect, sends it back later)."""
        calls: list[tuple[str, dict[str, Any]]]
        if invocation.form == "subroutine":
            label = verdict.value.lower()
            calls = [("continue", {"context": self._context, "extension": "s", "label": label})]
        else:
            status_var = {"variable": "ARI_BROADCAST_STATUS", "value": verdict.value}
            calls = [("variable", status_var), ("continue", {})]
            await self._after_preset(channel_id)
        if verdict is Verdict.FAILED and not await self._still_parked(channel_id):
            return True  # a hand-over Asterisk did take after all: the channel is not ours
        delays = backoff(0.1, 2.0, 2.0)
        for _ in range(_RESUME_ATTEMPTS):
            try:
                statuses = await self._channel_calls(channel_id, calls)
                if len(statuses) == len(calls) and statuses[-1] < 300:
                    return True
                if 404 in statuses:
                    if await self._gone(channel_id, calls[statuses.index(404)]):
                        return True  # it hung up
                    # Its verdict cannot reach the dialplan; it is not left here for that:
                    # it goes on at the next priority.
                    calls = [("continue", {})]
                    continue
            except ProxyError as exc:
                log.warning(
                    "channel %s: returning to the dialplan failed: %s",
                    channel_id,
                    exc.message,
                    extra={"channel_id": channel_id},
                )
            if not await self._still_parked(channel_id):
                return True  # a try that timed out went through after all, or it hung up
            await asyncio.sleep(next(delays))
        log.error(
            "channel %s: could not return it to the dialplan",
            channel_id,
            extra={"channel_id": channel_id},
        )
        return False

    async def _gone(self, channel_id: str, call: tuple[str, dict[str, Any]]) -> bool:
        """After Asterisk answered 404 to `call`: whether the channel hung up. Not so if it
        still exists: then `continue` found no such label in the subroutine context (an
        edited copy), which is logged."""
        action, params = call
        if action != "continue" or not await self.exists(channel_id):
            return True
        log.error(
            "channel %s: continue %s answered 404 although the channel exists: [%s] has no "
            "label for it (edited? compare it with the shipped asterisk-conf/extensions.conf)",
            channel_id,
            params,
            self._context,
            extra={"channel_id": channel_id},
        )
        return False

    async def _still_parked(self, channel_id: str) -> bool:
        """Whether the channel still waits in the broadcast application, where a resume may
        safely be sent again (anywhere else `continue` would disturb someone else's call)."""
        try:
            return await self.parked(channel_id)
        except ProxyError:
            return True

    async def parked(self, channel_id: str) -> bool:
        """Whether the channel is in the broadcast application now (ProxyError: unknown)."""
        return channel_id in await self.channels_in(self._app)

    async def invocation_of(self, channel_id: str) -> Invocation | None:
        """Where a channel we know nothing about sits (for sending it back)."""
        response = await self._rest.call("GET", f"channels/{channel_id}")
        if response.status_code != 200:
            return None
        dialplan = response.json()["dialplan"]
        form: Literal["subroutine", "direct"] = (
            "subroutine" if dialplan["context"] == self._context else "direct"
        )
        return Invocation(form, "", dialplan["context"], dialplan["exten"], dialplan["priority"])

    async def stasis_start_of(self, channel_id: str) -> dict[str, Any] | None:
        """The StasisStart a channel parked in the broadcast application came with, read
        back from Asterisk (its snapshot, and Stasis()'s arguments from its app_data), for
        a replica that takes over a call nobody recorded."""
        response = await self._rest.call("GET", f"channels/{channel_id}")
        if response.status_code != 200:
            return None
        channel = response.json()
        app_name, _, args = channel.get("dialplan", {}).get("app_data", "").partition(",")
        if app_name != self._app:
            return None
        return {
            "type": "StasisStart",
            "timestamp": asterisk_timestamp(),
            "args": args.split(",") if args else [],
            "channel": channel,
            "application": self._app,
        }

    async def channels_in(self, app: str) -> list[str]:
        response = await self._rest.call("GET", f"applications/{app}")
        return response.json().get("channel_ids", []) if response.status_code == 200 else []

    async def exists(self, channel_id: str) -> bool:
        return (await self._rest.call("GET", f"channels/{channel_id}")).status_code != 404

    async def live_channels(self) -> set[str] | None:
        """Every channel id on Asterisk now (None if it would not say)."""
        response = await self._rest.call("GET", "channels")
        if response.status_code != 200:
            return None
        return {c.get("id", "") for c in response.json() if isinstance(c, dict)}
