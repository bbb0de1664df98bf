"""The broadcast feature's I/O shell around the pure core.

It owns the proxy's own upstream events socket for the broadcast application, turns each
StasisStart there into an offer, carries out the core's commands (CallBroadcast fan-out,
timers, the hand-over to the winner, the return to the dialplan), answers claims, and hooks
into every downstream session to present broadcast channels as native does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from ..config import Config
from ..errors import ProxyError
from ..registry import AppRegistry
from ..upstream.rest import UpstreamRest
from ..upstream.websocket import HandshakeRefused, open_events_socket
from .app_filter import AppFilter
from .core import (
    ArmTimer,
    Broadcast,
    BroadcastCore,
    CancelTimer,
    ClaimOutcome,
    Command,
    HandOver,
    ResumeDialplan,
    SendCallBroadcast,
    SendCallClaimed,
    State,
    Verdict,
)
from .dialplan import BroadcastOptions, parse_broadcast_data
from .presentation import (
    Invocation,
    InvocationError,
    Presenter,
    asterisk_timestamp,
    parse_invocation,
)

__all__ = ["BroadcastController", "Offer", "backoff"]

log = logging.getLogger(__name__)

HANDOVER_WATCHDOG = 5.0  # seconds for the winner's StasisStart to show up after `continue`
SWEEP_INTERVAL = 30.0  # how often claimed broadcasts are checked against live channels


def backoff(initial: float = 0.2, factor: float = 2.0, cap: float = 10.0) -> Iterator[float]:
    """Reconnection delays: 0.2, 0.4, 0.8 ... capped, with jitter."""
    delay = initial
    while True:
        yield delay * random.uniform(0.8, 1.2)
        delay = min(delay * factor, cap)


@dataclass
class Offer:
    """What the shell keeps per broadcast (the core's opaque context)."""

    invocation: Invocation
    options: BroadcastOptions
    app_filter: AppFilter
    channel: dict[str, Any]  # the presented snapshot
    asterisk_id: str | None
    timestamp: str


_STASIS_SPECIALS = re.compile(r'([,"\\()\[\]])')


def stasis_data(winner: str, args: tuple[str, ...]) -> str:
    """Stasis() application data that gives the winner exactly `args`.

    Every character Asterisk's argument splitter treats specially is backslash-escaped
    (quoting would not do: brackets count even inside quotes, and a trailing `""` makes
    Asterisk add one more empty argument).
    """
    return ",".join([winner, *(_STASIS_SPECIALS.sub(r"\\\1", a) for a in args)])


class BroadcastController:
    def __init__(
        self,
        config: Config,
        rest: UpstreamRest,
        registry: AppRegistry,
        presenter: Presenter,
        *,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        self._config = config
        self._rest = rest
        self._registry = registry
        self.presenter = presenter
        self.core: BroadcastCore[Offer] = BroadcastCore(rng)
        self._wall_clock = wall_clock
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._claimed = 0  # broadcasts in State.CLAIMED, to skip frame inspection when zero
        self.asterisk_id: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self.ready

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run_upstream(), name="broadcast-app")

    async def stop(self, timeout: float = 5.0) -> None:
        """Send every channel still on offer back to the dialplan, then stop."""
        commands = self.core.drain()
        self._execute(commands)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        for task in list(self._tasks):
            task.cancel()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _wall(self) -> str:
        return asterisk_timestamp(self._wall_clock() if self._wall_clock else None)

    # -- the broadcast application's own socket -----------------------------------------------

    async def _run_upstream(self) -> None:
        url = f"{self._config.upstream_ws}/events?app={self._config.broadcast_app}"
        token = base64.b64encode(f"{self._config.username}:{self._config.password}".encode())
        headers = {"authorization": "Basic " + token.decode()}
        for delay in backoff():
            try:
                socket = await open_events_socket(
                    url, headers, timeout=self._config.upstream_timeout
                )
            except HandshakeRefused as refused:
                log.error(
                    "Asterisk refused the broadcast application socket with %d %s; retrying",
                    refused.status,
                    refused.body[:200].decode(errors="replace"),
                )
            except ProxyError as exc:
                log.warning("broadcast application not connected: %s; retrying", exc.message)
            else:
                async with socket:
                    log.info(
                        "broadcast application %r registered on Asterisk",
                        self._config.broadcast_app,
                    )
                    self._ready.set()
                    self._spawn(self._recover(), "recover")
                    sweeper = asyncio.create_task(self._sweep(), name="sweep")
                    try:
                        async for text in socket:
                            if isinstance(text, str):
                                self._on_broadcast_event(text)
                    except Exception as exc:  # connection lost mid-frame
                        log.warning("broadcast application socket failed: %r", exc)
                    finally:
                        sweeper.cancel()
                        self._ready.clear()
                log.warning(
                    "broadcast application socket closed (%s); reconnecting", socket.close_code
                )
            await asyncio.sleep(delay)

    def _on_broadcast_event(self, text: str) -> None:
        event = orjson.loads(text)
        kind = event.get("type")
        if kind == "StasisStart":
            self.asterisk_id = event.get("asterisk_id", self.asterisk_id)
            self._on_stasis_start(event)
        elif kind == "StasisEnd":
            channel_id = event["channel"]["id"]
            broadcast = self.core.get(channel_id)
            commands = self.core.channel_left(channel_id)
            if broadcast is not None and broadcast.state is State.OFFERED:
                log.info("channel %s left the broadcast (hangup) before any claim", channel_id)
                self.presenter.forget(channel_id)
            self._execute(commands)

    def _on_stasis_start(self, event: dict[str, Any]) -> None:
        channel = event["channel"]
        channel_id = channel["id"]
        try:
            invocation = parse_invocation(event, self._config.subroutine_context)
        except (InvocationError, KeyError, ValueError) as exc:
            log.error(
                "channel %s entered %s unexpectedly: %s",
                channel_id,
                self._config.broadcast_app,
                exc,
            )
            self._spawn(self._resume_unknown(channel_id, Verdict.FAILED), f"resume-{channel_id}")
            return
        options = parse_broadcast_data(invocation.raw_data)
        for warning in options.warnings:
            log.warning("channel %s: %s", channel_id, warning)
        app_filter, filter_warnings = AppFilter.compile(options.app_filter)
        for warning in filter_warnings:
            log.warning("channel %s: %s", channel_id, warning)
        recipients = [app for app in self._registry.apps() if app_filter.matches(app)]
        self.presenter.remember(channel_id, invocation)
        offer = Offer(
            invocation=invocation,
            options=options,
            app_filter=app_filter,
            channel=self.presenter.channel(channel),
            asterisk_id=event.get("asterisk_id"),
            timestamp=event.get("timestamp") or self._wall(),
        )
        previous = self.core.get(channel_id)
        if previous is not None and previous.state is State.CLAIMED:
            self._claimed -= 1
        commands = self.core.offer(
            channel_id, offer, recipients, options.timeout_ms, options.notify_claimed, self._now()
        )
        log.info(
            "channel %s offered to %d application(s), timeout %d ms",
            channel_id,
            len(recipients),
            options.timeout_ms,
        )
        self._execute(commands)

    # -- claims -------------------------------------------------------------------------------

    def claim(self, channel_id: str, app: str) -> ClaimOutcome | None:
        """Decide a claim; None means the proxy is not broadcasting that channel."""
        broadcast = self.core.get(channel_id)
        if broadcast is None:
            return None
        outcome, commands = self.core.claim(channel_id, app, self._now())
        log.info("channel %s: claim by %r -> %d", channel_id, app, outcome.value)
        if outcome is ClaimOutcome.WON:
            self._claimed += 1
        self._execute(commands)
        return outcome

    def is_locked(self, channel_id: str) -> bool:
        """True while no application controls the channel (native: not in Stasis)."""
        broadcast = self.core.get(channel_id)
        return broadcast is not None and not broadcast.session_started

    # -- commands -----------------------------------------------------------------------------

    def _execute(self, commands: list[Command]) -> None:
        for command in commands:
            if isinstance(command, SendCallBroadcast):
                self._send_call_broadcast(command.broadcast, command.apps)
            elif isinstance(command, ArmTimer):
                loop = asyncio.get_running_loop()
                self._timers[command.channel_id] = loop.call_at(
                    command.deadline, self._expire, command.channel_id
                )
            elif isinstance(command, CancelTimer):
                handle = self._timers.pop(command.channel_id, None)
                if handle is not None:
                    handle.cancel()
            elif isinstance(command, HandOver):
                self._spawn(
                    self._hand_over(command.broadcast, command.winner),
                    f"handover-{command.broadcast.channel_id}",
                )
            elif isinstance(command, SendCallClaimed):
                self._send_call_claimed(command.broadcast, command.winner)
            elif isinstance(command, ResumeDialplan):
                self.presenter.forget(command.broadcast.channel_id)
                self._spawn(
                    self._resume(
                        command.broadcast.channel_id,
                        command.broadcast.context.invocation,
                        command.verdict,
                    ),
                    f"resume-{command.broadcast.channel_id}",
                )

    def _expire(self, channel_id: str) -> None:
        self._timers.pop(channel_id, None)
        commands = self.core.expire(channel_id, self._now())
        if commands:
            log.warning("Channel %s: not claimed within timeout", channel_id)
        self._execute(commands)

    def _fan_out(self, event: dict[str, Any], apps: list[str] | tuple[str, ...]) -> None:
        """Serialize once, stamp `application` per recipient, queue on each app's socket."""
        prefix = orjson.dumps(event)[:-1].decode() + ',"application":'
        for app in apps:
            sink = self._registry.sink_for(app)
            if sink is not None:
                sink.send_event(prefix + orjson.dumps(app).decode() + "}")

    def _send_call_broadcast(self, broadcast: Broadcast[Offer], apps: tuple[str, ...]) -> None:
        offer = broadcast.context
        channel = offer.channel
        event = {
            "type": "CallBroadcast",
            "timestamp": offer.timestamp,
            "channel": channel,
            "caller": channel.get("caller", {}).get("number", ""),
            "called": offer.invocation.exten,
            "asterisk_id": offer.asterisk_id,
        }
        if offer.asterisk_id is None:
            del event["asterisk_id"]
        self._fan_out(event, apps)

    def _send_call_claimed(self, broadcast: Broadcast[Offer], winner: str) -> None:
        offer = broadcast.context
        recipients = [app for app in self._registry.apps() if offer.app_filter.matches(app)]
        event = {
            "type": "CallClaimed",
            "timestamp": self._wall(),
            "channel": offer.channel,
            "winner_app": winner,
            "asterisk_id": offer.asterisk_id,
        }
        if offer.asterisk_id is None:
            del event["asterisk_id"]
        self._fan_out(event, recipients)

    # -- talking to Asterisk ------------------------------------------------------------------

    async def _channel_call(
        self, method: str, channel_id: str, action: str, params: dict[str, Any]
    ) -> int:
        response = await self._rest.call(method, f"channels/{channel_id}/{action}", params)
        if response.status_code >= 300 and response.status_code != 404:
            log.error(
                "channel %s: %s %s -> %d %s",
                channel_id,
                method,
                action,
                response.status_code,
                response.text[:200],
            )
        return response.status_code

    async def _hand_over(self, broadcast: Broadcast[Offer], winner: str) -> None:
        channel_id = broadcast.channel_id
        offer = broadcast.context
        invocation = offer.invocation
        gone = False
        try:
            if self._registry.sink_for(winner) is None:
                raise LookupError(f"winner {winner!r} is no longer connected")
            variables = {"ARI_BROADCAST_WINNER": stasis_data(winner, offer.options.args)}
            if invocation.form == "direct":
                variables["ARI_BROADCAST_RETURN"] = (
                    f"{invocation.context},{invocation.exten},{invocation.priority + 1}"
                )
            statuses = await asyncio.gather(
                *(
                    self._channel_call("POST", channel_id, "variable", {"variable": k, "value": v})
                    for k, v in variables.items()
                )
            )
            if 404 in statuses:
                gone = True
                raise LookupError("channel is gone")
            if any(s >= 300 for s in statuses):
                raise RuntimeError(f"setting variables failed: {statuses}")
            target = (
                {"context": self._config.subroutine_context, "extension": "s", "label": "claimed"}
                if invocation.form == "subroutine"
                else {
                    "context": self._config.subroutine_context,
                    "extension": "direct",
                    "priority": 1,
                }
            )
            status = await self._channel_call("POST", channel_id, "continue", target)
            if status == 404:
                gone = True
                raise LookupError("channel is gone")
            if status >= 300:
                raise RuntimeError(f"continue failed with {status}")
        except (LookupError, RuntimeError, ProxyError) as exc:
            log.warning("channel %s: hand-over to %r failed: %s", channel_id, winner, exc)
            if self.core.get(channel_id) is broadcast and broadcast.state is State.CLAIMED:
                self._claimed -= 1
                self.presenter.forget(channel_id)
                self._execute(self.core.handover_failed(channel_id, channel_gone=gone))
            return
        log.info("channel %s handed over to %r", channel_id, winner)
        await asyncio.sleep(HANDOVER_WATCHDOG)
        if self.core.get(channel_id) is broadcast and not broadcast.session_started:
            log.warning(
                "channel %s: %r never received the channel (winner gone?)", channel_id, winner
            )
            self._end_session(channel_id)

    async def _resume(self, channel_id: str, invocation: Invocation, verdict: Verdict) -> None:
        """Back to the dialplan with a verdict; retried so no channel is left stranded."""
        for attempt, delay in enumerate(backoff(0.1, 2.0, 2.0)):
            try:
                if invocation.form == "subroutine":
                    target = {
                        "context": self._config.subroutine_context,
                        "extension": "s",
                        "label": verdict.value.lower(),
                    }
                    status = await self._channel_call("POST", channel_id, "continue", target)
                else:
                    status = await self._channel_call(
                        "POST",
                        channel_id,
                        "variable",
                        {"variable": "ARI_BROADCAST_STATUS", "value": verdict.value},
                    )
                    if status < 300:
                        status = await self._channel_call("POST", channel_id, "continue", {})
                if status < 300 or status == 404:
                    return
            except ProxyError as exc:
                log.warning(
                    "channel %s: returning to the dialplan failed: %s", channel_id, exc.message
                )
            if attempt >= 5:
                log.error("channel %s: giving up returning it to the dialplan", channel_id)
                return
            await asyncio.sleep(delay)

    async def _resume_unknown(self, channel_id: str, verdict: Verdict) -> None:
        """Send back a channel whose invocation we do not know (read it from Asterisk)."""
        response = await self._rest.call("GET", f"channels/{channel_id}")
        if response.status_code != 200:
            return
        dialplan = response.json()["dialplan"]
        form = "subroutine" if dialplan["context"] == self._config.subroutine_context else "direct"
        invocation = Invocation(
            form, "", dialplan["context"], dialplan["exten"], dialplan["priority"]
        )
        await self._resume(channel_id, invocation, verdict)

    async def _recover(self) -> None:
        """After (re)connecting: channels already in the broadcast application that we do not
        know (the proxy restarted, or the socket dropped) go back to the dialplan (TIMEOUT)."""
        try:
            response = await self._rest.call("GET", f"applications/{self._config.broadcast_app}")
        except ProxyError as exc:
            log.warning(
                "could not list channels left in the broadcast application: %s", exc.message
            )
            return
        if response.status_code != 200:
            return
        for channel_id in response.json().get("channel_ids", []):
            if self.core.get(channel_id) is None:
                log.warning(
                    "channel %s was left in the broadcast application; sending it back", channel_id
                )
                self._spawn(
                    self._resume_unknown(channel_id, Verdict.TIMEOUT), f"recover-{channel_id}"
                )

    async def _sweep(self) -> None:
        """Forget claimed broadcasts whose channel no longer exists (winner's socket was gone)."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            for channel_id in self.core.channel_ids():
                broadcast = self.core.get(channel_id)
                if broadcast is None or broadcast.state is not State.CLAIMED:
                    continue
                with contextlib.suppress(ProxyError):
                    response = await self._rest.call("GET", f"channels/{channel_id}")
                    if response.status_code == 404:
                        self._end_session(channel_id)

    def _end_session(self, channel_id: str) -> None:
        if self.core.session_ended(channel_id) is not None:
            self._claimed -= 1
            self.presenter.forget(channel_id)

    # -- hooks into downstream sessions -------------------------------------------------------

    def observe_upstream_frame(self, text: str) -> str | None:
        """Present a frame from Asterisk as native would; track the winner's session."""
        ended = None
        if self._claimed and ('"StasisStart"' in text or '"StasisEnd"' in text):
            ended = self._track_session(text)
        out = self.presenter.frame(text)
        if ended is not None:
            self._end_session(ended)  # after the StasisEnd itself was presented
        return out

    def _track_session(self, text: str) -> str | None:
        """Note the winner's StasisStart; return the channel id on its StasisEnd."""
        event = orjson.loads(text)
        channel = event.get("channel") or {}
        broadcast = self.core.get(channel.get("id", ""))
        if broadcast is None or broadcast.state is not State.CLAIMED:
            return None
        if event.get("type") == "StasisStart":
            self.core.session_started(broadcast.channel_id, event.get("application", ""))
        elif event.get("type") == "StasisEnd" and broadcast.session_started:
            return broadcast.channel_id
        return None
