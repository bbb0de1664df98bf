"""Carrying out the core's commands: CallBroadcast/CallClaimed fan-out, timers, the hand-over
to the winner, asking Asterisk where a channel is, the return to the dialplan. What comes
back (a timer firing, Asterisk's answers) is fed to the core as an input, and the commands
it answers with are carried out in turn. Nothing here decides.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ..errors import ProxyError
from ..metrics import Metrics
from ..registry import AppRegistry, Audience
from .app_filter import AppFilter
from .clock import Clock, TimerHandle
from .core import (
    Accepted,
    ArmTimer,
    Broadcast,
    BroadcastCore,
    CancelTimer,
    Command,
    Forget,
    HandOver,
    HandOverAnswer,
    LocateChannel,
    Location,
    Outcome,
    Report,
    ResumeDialplan,
    SendCallBroadcast,
    SendCallClaimed,
    TimerKind,
    Verdict,
)
from .dialplan import BroadcastOptions
from .events import call_broadcast, call_claimed, fan_out
from .handover import ChannelGateway, HandOverResult
from .presentation import Invocation, Presenter, asterisk_timestamp

__all__ = ["Executor", "Offer", "log_channel"]

log = logging.getLogger(__name__)


def log_channel(level: int, channel_id: str, message: str, *args: object) -> None:
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


class Executor:
    def __init__(
        self,
        core: BroadcastCore[Offer],
        gateway: ChannelGateway,
        registry: AppRegistry,
        presenter: Presenter,
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self.core = core
        self._gateway = gateway
        self._registry = registry  # this proxy's sockets, for the fan-out
        self._presenter = presenter
        self._metrics = metrics
        self._clock = clock
        self._timers: dict[tuple[TimerKind, str], TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.returning: set[str] = set()  # channels with a return to the dialplan in flight
        # Replicas (cluster.replica) replace these three: who may be offered a call (every
        # replica's applications), whether this replica may act on Asterisk (it leads), and
        # who takes a deadline's verdict (Redis).
        self.audience: Audience = registry
        self.acting: Callable[[], bool] = lambda: True
        self.on_deadline: Callable[[str], None] | None = None
        self.on_end: Callable[[str, Outcome], None] | None = None
        # Replicas: a winner whose replica just went away reconnects to another; its
        # hand-over waits this long for it (one process: none, as native).
        self.reconnect_grace = 0.0

    # -- tasks and timers ---------------------------------------------------------------------

    def spawn(
        self, coro: Coroutine[Any, Any, Any], name: str, *, eager: bool = False
    ) -> asyncio.Task[Any]:
        """An owned task. `eager`: its first step runs now, up to its first wait (the
        winner's hand-over is written as its claim is read, ahead of whatever else this
        turn of the loop holds); Python 3.11 has no eager start: the loop's next turn."""
        if eager and sys.version_info >= (3, 12):
            loop = asyncio.get_running_loop()
            task = asyncio.Task(coro, loop=loop, name=name, eager_start=True)
        else:
            task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def stop(self, timeout: float) -> None:
        """Wait (bounded) for hand-overs and returns in flight, cancel the rest."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in list(self._tasks):
            task.cancel()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    def _fire(self, kind: TimerKind, channel_id: str) -> None:
        self._timers.pop((kind, channel_id), None)
        if kind is TimerKind.DEADLINE and self.on_deadline is not None:
            self.on_deadline(channel_id)
            return
        self.execute(self.core.timer_fired(kind, channel_id, self._clock.now()))

    # -- commands -----------------------------------------------------------------------------

    async def carry_out(self, commands: list[Command]) -> None:
        """Inside a claim: the hand-over is written before the claim is answered, and
        before whatever follows it (CallClaimed)."""
        for command in commands:
            if self._skipped(command):
                continue
            if isinstance(command, HandOver):
                await self._start_hand_over(command.broadcast, command.winner)
            else:
                self._carry_out(command)

    def execute(self, commands: list[Command], decided: bool = False) -> None:
        """`decided`: Redis took this verdict under this replica's lease (a fenced script),
        so it is carried out even if the lease lapsed since: nobody else can take it."""
        for command in commands:
            if self._skipped(command, decided):
                continue
            if isinstance(command, HandOver):
                self.spawn(
                    self._start_hand_over(command.broadcast, command.winner),
                    f"handover-{command.broadcast.channel_id}",
                )
            else:
                self._carry_out(command)

    def _skipped(self, command: Command, decided: bool = False) -> bool:
        """Acting on Asterisk and counting calls are the leader's: another replica skips
        them (one process always leads)."""
        return isinstance(command, _ACTIONS) and not (decided or self.acting())

    def _carry_out(self, command: Command) -> None:
        if isinstance(command, ArmTimer):
            key = (command.kind, command.channel_id)
            if (old := self._timers.get(key)) is not None:
                old.cancel()
            self._timers[key] = self._clock.call_at(
                command.deadline, self._fire, command.kind, command.channel_id
            )
        elif isinstance(command, CancelTimer):
            handle = self._timers.pop((command.kind, command.channel_id), None)
            if handle is not None:
                handle.cancel()
        elif isinstance(command, SendCallBroadcast):
            offer = command.broadcast.context
            event = call_broadcast(
                offer.channel, offer.invocation.exten, offer.timestamp, offer.asterisk_id
            )
            fan_out(event, command.apps, self._registry)
        elif isinstance(command, SendCallClaimed):
            offer = command.broadcast.context
            event = call_claimed(
                offer.channel, command.winner, asterisk_timestamp(), offer.asterisk_id
            )
            recipients = self.recipients(command.broadcast.channel_id, offer.app_filter)
            fan_out(event, recipients, self._registry)
        elif isinstance(command, ResumeDialplan):
            channel_id = command.broadcast.channel_id
            invocation = command.broadcast.context.invocation
            self.send_back(
                channel_id, self._gateway.resume(channel_id, invocation, command.verdict)
            )
        elif isinstance(command, Forget):
            broadcast = command.broadcast
            self._presenter.forget(broadcast.channel_id, broadcast.context.invocation)
        elif isinstance(command, Report):
            self._report(command)
        elif isinstance(command, Accepted):
            if (claimed_at := command.broadcast.claimed_at) is not None:
                self._metrics.handover.observe(self._clock.now() - claimed_at)
        elif isinstance(command, LocateChannel):
            name = f"locate-{command.broadcast.channel_id}"
            self.spawn(self._locate(command.broadcast, command.ask_exists), name)
        else:  # HandOver: see execute() and carry_out()
            raise AssertionError(f"unexpected command {command!r}")

    def _report(self, report: Report) -> None:
        if report.outcome is Outcome.CLAIMED:
            # Counted and logged once the StasisStart is on its way to the winner.
            self._clock.call_soon(self._handed_over, report.channel_id, report.detail)
            return
        self._metrics.outcomes.labels(report.outcome.value).inc()
        if self.on_end is not None and report.outcome is not Outcome.TIMEOUT:
            self.on_end(report.channel_id, report.outcome)  # a TIMEOUT was recorded already
        if report.outcome is Outcome.TIMEOUT:
            log_channel(logging.WARNING, report.channel_id, "not claimed within timeout")
        elif report.outcome is Outcome.HANGUP:
            log_channel(logging.INFO, report.channel_id, "hung up during the broadcast")
        else:
            log_channel(logging.WARNING, report.channel_id, "%s", report.detail)

    def _handed_over(self, channel_id: str, winner: str) -> None:
        self._metrics.outcomes.labels(Outcome.CLAIMED.value).inc()
        log_channel(logging.INFO, channel_id, "handed over to %r", winner)

    def recipients(self, channel_id: str, app_filter: AppFilter) -> list[str]:
        """The connected applications the filter selects (matching is bounded per call)."""
        before = app_filter.timeouts
        recipients = app_filter.recipients(self.audience.apps())
        if timed_out := app_filter.timeouts - before:
            self._metrics.filter_timeouts.inc(timed_out)
            log_channel(
                logging.WARNING,
                channel_id,
                "app_filter %r: matching timed out for %d application(s), not offered",
                app_filter.pattern,
                timed_out,
            )
        return recipients

    # -- the hand-over ------------------------------------------------------------------------

    async def _start_hand_over(self, broadcast: Broadcast[Offer], winner: str) -> None:
        """Write the hand-over to Asterisk; a task waits for its answer and feeds it."""
        channel_id = broadcast.channel_id
        pending: asyncio.Task[tuple[HandOverResult, str]] | None = None
        why = f"{winner!r} is no longer connected"
        if await self._connected(winner):
            invocation, args = broadcast.context.invocation, broadcast.context.options.args
            if self._gateway.moves(invocation, args):
                self._presenter.plumbing.moved(channel_id)
            try:
                verdict = await self._gateway.hand_over(channel_id, invocation, winner, args)
                pending = self.spawn(_settled(verdict), f"handover-verdict-{channel_id}")
            except ProxyError as exc:
                why = exc.message
        self.spawn(self._answered(broadcast, winner, pending, why), f"handover-{channel_id}")

    async def _connected(self, app: str) -> bool:
        """Whether the winner is connected, waiting `reconnect_grace` for it if not."""
        deadline = self._clock.now() + self.reconnect_grace
        while not self.audience.connected(app):
            if self._clock.now() >= deadline:
                return False
            await self._clock.sleep(0.05)
        return True

    async def _answered(
        self,
        broadcast: Broadcast[Offer],
        winner: str,
        pending: Awaitable[tuple[HandOverResult, str]] | None,
        why: str,
    ) -> None:
        result = HandOverResult.FAILED
        if pending is not None:
            result, why = await pending
        if result is HandOverResult.UNKNOWN:
            log_channel(
                logging.WARNING,
                broadcast.channel_id,
                "hand-over to %r: %s; asking Asterisk",
                winner,
                why,
            )
        answer = HandOverAnswer[result.name]
        self.execute(self.core.handover_answered(broadcast, answer, why, self._clock.now()))

    async def _locate(self, broadcast: Broadcast[Offer], ask_exists: bool) -> None:
        channel_id = broadcast.channel_id
        try:
            if await self._gateway.parked(channel_id):
                where = Location.PARKED
            elif not ask_exists or await self._gateway.exists(channel_id):
                where = Location.ELSEWHERE
            else:
                where = Location.GONE
        except ProxyError:
            where = Location.UNKNOWN
        self.execute(self.core.located(broadcast, where, self._clock.now()))

    # -- returns to the dialplan --------------------------------------------------------------

    def send_back(self, channel_id: str, resume: Coroutine[Any, Any, Any]) -> None:
        """Run a return to the dialplan; sweeps leave a channel with one in flight alone."""
        self.returning.add(channel_id)
        task = self.spawn(resume, f"resume-{channel_id}")
        task.add_done_callback(lambda _: self.returning.discard(channel_id))

    def send_back_unknown(self, channel_id: str, verdict: Verdict) -> None:
        """Send back a channel the core does not know (its invocation read from Asterisk)."""
        self.send_back(channel_id, self._resume_unknown(channel_id, verdict))

    async def _resume_unknown(self, channel_id: str, verdict: Verdict) -> None:
        try:
            invocation = await self._gateway.invocation_of(channel_id)
        except ProxyError as exc:
            log_channel(logging.WARNING, channel_id, "cannot send it back yet: %s", exc.message)
            return  # still parked: a sweep finds it again
        if invocation is not None:
            await self._gateway.resume(channel_id, invocation, verdict)


# What only the replica that leads does: everything that acts on Asterisk or counts a call.
_ACTIONS = (HandOver, ResumeDialplan, LocateChannel, Report, Accepted)


async def _settled(verdict: Awaitable[HandOverResult]) -> tuple[HandOverResult, str]:
    """A hand-over's result and why, its failures included (never raises ProxyError)."""
    try:
        result = await verdict
    except ProxyError as exc:  # timed out, or the socket closed under it
        return HandOverResult.UNKNOWN, exc.message
    return result, result.value
