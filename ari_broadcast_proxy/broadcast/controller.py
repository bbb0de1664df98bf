"""The broadcast feature's I/O shell around the pure core, as one facade.

Its parts, each with its collaborators injected: the supervisor (the broadcast application's
own socket and readiness), the executor (carrying out the core's commands) and recovery
(channels left in the broadcast application). This facade turns each event on the broadcast
socket into core inputs (a StasisStart into an offer), answers claims, and tracks the
winner's session in the frames sent downstream (`observe_upstream_frame`) so broadcast
channels read as native's.

With replicas (`attach` a `cluster.replica.Replica`), the replica decides when the
supervisor runs (while it leads), records each offer in Redis before it is made, and takes
claims to Redis; the core here then mirrors what Redis decided.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from ..config import Config
from ..metrics import Metrics
from ..registry import AppRegistry
from ..upstream.websocket import open_events_socket
from .app_filter import AppFilter
from .clock import Clock, LoopClock
from .core import (
    Broadcast,
    BroadcastCore,
    ClaimOutcome,
    Command,
    ResumeDialplan,
    State,
    Verdict,
)
from .dialplan import parse_broadcast_data
from .executor import Executor, Offer, log_channel
from .handover import ChannelGateway
from .ownership import AppGuard
from .presentation import InvocationError, Presenter, asterisk_timestamp, parse_invocation
from .recovery import Recovery
from .supervisor import OpenEventsSocket, Supervisor

if TYPE_CHECKING:
    from ..cluster.replica import Replica

__all__ = ["BroadcastController", "Offer"]

log = logging.getLogger(__name__)

_NOTABLE_CLAIMS = frozenset({ClaimOutcome.WON, ClaimOutcome.NOT_OFFERED})


def _log_claim(channel_id: str, app: str, outcome: ClaimOutcome) -> None:
    # Losing claims (404/409: nine in ten under a race) only at DEBUG.
    level = logging.INFO if outcome in _NOTABLE_CLAIMS else logging.DEBUG
    log_channel(level, channel_id, "claim by %r -> %d", app, outcome.value)


class BroadcastController:
    def __init__(
        self,
        config: Config,
        gateway: ChannelGateway,
        guards: Sequence[AppGuard],
        registry: AppRegistry,
        presenter: Presenter,
        metrics: Metrics,
        *,
        open_socket: OpenEventsSocket = open_events_socket,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self.gateway = gateway
        self.presenter = presenter
        self._metrics = metrics
        self._clock = clock or LoopClock()
        self.core: BroadcastCore[Offer] = BroadcastCore(rng)
        self.executor = Executor(self.core, gateway, registry, presenter, metrics, self._clock)
        # One broadcast application socket per Asterisk server (guard), each server's
        # events first to `on_server_event` (several servers: where each channel is).
        self.on_server_event: Callable[[dict[str, Any], str], None] | None = None
        self.reaches: Callable[[str, str], bool] | None = None  # (application, server)
        self.supervisors = [
            Supervisor(
                config,
                guard,
                open_socket,
                gateway,
                metrics,
                self._clock,
                functools.partial(self._server_event, guard.upstream.name),
                functools.partial(self._while_connected, guard),
            )
            for guard in guards
        ]
        self.recovery = Recovery(
            self.core,
            self.executor,
            gateway,
            metrics,
            self._clock,
            lambda: self.connected,
        )
        self._runners: list[asyncio.Task[None]] = []
        self._holding = False  # a replica took the calls over on its first socket
        self._replica: Replica | None = None
        self.asterisk_id: str | None = None

    def attach(self, replica: Replica) -> None:
        """Run as one of several replicas sharing their broadcasts through Redis."""
        self._replica = replica

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        if self._replica is not None:
            return self._replica.ready
        return self.connected

    @property
    def connected(self) -> bool:
        """Whether the broadcast application is registered (on one server at least)."""
        return any(s.ready for s in self.supervisors)

    def start(self) -> None:
        if self._replica is not None:
            self._replica.start()  # it calls lead() while it holds the lease
        else:
            self.lead()

    def lead(self) -> None:
        """Hold the broadcast application's sockets (and with them, every call's fate)."""
        if not self._runners:
            self._runners = [
                asyncio.create_task(s.run(), name=f"broadcast-app-{s.server}")
                for s in self.supervisors
            ]

    async def follow(self) -> None:
        """Let the broadcast application's sockets go (another replica leads)."""
        runners, self._runners = self._runners, []
        for supervisor in self.supervisors:
            supervisor.stop()
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)

    async def stop(self, timeout: float = 5.0) -> None:
        """Ordered: stop taking calls, send every call still on offer back to the dialplan
        (TIMEOUT), wait (bounded) for hand-overs and returns in flight, cancel the rest. A
        replica that hands its leadership to another sends nothing back: the calls on offer
        go on under the new leader."""
        if self._replica is not None and await self._replica.stop():
            await self.executor.stop(timeout)
            return
        await self.follow()
        drained = self.core.drain()
        if returned := sum(isinstance(c, ResumeDialplan) for c in drained):
            log.info("shutting down: returning %d call(s) on offer to the dialplan", returned)
        self.executor.execute(drained)
        await self.executor.stop(timeout)

    async def _while_connected(self, guard: AppGuard) -> None:
        """On each server's broadcast socket: recovery and sweeps of that server's calls;
        a replica's first socket makes the recorded calls its own."""
        try:
            if self._replica is not None and not self._holding:
                self._holding = True
                await self._replica.taken_over()
            await self.recovery.run(guard.parked)
        finally:
            # Cancelled as its socket closed: once none is left, the next one takes over.
            if not self.connected:
                self._holding = False

    # -- the broadcast application's events ---------------------------------------------------

    def _server_event(self, server: str, event: dict[str, Any]) -> None:
        if self.on_server_event is not None:
            self.on_server_event(event, server)
        self.on_event(event, server)

    def on_event(self, event: dict[str, Any], server: str | None = None) -> None:
        """An event of the broadcast application (on `server`, when it came on its socket)."""
        kind = event.get("type")
        channel_id = (event.get("channel") or {}).get("id", "")
        try:
            if kind == "StasisStart":
                self.asterisk_id = event.get("asterisk_id", self.asterisk_id)
                self._on_stasis_start(event, server)
            elif kind == "StasisEnd":
                self._after_offer(channel_id, self._channel_left, channel_id)
            elif kind == "ApplicationMoveFailed":
                destination = str(event.get("destination", ""))
                self._after_offer(channel_id, self._move_failed, channel_id, destination)
        except Exception:
            # A bug must cost one call at most, never the broadcast application's socket.
            log.exception("channel %s: %s could not be handled", channel_id, kind)
            if kind == "StasisStart" and self.core.get(channel_id) is None:
                self.executor.send_back_unknown(channel_id, Verdict.FAILED)

    def _feed(self, commands: list[Command]) -> None:
        self.executor.execute(commands)

    def _after_offer(self, channel_id: str, handle: Any, *args: Any) -> None:
        """Handle an event once the channel's offer is open (a replica records it first)."""
        if self._replica is not None:
            self._replica.after_offer(channel_id, handle, *args)
        else:
            handle(*args)

    def _channel_left(self, channel_id: str) -> None:
        self._feed(self.core.channel_left(channel_id, self._clock.now()))

    def _move_failed(self, channel_id: str, destination: str) -> None:
        self._feed(self.core.move_failed(channel_id, destination, self._clock.now()))

    def _on_stasis_start(self, event: dict[str, Any], server: str | None) -> None:
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
        if server is not None and self.reaches is not None:
            # Several servers: an application whose socket to this one is not up (yet)
            # could not be handed the call; native would not offer it either.
            recipients = [app for app in recipients if self.reaches(app, server)]
        self.presenter.remember(channel_id, invocation)  # before the snapshot is presented
        offer = Offer(
            invocation=invocation,
            options=options,
            app_filter=app_filter,
            channel=self.presenter.channel(channel),
            asterisk_id=event.get("asterisk_id"),
            timestamp=event.get("timestamp") or asterisk_timestamp(),
        )
        if self._replica is not None:
            self._replica.record_offer(channel_id, offer, recipients, started)
        else:
            self.open_offer(channel_id, offer, recipients, started)

    def open_offer(
        self,
        channel_id: str,
        offer: Offer,
        recipients: list[str],
        started: float,
        deadline: float | None = None,
    ) -> None:
        """Offer the channel (a replica: once Redis has the record, until `deadline`)."""
        options = offer.options
        commands = self.core.offer(
            channel_id,
            offer,
            recipients,
            options.timeout_ms,
            options.notify_claimed,
            self._clock.now(),
            deadline,
        )
        if offer.invocation.form == "direct":
            self.executor.spawn(self.gateway.preset_status(channel_id), f"preset-{channel_id}")
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
        """Decide a claim; None means the channel is not the proxy's (Asterisk answers).
        A replica has Redis decide (ClusterUnavailable: 503 when it cannot be reached)."""
        if self._replica is None:
            decided = self.claim_at_once(channel_id, app)
            return (
                decided if decided is None or isinstance(decided, ClaimOutcome) else await decided
            )
        now = self._clock.now()
        broadcast = self.core.get(channel_id)
        outcome = await self._replica.claim(channel_id, app)
        if outcome is None:
            return None
        commands: list[Command] = []
        if outcome is ClaimOutcome.WON:  # this replica's mirror follows Redis
            commands = self.core.claim(channel_id, app, self._clock.now())[1]
        return await self._settled(channel_id, app, outcome, commands, broadcast, now)

    def claim_at_once(
        self, channel_id: str, app: str
    ) -> ClaimOutcome | Coroutine[Any, Any, ClaimOutcome] | None:
        """One process decides a claim the moment it is read: the outcome of one that loses,
        or for the winner its hand-over, to await before answering. None: the channel is
        not the proxy's, or Redis decides (replicas: `claim`)."""
        now = self._clock.now()
        if self._replica is not None or not self.core.knows(channel_id, now):
            return None
        broadcast = self.core.get(channel_id)
        outcome, commands = self.core.claim(channel_id, app, now)
        if commands:
            return self._settled(channel_id, app, outcome, commands, broadcast, now)
        _log_claim(channel_id, app, outcome)
        return outcome

    async def _settled(
        self,
        channel_id: str,
        app: str,
        outcome: ClaimOutcome,
        commands: list[Command],
        broadcast: Broadcast[Offer] | None,
        now: float,
    ) -> ClaimOutcome:
        """The winner's hand-over is written before its claim is answered."""
        if commands:
            await self.executor.carry_out(commands)
        if outcome is ClaimOutcome.WON and broadcast is not None:
            self._metrics.time_to_claim.observe(now - broadcast.offered_at)
        _log_claim(channel_id, app, outcome)
        return outcome

    def released(self, channel_id: str) -> None:
        """Asterisk accepted a `continue` or hangup of the channel through the proxy: a call
        on offer (only a hangup gets through) has left, the winner's session is over. Native
        answers claims with 404 from then on; the StasisEnd that says so can still be on its
        way when the next claim arrives."""
        broadcast = self.core.get(channel_id)
        if broadcast is not None and broadcast.state is State.OFFERED:
            self._after_offer(channel_id, self._hung_up, channel_id)
        else:
            self._session_ended(channel_id)

    def _hung_up(self, channel_id: str) -> None:
        self._ended_here(channel_id, self.core.channel_left(channel_id, self._clock.now()))

    def _session_ended(self, channel_id: str) -> None:
        self._ended_here(channel_id, self.core.session_ended(channel_id, self._clock.now()))

    def _ended_here(self, channel_id: str, commands: list[Command]) -> None:
        """A broadcast this replica saw end: Redis is told, so claims anywhere get 404."""
        if commands and self._replica is not None:
            self._replica.released(channel_id)
        self._feed(commands)

    def holds(self, channel_id: str) -> bool:
        """True while the channel is on offer or claimed: a hangup or `continue` of it
        through the proxy ends its broadcast (`released`)."""
        return self.core.get(channel_id) is not None

    def is_locked(self, channel_id: str) -> bool:
        """True while no application controls the channel (native: not in Stasis)."""
        return self.core.is_locked(channel_id)

    # -- hooks into downstream sessions -------------------------------------------------------

    def observe_upstream_frame(self, text: str) -> str | None:
        """Present a frame from Asterisk as native would; track the winner's session."""
        # A replica also watches calls on offer: the winner's StasisStart can come before
        # word of its claim (core.session_started).
        watched = len(self.core) if self._replica is not None else self.core.claimed_count
        if not (watched and ('"StasisStart"' in text or '"StasisEnd"' in text)):
            return self.presenter.frame(text)
        event = orjson.loads(text)  # parsed once, for both
        ended = self._track_session(event)
        out = self.presenter.frame(text, event)
        if ended is not None:
            # After the StasisEnd itself was presented.
            self._session_ended(ended)
        return out

    def _track_session(self, event: Any) -> str | None:
        """Feed the winner's StasisStart; return the channel id of a StasisEnd."""
        channel = event.get("channel") if isinstance(event, dict) else None
        if not isinstance(channel, dict):
            return None
        channel_id = channel.get("id", "")
        if event.get("type") == "StasisStart":
            app = event.get("application", "")
            mirror = self._replica is not None
            commands = self.core.session_started(channel_id, app, self._clock.now(), mirror=mirror)
            if commands and self._replica is not None:
                self._replica.session_started(channel_id, app)
            self._feed(commands)
        elif event.get("type") == "StasisEnd" and self.core.in_session(channel_id):
            return str(channel_id)
        return None
