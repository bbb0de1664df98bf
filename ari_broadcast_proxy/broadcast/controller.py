"""The broadcast feature's I/O shell around the pure core, as one facade.

Its parts, each with its collaborators injected: the supervisor (the broadcast application's
own socket and readiness), the executor (carrying out the core's commands) and recovery
(channels left in the broadcast application). This facade turns each event on the broadcast
socket into core inputs (a StasisStart into an offer), answers claims, and tracks the
winner's session in the frames sent downstream (`observe_upstream_frame`) so broadcast
channels read as native's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

import orjson

from ..config import Config
from ..metrics import Metrics
from ..registry import AppRegistry
from ..upstream.websocket import open_events_socket
from .app_filter import AppFilter
from .clock import Clock, LoopClock
from .core import BroadcastCore, ClaimOutcome, Command, ResumeDialplan, Verdict
from .dialplan import parse_broadcast_data
from .executor import Executor, Offer, log_channel
from .handover import ChannelGateway
from .ownership import AppGuard
from .presentation import InvocationError, Presenter, asterisk_timestamp, parse_invocation
from .recovery import Recovery
from .supervisor import OpenEventsSocket, Supervisor

__all__ = ["BroadcastController", "Offer"]

log = logging.getLogger(__name__)

_NOTABLE_CLAIMS = frozenset({ClaimOutcome.WON, ClaimOutcome.NOT_OFFERED})


class BroadcastController:
    def __init__(
        self,
        config: Config,
        gateway: ChannelGateway,
        guard: AppGuard,
        registry: AppRegistry,
        presenter: Presenter,
        metrics: Metrics,
        *,
        open_socket: OpenEventsSocket = open_events_socket,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._gateway = gateway
        self.presenter = presenter
        self._metrics = metrics
        self._clock = clock or LoopClock()
        self.core: BroadcastCore[Offer] = BroadcastCore(rng)
        self.executor = Executor(self.core, gateway, registry, presenter, metrics, self._clock)
        self.supervisor = Supervisor(
            config,
            open_socket,
            guard,
            gateway,
            metrics,
            self._clock,
            self._on_event,
            self._while_connected,
        )
        self.recovery = Recovery(
            self.core,
            self.executor,
            gateway,
            config.broadcast_app,
            metrics,
            self._clock,
            lambda: self.supervisor.ready,
        )
        self._runner: asyncio.Task[None] | None = None
        self.asterisk_id: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.supervisor.ready

    def start(self) -> None:
        self._runner = asyncio.create_task(self.supervisor.run(), name="broadcast-app")

    async def stop(self, timeout: float = 5.0) -> None:
        """Ordered: stop taking calls, send every call still on offer back to the dialplan
        (TIMEOUT), wait (bounded) for hand-overs and returns in flight, cancel the rest."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        drained = self.core.drain()
        if returned := sum(isinstance(c, ResumeDialplan) for c in drained):
            log.info("shutting down: returning %d call(s) on offer to the dialplan", returned)
        self.executor.execute(drained)
        await self.executor.stop(timeout)

    async def _while_connected(self) -> None:
        await self.recovery.run()

    # -- the broadcast application's events ---------------------------------------------------

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        channel_id = (event.get("channel") or {}).get("id", "")
        try:
            if kind == "StasisStart":
                self.asterisk_id = event.get("asterisk_id", self.asterisk_id)
                self._on_stasis_start(event)
            elif kind == "StasisEnd":
                self._feed(self.core.channel_left(channel_id, self._clock.now()))
            elif kind == "ApplicationMoveFailed":
                destination = str(event.get("destination", ""))
                self._feed(self.core.move_failed(channel_id, destination, self._clock.now()))
        except Exception:
            # A bug must cost one call at most, never the broadcast application's socket.
            log.exception("channel %s: %s could not be handled", channel_id, kind)
            if kind == "StasisStart" and self.core.get(channel_id) is None:
                self.executor.send_back_unknown(channel_id, Verdict.FAILED)

    def _feed(self, commands: list[Command]) -> None:
        self.executor.execute(commands)

    def _on_stasis_start(self, event: dict[str, Any]) -> None:
        started = time.perf_counter()
        channel = event["channel"]
        channel_id = channel["id"]
        self._metrics.broadcasts.inc()
        try:
            invocation = parse_invocation(event, self._config.subroutine_context)
        except (InvocationError, KeyError, ValueError) as exc:
            self._metrics.outcomes.labels("rejected").inc()
            log_channel(
                logging.ERROR,
                channel_id,
                "entered %s unexpectedly: %s",
                self._config.broadcast_app,
                exc,
            )
            self.executor.send_back_unknown(channel_id, Verdict.FAILED)
            return
        options = parse_broadcast_data(invocation.raw_data)
        app_filter, filter_warnings = AppFilter.compile(options.app_filter)
        for warning in (*options.warnings, *filter_warnings):
            log_channel(logging.WARNING, channel_id, "%s", warning)
        recipients = self.executor.recipients(channel_id, app_filter)
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
            channel_id,
            offer,
            recipients,
            options.timeout_ms,
            options.notify_claimed,
            self._clock.now(),
        )
        if invocation.form == "direct":
            self.executor.spawn(self._gateway.preset_status(channel_id), f"preset-{channel_id}")
        self._feed(commands)
        # The rest waits until the sockets' writers have sent the CallBroadcast frames.
        self._clock.call_soon(
            self._offered, channel_id, len(recipients), options.timeout_ms, started
        )

    def _offered(self, channel_id: str, recipients: int, timeout_ms: int, started: float) -> None:
        self._metrics.fanout.observe(time.perf_counter() - started)
        log_channel(
            logging.INFO,
            channel_id,
            "offered to %d application(s), timeout %d ms",
            recipients,
            timeout_ms,
        )

    # -- claims -------------------------------------------------------------------------------

    async def claim(self, channel_id: str, app: str) -> ClaimOutcome | None:
        """Decide a claim; None means the channel is not the proxy's (Asterisk answers)."""
        now = self._clock.now()
        if not self.core.knows(channel_id, now):
            return None
        broadcast = self.core.get(channel_id)
        outcome, commands = self.core.claim(channel_id, app, now)
        if commands:
            await self.executor.carry_out(commands)
        if outcome is ClaimOutcome.WON and broadcast is not None:
            self._metrics.time_to_claim.observe(now - broadcast.offered_at)
        # Losing claims (404/409: nine in ten under a race) only at DEBUG.
        level = logging.INFO if outcome in _NOTABLE_CLAIMS else logging.DEBUG
        log_channel(level, channel_id, "claim by %r -> %d", app, outcome.value)
        return outcome

    def released(self, channel_id: str) -> None:
        """Asterisk accepted a `continue` or hangup of the channel through the proxy: if it
        was the winner's, its session is over, as native answers claims from then on (404);
        the StasisEnd that says so can still be on its way when the next claim arrives."""
        self._feed(self.core.session_ended(channel_id, self._clock.now()))

    def in_session(self, channel_id: str) -> bool:
        """True while the winner controls the channel (until it lets go)."""
        return self.core.in_session(channel_id)

    def is_locked(self, channel_id: str) -> bool:
        """True while no application controls the channel (native: not in Stasis)."""
        return self.core.is_locked(channel_id)

    # -- hooks into downstream sessions -------------------------------------------------------

    def observe_upstream_frame(self, text: str) -> str | None:
        """Present a frame from Asterisk as native would; track the winner's session."""
        if not (self.core.claimed_count and ('"StasisStart"' in text or '"StasisEnd"' in text)):
            return self.presenter.frame(text)
        event = orjson.loads(text)  # parsed once, for both
        ended = self._track_session(event)
        out = self.presenter.frame(text, event)
        if ended is not None:
            # After the StasisEnd itself was presented.
            self._feed(self.core.session_ended(ended, self._clock.now()))
        return out

    def _track_session(self, event: Any) -> str | None:
        """Feed the winner's StasisStart; return the channel id of a StasisEnd."""
        channel = event.get("channel") if isinstance(event, dict) else None
        if not isinstance(channel, dict):
            return None
        channel_id = channel.get("id", "")
        if event.get("type") == "StasisStart":
            self._feed(self.core.session_started(channel_id, event.get("application", "")))
        elif event.get("type") == "StasisEnd" and self.core.in_session(channel_id):
            return str(channel_id)
        return None
