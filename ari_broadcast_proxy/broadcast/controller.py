"""The broadcast feature's I/O shell around the pure core.

It owns the proxy's own events socket for the broadcast application, turns each StasisStart
there into an offer, carries out the core's commands (CallBroadcast fan-out, timers, the
hand-over to the winner, the return to the dialplan) and answers claims. Downstream sessions
call `observe_upstream_frame` so broadcast channels read as native's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson

from ..config import Config
from ..errors import ProxyError
from ..metrics import Metrics
from ..registry import AppRegistry
from ..upstream.websocket import CLOSE_TIMEOUT, EventsSocket, HandshakeRefused, open_events_socket
from ..upstream.ws_rest import RestOverWebSocket
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
from .events import call_broadcast, call_claimed, fan_out
from .handover import Dialplan, HandOverResult, backoff
from .ownership import GUARD_INTERVAL, AppGuard
from .presentation import (
    Invocation,
    InvocationError,
    Presenter,
    asterisk_timestamp,
    parse_invocation,
)

__all__ = ["BroadcastController", "Offer"]

log = logging.getLogger(__name__)

HANDOVER_WATCHDOG = 5.0  # seconds for the winner's StasisStart to show up after `continue`
SWEEP_INTERVAL = 30.0  # how often claimed broadcasts are checked against live channels
RELEASE_GRACE = 5.0  # seconds a released channel's snapshots are still presented as native's
_NOTABLE_CLAIMS = frozenset({ClaimOutcome.WON, ClaimOutcome.NOT_OFFERED})


def _log(level: int, channel_id: str, message: str, *args: object) -> None:
    """Every broadcast log line names its channel (and carries it as a field in JSON logs)."""
    log.log(level, "channel %s: " + message, channel_id, *args, extra={"channel_id": channel_id})


@dataclass
class Offer:
    """What the shell keeps per broadcast (the core's opaque context)."""

    invocation: Invocation
    options: BroadcastOptions
    app_filter: AppFilter
    channel: dict[str, Any]  # the presented snapshot
    asterisk_id: str | None
    timestamp: str


class BroadcastController:
    def __init__(
        self,
        config: Config,
        dialplan: Dialplan,
        guard: AppGuard,
        registry: AppRegistry,
        presenter: Presenter,
        metrics: Metrics,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._dialplan = dialplan
        self._guard = guard
        self._socket: EventsSocket | None = None
        self._replaced = False  # another socket registered the broadcast application
        self._registry = registry
        self.presenter = presenter
        self._metrics = metrics
        self.core: BroadcastCore[Offer] = BroadcastCore(rng)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._returning: set[str] = set()  # channels with a return to the dialplan in flight
        self._suspects: set[str] = set()  # unknown channels the last sweep found parked
        self._runner: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._calls = RestOverWebSocket(None, config.upstream_timeout)  # replaced per connection
        self.asterisk_id: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run_upstream(), name="broadcast-app")

    async def stop(self, timeout: float = 5.0) -> None:
        """Ordered: stop taking calls, send every call still on offer back to the dialplan
        (TIMEOUT), wait (bounded) for hand-overs and returns in flight, cancel the rest."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        drained = self.core.drain()
        if drained:
            log.info(
                "shutting down: returning %d call(s) on offer to the dialplan", len(drained) // 2
            )
        self._execute(drained)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in list(self._tasks):
            task.cancel()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    # -- the broadcast application's own socket -----------------------------------------------

    async def _run_upstream(self) -> None:
        url = f"{self._config.upstream_ws}/events?app={self._config.broadcast_app}"
        headers = {"authorization": self._config.authorization}
        delays = backoff()
        while True:
            if self._replaced:
                await self._wait_released()
            try:
                socket = await open_events_socket(
                    url, headers, timeout=self._config.upstream_timeout
                )
            except HandshakeRefused as refused:
                log.error(
                    "Asterisk refused the broadcast application socket: %d %s; retrying",
                    refused.status,
                    refused.body[:200].decode(errors="replace"),
                )
            except ProxyError as exc:
                log.warning("broadcast application not connected: %s; retrying", exc.message)
            else:
                delays = backoff()
                await self._serve(socket)
            await asyncio.sleep(next(delays))

    async def _wait_released(self) -> None:
        """After ApplicationReplaced: wait (backoff) until the other client lets the
        broadcast application go, then take it back."""
        delays = backoff(0.5, cap=5.0)
        while True:
            with contextlib.suppress(ProxyError):
                if not await self._guard.registered():
                    break
            await asyncio.sleep(next(delays))
        self._replaced = False
        log.warning(
            "the other client released the broadcast application %r: taking it back",
            self._config.broadcast_app,
        )

    async def _serve(self, socket: EventsSocket) -> None:
        self._calls = RestOverWebSocket(socket, self._config.upstream_timeout)
        self._socket = socket
        log.info("broadcast application %r registered on Asterisk", self._config.broadcast_app)
        # Before the first event is handled: a filter set on Asterisk would drop calls.
        await self._enforce_ownership()
        self._ready.set()
        self._spawn(self._calls_over(self._calls), "probe")
        self._spawn(self._recover(), "recover")
        sweeper = asyncio.create_task(self._sweep(), name="sweep")
        guard = asyncio.create_task(self._guard_ownership(), name="guard")
        socket.start(self._on_broadcast_event)  # every event is handled as it arrives
        try:
            await socket.wait_closed()
        finally:
            sweeper.cancel()
            guard.cancel()
            self._ready.clear()
            self._socket = None
            self._dialplan.attach(None)
            self._calls.close()
            socket.close()
            await socket.wait_closed(CLOSE_TIMEOUT)
        log.warning("broadcast application socket closed (%s); reconnecting", socket.close_code)

    async def _enforce_ownership(self) -> None:
        """Put back what the proxy needs of its application on Asterisk (no event filter,
        no foreign subscription) and say what was changed behind its back."""
        try:
            async with asyncio.timeout(self._config.upstream_timeout):
                cleared = await self._guard.enforce()
        except (ProxyError, TimeoutError) as exc:
            log.warning("could not check the broadcast application on Asterisk: %s", exc)
            return
        if cleared:
            log.warning(
                "the broadcast application %r was changed on Asterisk by another client; "
                "cleared: %s",
                self._config.broadcast_app,
                ", ".join(cleared),
            )

    async def _guard_ownership(self) -> None:
        while True:
            await asyncio.sleep(GUARD_INTERVAL)
            await self._enforce_ownership()

    async def _calls_over(self, calls: RestOverWebSocket) -> None:
        """Carry hand-overs on the broadcast socket if this Asterisk does REST over WebSocket
        (one round trip for all of a hand-over's calls instead of one HTTP request each)."""
        if self._config.handover_transport == "http":
            log.info("hand-overs use HTTP (--handover-transport http)")
        elif await calls.probe():
            self._dialplan.attach(calls)
            log.info("hand-overs go over the broadcast application's socket (REST over WebSocket)")
        else:
            log.info("Asterisk does not answer REST over WebSocket: hand-overs use HTTP")

    def _on_broadcast_event(self, text: str) -> None:
        event = orjson.loads(text)
        kind = event.get("type")
        channel_id = (event.get("channel") or {}).get("id", "")
        if kind == "RESTResponse":
            self._calls.on_response(event)
            return
        try:
            if kind == "StasisStart":
                self.asterisk_id = event.get("asterisk_id", self.asterisk_id)
                self._on_stasis_start(event)
            elif kind == "StasisEnd":
                self._on_stasis_end(channel_id)
            elif kind == "ApplicationMoveFailed":
                self._on_move_failed(channel_id, str(event.get("destination", "")))
            elif kind == "ApplicationReplaced":
                # Another client (a second proxy?) registered the broadcast application:
                # calls now go to it. Not ready, so health checks show it, until that client
                # lets it go and the proxy takes it back. Its parked calls are its own: no
                # more sweeping them back (see _sweep).
                self._ready.clear()
                self._suspects.clear()
                self._replaced = True
                self._metrics.app_replaced.inc()
                if self._socket is not None:
                    self._socket.close()
                log.error(
                    "another client registered the broadcast application %r on Asterisk: "
                    "this proxy gets no calls (not ready) until that client lets it go",
                    self._config.broadcast_app,
                )
        except Exception:
            # A bug must cost one call at most, never the broadcast application's socket.
            log.exception("channel %s: %s could not be handled", channel_id, kind)
            if kind == "StasisStart" and self.core.get(channel_id) is None:
                self._send_back(channel_id, self._resume_unknown(channel_id, Verdict.FAILED))

    def _on_stasis_start(self, event: dict[str, Any]) -> None:
        started = time.perf_counter()
        channel = event["channel"]
        channel_id = channel["id"]
        self._metrics.broadcasts.inc()
        try:
            invocation = parse_invocation(event, self._config.subroutine_context)
        except (InvocationError, KeyError, ValueError) as exc:
            self._metrics.outcomes.labels("rejected").inc()
            _log(
                logging.ERROR,
                channel_id,
                "entered %s unexpectedly: %s",
                self._config.broadcast_app,
                exc,
            )
            self._send_back(channel_id, self._resume_unknown(channel_id, Verdict.FAILED))
            return
        options = parse_broadcast_data(invocation.raw_data)
        app_filter, filter_warnings = AppFilter.compile(options.app_filter)
        for warning in (*options.warnings, *filter_warnings):
            _log(logging.WARNING, channel_id, "%s", warning)
        recipients = self._recipients(channel_id, app_filter)
        self.presenter.remember(channel_id, invocation)
        offer = Offer(
            invocation=invocation,
            options=options,
            app_filter=app_filter,
            channel=self.presenter.channel(channel),
            asterisk_id=event.get("asterisk_id"),
            timestamp=event.get("timestamp") or asterisk_timestamp(),
        )
        commands = self.core.offer(
            channel_id, offer, recipients, options.timeout_ms, options.notify_claimed, self._now()
        )
        if invocation.form == "direct":
            self._spawn(self._dialplan.preset_status(channel_id), f"preset-{channel_id}")
        self._execute(commands)
        # The rest waits until the sockets' writers have sent the CallBroadcast frames.
        asyncio.get_running_loop().call_soon(
            self._offered, channel_id, len(recipients), options.timeout_ms, started
        )

    def _recipients(self, channel_id: str, app_filter: AppFilter) -> list[str]:
        """The connected applications the filter selects (matching is bounded per call)."""
        before = app_filter.timeouts
        recipients = app_filter.recipients(self._registry.apps())
        if timed_out := app_filter.timeouts - before:
            self._metrics.filter_timeouts.inc(timed_out)
            _log(
                logging.WARNING,
                channel_id,
                "app_filter %r: matching timed out for %d application(s), not offered",
                app_filter.pattern,
                timed_out,
            )
        return recipients

    def _offered(self, channel_id: str, recipients: int, timeout_ms: int, started: float) -> None:
        self._metrics.fanout.observe(time.perf_counter() - started)
        _log(
            logging.INFO,
            channel_id,
            "offered to %d application(s), timeout %d ms",
            recipients,
            timeout_ms,
        )

    def _on_stasis_end(self, channel_id: str) -> None:
        broadcast = self.core.get(channel_id)
        if broadcast is None or broadcast.state is not State.OFFERED:
            return  # after a claim, leaving the broadcast application is the hand-over
        _log(logging.INFO, channel_id, "hung up during the broadcast")
        self._metrics.outcomes.labels("hangup").inc()
        self._forget_later(channel_id, broadcast.context.invocation)
        self._execute(self.core.channel_left(channel_id, self._now()))

    def _forget_later(self, channel_id: str, invocation: Invocation) -> None:
        """Snapshots of the steps that end a broadcast (the verdict's label, the winner's
        StasisEnd, the Return, a hangup's h extension) still read as native's line for a
        while (RELEASE_GRACE)."""
        asyncio.get_running_loop().call_later(
            RELEASE_GRACE, self.presenter.forget, channel_id, invocation
        )

    def _on_move_failed(self, channel_id: str, destination: str) -> None:
        """Asterisk could not move the channel to the winner (its application was gone by
        then): the channel is still here, and the dialplan gets FAILED."""
        broadcast = self.core.get(channel_id)
        if broadcast is None or broadcast.state is not State.CLAIMED or broadcast.session_started:
            return
        self._handover_failed(channel_id, destination, "not registered on Asterisk", gone=False)

    # -- claims -------------------------------------------------------------------------------

    async def claim(self, channel_id: str, app: str) -> ClaimOutcome | None:
        """Decide a claim; None means the channel is not the proxy's (Asterisk answers)."""
        now = self._now()
        if not self.core.knows(channel_id, now):
            return None
        broadcast = self.core.get(channel_id)
        outcome, commands = self.core.claim(channel_id, app, now)
        for command in commands:
            if isinstance(command, HandOver):
                await self._start_hand_over(command.broadcast, command.winner)
            else:
                self._execute([command])
        if outcome is ClaimOutcome.WON and broadcast is not None:
            self._metrics.time_to_claim.observe(now - broadcast.offered_at)
        # Losing claims (404/409: nine in ten under a race) only at DEBUG.
        level = logging.INFO if outcome in _NOTABLE_CLAIMS else logging.DEBUG
        _log(level, channel_id, "claim by %r -> %d", app, outcome.value)
        return outcome

    def released(self, channel_id: str) -> None:
        """Asterisk accepted a `continue` or hangup of the channel through the proxy: if it
        was the winner's, its session is over, as native answers claims from then on (404);
        the StasisEnd that says so can still be on its way when the next claim arrives."""
        broadcast = self.core.get(channel_id)
        if broadcast is None or not broadcast.session_started:
            return
        self.core.session_ended(channel_id, self._now())
        self._forget_later(channel_id, broadcast.context.invocation)  # its StasisEnd is due

    def in_session(self, channel_id: str) -> bool:
        """True while the winner controls the channel (until it lets go)."""
        broadcast = self.core.get(channel_id)
        return broadcast is not None and broadcast.session_started

    def is_locked(self, channel_id: str) -> bool:
        """True while no application controls the channel (native: not in Stasis)."""
        broadcast = self.core.get(channel_id)
        return broadcast is not None and not broadcast.session_started

    # -- commands -----------------------------------------------------------------------------

    def _execute(self, commands: list[Command]) -> None:
        for command in commands:
            if isinstance(command, SendCallBroadcast):
                offer = command.broadcast.context
                event = call_broadcast(
                    offer.channel, offer.invocation.exten, offer.timestamp, offer.asterisk_id
                )
                fan_out(event, command.apps, self._registry)
            elif isinstance(command, ArmTimer):
                self._timers[command.channel_id] = asyncio.get_running_loop().call_at(
                    command.deadline, self._expire, command.channel_id
                )
            elif isinstance(command, CancelTimer):
                handle = self._timers.pop(command.channel_id, None)
                if handle is not None:
                    handle.cancel()
            elif isinstance(command, HandOver):
                raise TypeError("a hand-over starts inside its claim: see claim()")
            elif isinstance(command, SendCallClaimed):
                offer = command.broadcast.context
                event = call_claimed(
                    offer.channel, command.winner, asterisk_timestamp(), offer.asterisk_id
                )
                recipients = self._recipients(command.broadcast.channel_id, offer.app_filter)
                fan_out(event, recipients, self._registry)
            elif isinstance(command, ResumeDialplan):
                channel_id = command.broadcast.channel_id
                self._forget_later(channel_id, command.broadcast.context.invocation)
                self._send_back(
                    channel_id,
                    self._dialplan.resume(
                        channel_id, command.broadcast.context.invocation, command.verdict
                    ),
                )

    def _send_back(self, channel_id: str, resume: Coroutine[Any, Any, Any]) -> None:
        """Run a return to the dialplan; sweeps leave a channel with one in flight alone."""
        self._returning.add(channel_id)
        task = self._spawn(resume, f"resume-{channel_id}")
        task.add_done_callback(lambda _: self._returning.discard(channel_id))

    def _expire(self, channel_id: str) -> None:
        self._timers.pop(channel_id, None)
        commands = self.core.expire(channel_id, self._now())
        if commands:
            self._metrics.outcomes.labels("timeout").inc()
            _log(logging.WARNING, channel_id, "not claimed within timeout")
        self._execute(commands)

    async def _start_hand_over(self, broadcast: Broadcast[Offer], winner: str) -> None:
        """Write the hand-over to Asterisk inside the winning claim, before its 204 and
        before the other claims that arrived with it are answered: the winner waits for
        its StasisStart. A task waits for Asterisk's verdict."""
        started = time.perf_counter()
        channel_id = broadcast.channel_id
        pending: asyncio.Task[tuple[HandOverResult, str]] | None = None
        why = f"{winner!r} is no longer connected"
        if self._registry.sink_for(winner) is not None:
            invocation, args = broadcast.context.invocation, broadcast.context.options.args
            if self._dialplan.moves(invocation, args):
                self.presenter.plumbing.moved(channel_id)
            try:
                verdict = await self._dialplan.hand_over(channel_id, invocation, winner, args)
                pending = self._spawn(_settled(verdict), f"handover-verdict-{channel_id}")
            except ProxyError as exc:
                why = exc.message
        self._spawn(
            self._hand_over(broadcast, winner, pending, why, started), f"handover-{channel_id}"
        )

    async def _hand_over(
        self,
        broadcast: Broadcast[Offer],
        winner: str,
        pending: Awaitable[tuple[HandOverResult, str]] | None,
        why: str,
        started: float,
    ) -> None:
        channel_id = broadcast.channel_id
        result = HandOverResult.FAILED
        if pending is not None:
            result, why = await pending
        if result is HandOverResult.UNKNOWN:
            result = await self._confirm_hand_over(broadcast, winner, why)
        if self.core.get(channel_id) is not broadcast:
            return  # the channel re-entered the broadcast meanwhile
        if result is not HandOverResult.DONE:
            gone = result is HandOverResult.CHANNEL_GONE
            self._handover_failed(channel_id, winner, why, gone)
            return
        self._metrics.handover.observe(time.perf_counter() - started)

        def waiting() -> bool:  # claimed, and the winner's StasisStart still not seen
            return self.core.get(channel_id) is broadcast and not broadcast.session_started

        await asyncio.sleep(HANDOVER_WATCHDOG)
        if not waiting():
            return
        with contextlib.suppress(ProxyError):
            if await self._dialplan.parked(channel_id) and waiting():
                self._handover_failed(channel_id, winner, "the channel never left", gone=False)
                return
        if waiting():
            _log(logging.WARNING, channel_id, "%r never received the channel (gone?)", winner)
            self._metrics.outcomes.labels("failed").inc()
            self._end_session(channel_id)

    async def _confirm_hand_over(
        self, broadcast: Broadcast[Offer], winner: str, why: str
    ) -> HandOverResult:
        """Asterisk did not say whether it took the hand-over (its answer was lost or late):
        the winner's StasisStart, or the channel having left the broadcast application, say
        it did; still there, it did not (and goes back to the dialplan, FAILED)."""
        channel_id = broadcast.channel_id
        _log(logging.WARNING, channel_id, "hand-over to %r: %s; asking Asterisk", winner, why)
        if broadcast.session_started:
            return HandOverResult.DONE
        try:
            if await self._dialplan.parked(channel_id):
                return HandOverResult.FAILED
            exists = await self._dialplan.exists(channel_id)
        except ProxyError:
            return HandOverResult.FAILED  # the return to the dialplan checks and retries
        if broadcast.session_started or exists:
            return HandOverResult.DONE
        return HandOverResult.CHANNEL_GONE

    def _handover_failed(self, channel_id: str, winner: str, why: str, gone: bool) -> None:
        _log(logging.WARNING, channel_id, "hand-over to %r failed: %s", winner, why)
        self._metrics.outcomes.labels("failed").inc()
        self.presenter.forget(channel_id)
        self._execute(self.core.handover_failed(channel_id, gone, self._now()))

    async def _resume_unknown(self, channel_id: str, verdict: Verdict) -> None:
        """Send back a channel whose invocation we do not know (read it from Asterisk)."""
        try:
            invocation = await self._dialplan.invocation_of(channel_id)
        except ProxyError as exc:
            _log(logging.WARNING, channel_id, "cannot send it back yet: %s", exc.message)
            return  # still parked: a sweep finds it again
        if invocation is not None:
            await self._dialplan.resume(channel_id, invocation, verdict)

    async def _orphans(self) -> set[str]:
        """Channels in the broadcast application that the proxy neither offers nor is
        sending back (ProxyError when Asterisk cannot say)."""
        parked = await self._dialplan.channels_in(self._config.broadcast_app)
        return {c for c in parked if self.core.get(c) is None and c not in self._returning}

    def _return_orphans(self, channel_ids: set[str]) -> None:
        for channel_id in channel_ids:
            _log(
                logging.WARNING,
                channel_id,
                "was left in the broadcast application; sending it back (TIMEOUT)",
            )
            self._metrics.outcomes.labels("timeout").inc()
            self._send_back(channel_id, self._resume_unknown(channel_id, Verdict.TIMEOUT))

    async def _recover(self) -> None:
        """After (re)connecting: channels already in the broadcast application that we do not
        know (the proxy restarted, or its socket dropped) go back to the dialplan (TIMEOUT)."""
        try:
            self._return_orphans(await self._orphans())
        except ProxyError as exc:
            log.warning(
                "could not list channels left in the broadcast application: %s", exc.message
            )

    async def _sweep(self) -> None:
        """Every SWEEP_INTERVAL: forget claimed broadcasts whose channel no longer exists (the
        winner's socket was gone, so its StasisEnd was never seen), and send back channels
        left in the broadcast application (a return that failed every retry) once two
        sweeps in a row found them there unknown (a call entering as the list is read is
        not yet known either)."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            claimed = {
                channel_id: broadcast
                for channel_id in self.core.channel_ids()
                if (broadcast := self.core.get(channel_id)) is not None
                and broadcast.state is State.CLAIMED
            }
            with contextlib.suppress(ProxyError):
                # One listing for all of them (the claimed ones were taken before it).
                live = await self._dialplan.live_channels() if claimed else None
                for channel_id, broadcast in claimed.items():
                    gone = live is not None and channel_id not in live
                    if gone and self.core.get(channel_id) is broadcast:
                        self._end_session(channel_id)
            if not self.ready:  # the broadcast application was taken over
                continue
            with contextlib.suppress(ProxyError):
                found = await self._orphans()
                if self.ready:
                    self._return_orphans(found & self._suspects)
                    self._suspects = found - self._suspects

    def _end_session(self, channel_id: str) -> None:
        if (broadcast := self.core.session_ended(channel_id, self._now())) is not None:
            self._forget_later(channel_id, broadcast.context.invocation)

    # -- hooks into downstream sessions -------------------------------------------------------

    def observe_upstream_frame(self, text: str) -> str | None:
        """Present a frame from Asterisk as native would; track the winner's session."""
        if not (self.core.claimed_count and ('"StasisStart"' in text or '"StasisEnd"' in text)):
            return self.presenter.frame(text)
        event = orjson.loads(text)  # parsed once, for both
        ended = self._track_session(event)
        out = self.presenter.frame(text, event)
        if ended is not None:
            self._end_session(ended)  # after the StasisEnd itself was presented
        return out

    def _track_session(self, event: Any) -> str | None:
        """Note the winner's StasisStart; return the channel id on its StasisEnd."""
        channel = event.get("channel") if isinstance(event, dict) else None
        broadcast = self.core.get(channel.get("id", "")) if isinstance(channel, dict) else None
        if broadcast is None or broadcast.state is not State.CLAIMED:
            return None
        if event.get("type") == "StasisStart":
            winner = event.get("application", "")
            if self.core.session_started(broadcast.channel_id, winner):
                # Counted and logged once the frame is on its way to the winner.
                asyncio.get_running_loop().call_soon(
                    self._handed_over, broadcast.channel_id, winner
                )
        elif event.get("type") == "StasisEnd" and broadcast.session_started:
            return broadcast.channel_id
        return None

    def _handed_over(self, channel_id: str, winner: str) -> None:
        self._metrics.outcomes.labels("claimed").inc()
        _log(logging.INFO, channel_id, "handed over to %r", winner)


async def _settled(verdict: Awaitable[HandOverResult]) -> tuple[HandOverResult, str]:
    """A hand-over's result and why, its failures included (never raises ProxyError)."""
    try:
        result = await verdict
    except ProxyError as exc:  # timed out, or the socket closed under it
        return HandOverResult.UNKNOWN, exc.message
    return result, result.value
