"""The broadcast/claim state machine: every decision, every timer; no I/O, no clock of its own.

Inputs are method calls that carry the current time; outputs are commands (frozen
dataclasses) that the I/O shell carries out in order. Time is a command too: `ArmTimer`
asks the shell to call `timer_fired(kind, channel_id, now)` at a deadline, `CancelTimer`
withdraws it. One `Broadcast` record per channel id, in one of these states:

    OFFERED --claim--> HANDING_OVER --DONE--> AWAITING_SESSION --WATCHDOG--> CHECKING
                            `--UNKNOWN--> CONFIRMING --elsewhere--^
    HANDING_OVER, CONFIRMING, AWAITING_SESSION, CHECKING --winner's StasisStart--> IN_SESSION

    OFFERED            on offer; DEADLINE armed. expire: ResumeDialplan(TIMEOUT);
                       channel_left (hangup): ended.
    HANDING_OVER       claimed; the hand-over is written, Asterisk's answer awaited.
                       FAILED (or ApplicationMoveFailed): ResumeDialplan(FAILED);
                       CHANNEL_GONE: ended; UNKNOWN (answer lost or late): CONFIRMING.
    CONFIRMING         asking Asterisk where the channel is (LocateChannel): still parked
                       or unknown: FAILED; elsewhere: AWAITING_SESSION; gone: ended.
    AWAITING_SESSION   Asterisk took it; WATCHDOG armed until the winner's StasisStart.
                       The watchdog fires: CHECKING.
    CHECKING           asking whether the channel never left: parked: FAILED; otherwise the
                       winner never received it (gone?): ended.
    RELOCATING         (replicas) this replica took over a claim another wrote: asking
                       Asterisk where the channel is; parked: HANDING_OVER (the hand-over is
                       written now); elsewhere or unknown: AWAITING_SESSION; gone: ended.
    IN_SESSION         the winner controls the channel; claims get 409 until its session
                       ends (StasisEnd, an accepted `continue`/hangup, or a sweep finding
                       the channel gone).

Inputs: `offer`, `claim`, `timer_fired` (`expire` for the DEADLINE), `channel_left`,
`handover_answered`, `located`, `move_failed`, `handover_failed`, `session_started`,
`session_ended`, `channel_gone`, `drain`, and for replicas `dismiss` (another replica ended
the broadcast) and `taken_over` (this replica now carries the claims); queries: `knows`,
`in_session`, `is_locked`, `claimed`, `orphans`. Commands: see `Command`.

Timers (`TimerKind`): DEADLINE (the offer's timeout), WATCHDOG (HANDOVER_WATCHDOG s for the
winner's StasisStart), GRACE (RELEASE_GRACE s during which an ended broadcast's snapshots
still read as native's, then `Forget`). The periodic sweep (SWEEP_INTERVAL) feeds
`channel_gone` for claimed channels no longer on Asterisk, and `SweepRule` decides which
channels left in the broadcast application go back: those found unknown twice in a row.

This mirrors res_stasis_broadcast: the verdict is taken once (a claim that lands after the
deadline but before the timer fires still wins), a claimed channel answers 409 until the
winner's Stasis session ends, and an ended broadcast answers 404.

An ended broadcast is remembered for LINGER seconds (`knows`), so that the losers' late
claims, which arrive by the thousand under load, are answered here with native's 404 rather
than forwarded to Asterisk, which would only say the same after a round trip.
"""

from __future__ import annotations

import enum
import random
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = [
    "HANDOVER_WATCHDOG",
    "LINGER",
    "RELEASE_GRACE",
    "SWEEP_INTERVAL",
    "Accepted",
    "ArmTimer",
    "Broadcast",
    "BroadcastCore",
    "CancelTimer",
    "ClaimOutcome",
    "Command",
    "Forget",
    "HandOver",
    "HandOverAnswer",
    "IllegalTransition",
    "LocateChannel",
    "Location",
    "Outcome",
    "Report",
    "ResumeDialplan",
    "SendCallBroadcast",
    "SendCallClaimed",
    "State",
    "SweepRule",
    "TimerKind",
    "Verdict",
]

C = TypeVar("C")

LINGER = 10.0  # seconds an ended broadcast still answers its late claims itself
HANDOVER_WATCHDOG = 5.0  # seconds for the winner's StasisStart to show up after the hand-over
RELEASE_GRACE = 5.0  # seconds an ended broadcast's snapshots are still presented as native's
SWEEP_INTERVAL = 30.0  # how often claimed broadcasts and parked channels are checked


class IllegalTransition(RuntimeError):
    """An input that the current state cannot accept: a bug in the caller, never user input."""


class State(enum.Enum):
    OFFERED = "offered"
    HANDING_OVER = "handing over"
    CONFIRMING = "confirming"
    AWAITING_SESSION = "awaiting session"
    CHECKING = "checking"
    IN_SESSION = "in session"
    RELOCATING = "relocating"


_CLAIMED = frozenset(State) - {State.OFFERED}
_HANDING = _CLAIMED - {State.IN_SESSION}  # claimed, the winner's StasisStart not yet seen


class TimerKind(enum.Enum):
    DEADLINE = "deadline"
    WATCHDOG = "watchdog"
    GRACE = "grace"


class Verdict(enum.Enum):
    """What the dialplan sees in STASISSTATUS when the proxy sends the channel back."""

    TIMEOUT = "TIMEOUT"
    FAILED = "FAILED"


class ClaimOutcome(enum.Enum):
    """The answer to one claim, mapped to HTTP by the shell (native's codes plus 422)."""

    WON = 204
    NOT_FOUND = 404
    CONFLICT = 409
    NOT_OFFERED = 422


class HandOverAnswer(enum.Enum):
    """Asterisk's answer to a hand-over."""

    DONE = "done"
    CHANNEL_GONE = "channel gone"
    FAILED = "failed"
    UNKNOWN = "no answer from Asterisk"  # it may or may not have taken the hand-over


class Location(enum.Enum):
    """Where Asterisk says a claimed channel is (the answer to LocateChannel)."""

    PARKED = "parked"  # still in the broadcast application
    ELSEWHERE = "elsewhere"  # exists, out of the broadcast application
    GONE = "gone"  # does not exist
    UNKNOWN = "unknown"  # Asterisk could not say


class Outcome(enum.Enum):
    """How a broadcast went, as counted and logged."""

    CLAIMED = "claimed"
    TIMEOUT = "timeout"
    FAILED = "failed"
    HANGUP = "hangup"


@dataclass(eq=False)
class Broadcast(Generic[C]):
    """One channel on offer. `context` is the shell's own data (snapshot, origin...)."""

    channel_id: str
    context: C
    recipients: frozenset[str]
    notify_claimed: bool
    offered_at: float
    deadline: float
    state: State = State.OFFERED
    winner: str | None = None
    claimed_at: float | None = None
    why: str = ""  # why the hand-over's outcome is being confirmed (CONFIRMING)


# -- commands ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendCallBroadcast:
    """Send CallBroadcast to each app, concurrently; `apps` is already in shuffled order."""

    broadcast: Broadcast[Any]
    apps: tuple[str, ...]


@dataclass(frozen=True)
class ArmTimer:
    """Call `timer_fired(kind, channel_id, now)` at `deadline` (replacing one of the same
    kind for the channel)."""

    channel_id: str
    deadline: float
    kind: TimerKind = TimerKind.DEADLINE


@dataclass(frozen=True)
class CancelTimer:
    channel_id: str
    kind: TimerKind = TimerKind.DEADLINE


@dataclass(frozen=True)
class HandOver:
    """Move the channel from the broadcast application into the winner's Stasis(); the
    answer comes back as `handover_answered`. Written before the claim is answered."""

    broadcast: Broadcast[Any]
    winner: str


@dataclass(frozen=True)
class SendCallClaimed:
    """Tell every filter-matching connected app (winner included) who won."""

    broadcast: Broadcast[Any]
    winner: str


@dataclass(frozen=True)
class ResumeDialplan:
    """Send the channel back to the dialplan with a verdict (no winner)."""

    broadcast: Broadcast[Any]
    verdict: Verdict


@dataclass(frozen=True)
class LocateChannel:
    """Ask Asterisk whether the channel is still parked (and, if `ask_exists`, whether it
    exists at all); the answer comes back as `located`."""

    broadcast: Broadcast[Any]
    ask_exists: bool


@dataclass(frozen=True)
class Accepted:
    """Asterisk took the hand-over (the shell measures how long it took)."""

    broadcast: Broadcast[Any]


@dataclass(frozen=True)
class Forget:
    """Stop presenting the broadcast's snapshots as native's."""

    broadcast: Broadcast[Any]


@dataclass(frozen=True)
class Report:
    """Count and log how the broadcast went (`detail` says why, for FAILED)."""

    channel_id: str
    outcome: Outcome
    detail: str = ""


Command = (
    SendCallBroadcast
    | ArmTimer
    | CancelTimer
    | HandOver
    | SendCallClaimed
    | ResumeDialplan
    | LocateChannel
    | Accepted
    | Forget
    | Report
)


class BroadcastCore(Generic[C]):
    """All broadcasts in flight, keyed by channel id."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._broadcasts: dict[str, Broadcast[C]] = {}
        # Ended broadcasts: channel id -> when it ended, oldest first.
        self._ended: OrderedDict[str, float] = OrderedDict()
        # Ended broadcasts whose GRACE timer is armed.
        self._releasing: dict[str, Broadcast[C]] = {}
        self._claimed = 0

    def __len__(self) -> int:
        return len(self._broadcasts)

    def get(self, channel_id: str) -> Broadcast[C] | None:
        return self._broadcasts.get(channel_id)

    def channel_ids(self) -> list[str]:
        return list(self._broadcasts)

    def knows(self, channel_id: str, now: float) -> bool:
        """True while the channel is on offer or claimed, and for LINGER s after its broadcast
        ended: claims for it are this core's to answer (others belong to Asterisk)."""
        self._forget_ended(now)
        return channel_id in self._broadcasts or channel_id in self._ended

    def in_session(self, channel_id: str) -> bool:
        """True while the winner controls the channel (until it lets go)."""
        broadcast = self._broadcasts.get(channel_id)
        return broadcast is not None and broadcast.state is State.IN_SESSION

    def is_locked(self, channel_id: str) -> bool:
        """True while no application controls the channel (native: not in Stasis)."""
        broadcast = self._broadcasts.get(channel_id)
        return broadcast is not None and broadcast.state is not State.IN_SESSION

    def claimed(self) -> list[Broadcast[C]]:
        """Broadcasts won and not yet over."""
        return [b for b in self._broadcasts.values() if b.state is not State.OFFERED]

    def orphans(self, parked: Iterable[str], returning: set[str]) -> set[str]:
        """Of the channels parked in the broadcast application, those this core does not
        know and the shell is not already sending back."""
        return {c for c in parked if c not in self._broadcasts and c not in returning}

    @property
    def claimed_count(self) -> int:
        """Broadcasts won and not yet over (the shell watches their sessions)."""
        return self._claimed

    # -- inputs -------------------------------------------------------------------------------

    def offer(
        self,
        channel_id: str,
        context: C,
        recipients: Iterable[str],
        timeout_ms: int,
        notify_claimed: bool,
        now: float,
        deadline: float | None = None,
    ) -> list[Command]:
        """A channel entered the broadcast application: offer it to `recipients`, until
        `deadline` if given (a replica mirroring another's offer), else `timeout_ms` from now.

        A channel still claimed from an earlier broadcast is replaced: re-entering the
        broadcast application proves the winner's session ended (failover in the dialplan).
        """
        commands: list[Command] = []
        previous = self._broadcasts.get(channel_id)
        if previous is not None:
            if previous.state is State.OFFERED:
                raise IllegalTransition(f"channel {channel_id} is already on offer")
            self._claimed -= 1
            if previous.state is State.AWAITING_SESSION:
                commands.append(CancelTimer(channel_id, TimerKind.WATCHDOG))
        self._ended.pop(channel_id, None)
        if self._releasing.pop(channel_id, None) is not None:
            commands.append(CancelTimer(channel_id, TimerKind.GRACE))
        apps = sorted(set(recipients))
        self._rng.shuffle(apps)
        broadcast: Broadcast[C] = Broadcast(
            channel_id=channel_id,
            context=context,
            recipients=frozenset(apps),
            notify_claimed=notify_claimed,
            offered_at=now,
            deadline=now + max(timeout_ms, 0) / 1000 if deadline is None else deadline,
        )
        self._broadcasts[channel_id] = broadcast
        # The timer first: should the fan-out fail, the call still times out (never strands).
        commands.append(ArmTimer(channel_id, broadcast.deadline))
        if apps:
            commands.append(SendCallBroadcast(broadcast, tuple(apps)))
        return commands

    def claim(self, channel_id: str, app: str, now: float) -> tuple[ClaimOutcome, list[Command]]:
        """First claim from an offered application wins; native's 404/409 otherwise."""
        broadcast = self._broadcasts.get(channel_id)
        if broadcast is None:
            return ClaimOutcome.NOT_FOUND, []
        if broadcast.state is not State.OFFERED:
            return ClaimOutcome.CONFLICT, []
        if app not in broadcast.recipients:
            return ClaimOutcome.NOT_OFFERED, []
        broadcast.state = State.HANDING_OVER
        self._claimed += 1
        broadcast.winner = app
        broadcast.claimed_at = now
        commands: list[Command] = [CancelTimer(channel_id), HandOver(broadcast, app)]
        if broadcast.notify_claimed:
            commands.append(SendCallClaimed(broadcast, app))
        return ClaimOutcome.WON, commands

    def timer_fired(self, kind: TimerKind, channel_id: str, now: float) -> list[Command]:
        """An armed timer fired (stale ones are ignored)."""
        if kind is TimerKind.DEADLINE:
            return self.expire(channel_id, now)
        if kind is TimerKind.WATCHDOG:
            broadcast = self._broadcasts.get(channel_id)
            if broadcast is None or broadcast.state is not State.AWAITING_SESSION:
                return []
            broadcast.state = State.CHECKING
            return [LocateChannel(broadcast, ask_exists=False)]
        released = self._releasing.pop(channel_id, None)
        return [] if released is None else [Forget(released)]

    def expire(self, channel_id: str, now: float) -> list[Command]:
        """The deadline passed: the verdict is taken now, once. Stale timers are ignored."""
        broadcast = self._broadcasts.get(channel_id)
        if broadcast is None or broadcast.state is not State.OFFERED:
            return []
        if now < broadcast.deadline - 0.05:
            raise IllegalTransition(
                f"timer for {channel_id} fired {broadcast.deadline - now:.3f}s early"
            )
        commands: list[Command] = [Report(channel_id, Outcome.TIMEOUT)]
        commands += self._end(broadcast, now)
        commands.append(ResumeDialplan(broadcast, Verdict.TIMEOUT))
        return commands

    def channel_left(self, channel_id: str, now: float) -> list[Command]:
        """The channel hung up or left the broadcast application on its own."""
        broadcast = self._broadcasts.get(channel_id)
        if broadcast is None or broadcast.state is not State.OFFERED:
            # After a claim, leaving the broadcast application is what the hand-over does.
            return []
        return [Report(channel_id, Outcome.HANGUP), *self._end(broadcast, now)]

    def handover_answered(
        self, broadcast: Broadcast[C], answer: HandOverAnswer, why: str, now: float
    ) -> list[Command]:
        """Asterisk's answer to the hand-over (ignored if the broadcast is over)."""
        if self._broadcasts.get(broadcast.channel_id) is not broadcast:
            return []  # ended, or the channel re-entered the broadcast meanwhile
        if broadcast.state is State.IN_SESSION:
            # The winner's StasisStart came first: the winner has the channel.
            return [Accepted(broadcast)] if answer is HandOverAnswer.DONE else []
        if broadcast.state is not State.HANDING_OVER:
            return []
        if answer is HandOverAnswer.DONE:
            return self._accepted(broadcast, now)
        if answer is HandOverAnswer.UNKNOWN:
            broadcast.state = State.CONFIRMING
            broadcast.why = why
            return [LocateChannel(broadcast, ask_exists=True)]
        return self._failed(broadcast, why, answer is HandOverAnswer.CHANNEL_GONE, now)

    def located(self, broadcast: Broadcast[C], location: Location, now: float) -> list[Command]:
        """Where Asterisk says the channel is, asked by LocateChannel."""
        if self._broadcasts.get(broadcast.channel_id) is not broadcast:
            return []
        if broadcast.state is State.CONFIRMING:
            # Asterisk did not say whether it took the hand-over: the channel having left
            # the broadcast application says it did; still there, it did not.
            if location is Location.ELSEWHERE:
                return self._accepted(broadcast, now)
            gone = location is Location.GONE
            return self._failed(broadcast, broadcast.why, gone, now)
        if broadcast.state is State.RELOCATING:
            if location is Location.PARKED:
                broadcast.state = State.HANDING_OVER
                assert broadcast.winner is not None
                return [HandOver(broadcast, broadcast.winner)]
            if location is Location.GONE:
                detail = "the channel was gone when this replica took the claim over"
                return [
                    Report(broadcast.channel_id, Outcome.FAILED, detail),
                    *self._end(broadcast, now),
                ]
            return self._accepted(broadcast, now)
        if broadcast.state is State.CHECKING:
            if location is Location.PARKED:
                return self._failed(broadcast, "the channel never left", False, now)
            detail = f"{broadcast.winner!r} never received the channel (gone?)"
            return [
                Report(broadcast.channel_id, Outcome.FAILED, detail),
                *self._end(broadcast, now),
            ]
        return []  # the winner's StasisStart arrived meanwhile

    def move_failed(self, channel_id: str, destination: str, now: float) -> list[Command]:
        """ApplicationMoveFailed: the winner's application was gone by the time Asterisk
        moved the channel; it is still here, and the dialplan gets FAILED."""
        broadcast = self._broadcasts.get(channel_id)
        if broadcast is None or broadcast.state not in _HANDING:
            return []
        return self._failed(broadcast, "not registered on Asterisk", False, now, destination)

    def handover_failed(self, channel_id: str, channel_gone: bool, now: float) -> list[Command]:
        """The winner could not get the channel: FAILED, as native's stasis_app_exec failure."""
        broadcast = self._broadcasts.get(channel_id)
        if broadcast is None or broadcast.state not in _CLAIMED:
            found = "nothing" if broadcast is None else broadcast.state.value
            raise IllegalTransition(f"channel {channel_id}: expected claimed, found {found}")
        return self._failed(broadcast, "", channel_gone, now)

    def session_started(
        self, channel_id: str, app: str, now: float, *, mirror: bool = False
    ) -> list[Command]:
        """A StasisStart seen downstream: the winner's first one means it has the channel.
        `mirror`: this core mirrors broadcasts another replica decides, so the StasisStart
        can come before word of the claim another replica answered (Asterisk moved the
        channel only because that claim won): the claim is taken as made, its hand-over as
        done. One process decides every claim itself: there, no claim, no session."""
        broadcast = self._broadcasts.get(channel_id)
        commands: list[Command] = []
        if mirror and broadcast is not None and broadcast.state is State.OFFERED:
            if app not in broadcast.recipients:
                return []
            claimed = self.claim(channel_id, app, now)[1]
            commands += [c for c in claimed if not isinstance(c, HandOver)]
        if broadcast is None or broadcast.state not in _HANDING or broadcast.winner != app:
            return []
        commands.append(Report(channel_id, Outcome.CLAIMED, app))
        if broadcast.state is State.AWAITING_SESSION:
            commands.append(CancelTimer(channel_id, TimerKind.WATCHDOG))
        broadcast.state = State.IN_SESSION
        return commands

    def session_ended(self, channel_id: str, now: float) -> list[Command]:
        """The winner's Stasis session ended (its StasisEnd, or Asterisk accepted a
        `continue` or hangup through the proxy): the broadcast ends."""
        broadcast = self._broadcasts.get(channel_id)
        if broadcast is None or broadcast.state is not State.IN_SESSION:
            return []
        return self._end(broadcast, now)

    def channel_gone(self, broadcast: Broadcast[C], now: float) -> list[Command]:
        """A sweep found a claimed channel no longer on Asterisk (its StasisEnd was never
        seen: the winner's socket was gone)."""
        if self._broadcasts.get(broadcast.channel_id) is not broadcast:
            return []
        if broadcast.state is State.OFFERED:
            return []
        return self._end(broadcast, now)

    def dismiss(self, channel_id: str, now: float) -> list[Command]:
        """Another replica ended the broadcast (its verdict, or the winner let go): this
        replica's mirror of it ends too, whatever its state."""
        broadcast = self._broadcasts.get(channel_id)
        return [] if broadcast is None else self._end(broadcast, now)

    def taken_over(self) -> list[Command]:
        """This replica now leads: claims whose hand-over another replica may or may not
        have written are located first (parked: hand over now; elsewhere: taken)."""
        commands: list[Command] = []
        for broadcast in self._broadcasts.values():
            if broadcast.state in (State.HANDING_OVER, State.CONFIRMING, State.CHECKING):
                broadcast.state = State.RELOCATING
                commands.append(LocateChannel(broadcast, ask_exists=True))
        return commands

    def drain(self) -> list[Command]:
        """Shutdown: every channel still on offer goes back to the dialplan (TIMEOUT)."""
        commands: list[Command] = []
        for channel_id, broadcast in list(self._broadcasts.items()):
            if broadcast.state is State.OFFERED:
                del self._broadcasts[channel_id]
                commands += [CancelTimer(channel_id), ResumeDialplan(broadcast, Verdict.TIMEOUT)]
        return commands

    # -- transitions --------------------------------------------------------------------------

    def _accepted(self, broadcast: Broadcast[C], now: float) -> list[Command]:
        broadcast.state = State.AWAITING_SESSION
        deadline = now + HANDOVER_WATCHDOG
        return [Accepted(broadcast), ArmTimer(broadcast.channel_id, deadline, TimerKind.WATCHDOG)]

    def _failed(
        self,
        broadcast: Broadcast[C],
        why: str,
        gone: bool,
        now: float,
        winner: str | None = None,
    ) -> list[Command]:
        """FAILED, as native's stasis_app_exec failure; no dialplan for a channel gone."""
        name = broadcast.winner if winner is None else winner
        detail = f"hand-over to {name!r} failed: {why}"
        commands: list[Command] = [Report(broadcast.channel_id, Outcome.FAILED, detail)]
        commands += self._end(broadcast, now, grace=False)
        commands.append(Forget(broadcast))
        if not gone:
            commands.append(ResumeDialplan(broadcast, Verdict.FAILED))
        return commands

    def _end(self, broadcast: Broadcast[C], now: float, grace: bool = True) -> list[Command]:
        """The broadcast is over: its timer goes, and (`grace`) its snapshots read as
        native's for RELEASE_GRACE more seconds."""
        channel_id = broadcast.channel_id
        del self._broadcasts[channel_id]
        commands: list[Command] = []
        if broadcast.state is State.OFFERED:
            commands.append(CancelTimer(channel_id))
        else:
            self._claimed -= 1
            if broadcast.state is State.AWAITING_SESSION:
                commands.append(CancelTimer(channel_id, TimerKind.WATCHDOG))
        self._ended[channel_id] = now
        self._ended.move_to_end(channel_id)
        self._forget_ended(now)
        if grace:
            self._releasing[channel_id] = broadcast
            commands.append(ArmTimer(channel_id, now + RELEASE_GRACE, TimerKind.GRACE))
        return commands

    def _forget_ended(self, now: float) -> None:
        while self._ended and next(iter(self._ended.values())) <= now - LINGER:
            self._ended.popitem(last=False)


class SweepRule:
    """Which channels left in the broadcast application go back to the dialplan: those two
    sweeps in a row found there unknown (a call entering as the list is read is not yet
    known either, and a return still retrying is not yet over)."""

    def __init__(self) -> None:
        self._suspects: set[str] = set()

    def sweep(self, found: set[str]) -> set[str]:
        """`found`: the unknown channels parked now; returns those to send back."""
        send = found & self._suspects
        self._suspects = found - self._suspects
        return send
