"""The broadcast/claim state machine: pure logic, no I/O, no clock of its own.

Inputs are method calls that carry the current time (`offer`, `claim`, `expire`,
`channel_left`, `handover_failed`, `session_started`, `session_ended`); outputs are
commands (frozen dataclasses) that the I/O shell carries out in order. One `Broadcast`
record per channel id, in one of three states:

    OFFERED --claim--> CLAIMED --session_ended--> ended
       |                  `--handover_failed--> ResumeDialplan(FAILED), ended
       `--expire--> ResumeDialplan(TIMEOUT), ended
       `--channel_left--> ended

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
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = [
    "ArmTimer",
    "Broadcast",
    "BroadcastCore",
    "CancelTimer",
    "ClaimOutcome",
    "Command",
    "HandOver",
    "IllegalTransition",
    "ResumeDialplan",
    "SendCallBroadcast",
    "SendCallClaimed",
    "State",
    "Verdict",
]

C = TypeVar("C")

LINGER = 10.0  # seconds an ended broadcast still answers its late claims itself


class IllegalTransition(RuntimeError):
    """An input that the current state cannot accept: a bug in the caller, never user input."""


class State(enum.Enum):
    OFFERED = "offered"
    CLAIMED = "claimed"


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
    session_started: bool = field(default=False)


# -- commands ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendCallBroadcast:
    """Send CallBroadcast to each app, concurrently; `apps` is already in shuffled order."""

    broadcast: Broadcast[Any]
    apps: tuple[str, ...]


@dataclass(frozen=True)
class ArmTimer:
    channel_id: str
    deadline: float


@dataclass(frozen=True)
class CancelTimer:
    channel_id: str


@dataclass(frozen=True)
class HandOver:
    """Move the channel from the broadcast application into the winner's Stasis()."""

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


Command = SendCallBroadcast | ArmTimer | CancelTimer | HandOver | SendCallClaimed | ResumeDialplan


class BroadcastCore(Generic[C]):
    """All broadcasts in flight, keyed by channel id."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._broadcasts: dict[str, Broadcast[C]] = {}
        # Ended broadcasts: channel id -> when it ended, oldest first.
        self._ended: OrderedDict[str, float] = OrderedDict()
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
    ) -> list[Command]:
        """A channel entered the broadcast application: offer it to `recipients`.

        A channel still CLAIMED from an earlier broadcast is replaced: re-entering the
        broadcast application proves the winner's session ended (failover in the dialplan).
        """
        previous = self._broadcasts.get(channel_id)
        if previous is not None and previous.state is State.OFFERED:
            raise IllegalTransition(f"channel {channel_id} is already on offer")
        if previous is not None:
            self._claimed -= 1
        self._ended.pop(channel_id, None)
        apps = sorted(set(recipients))
        self._rng.shuffle(apps)
        broadcast: Broadcast[C] = Broadcast(
            channel_id=channel_id,
            context=context,
            recipients=frozenset(apps),
            notify_claimed=notify_claimed,
            offered_at=now,
            deadline=now + max(timeout_ms, 0) / 1000,
        )
        self._broadcasts[channel_id] = broadcast
        # The timer first: should the fan-out fail, the call still times out (never strands).
        commands: list[Command] = [ArmTimer(channel_id, broadcast.deadline)]
        if apps:
            commands.append(SendCallBroadcast(broadcast, tuple(apps)))
        return commands

    def claim(self, channel_id: str, app: str, now: float) -> tuple[ClaimOutcome, list[Command]]:
        """First claim from an offered application wins; native's 404/409 otherwise."""
        broadcast = self._broadcasts.get(channel_id)
        if broadcast is None:
            return ClaimOutcome.NOT_FOUND, []
        if broadcast.state is State.CLAIMED:
            return ClaimOutcome.CONFLICT, []
        if app not in broadcast.recipients:
            return ClaimOutcome.NOT_OFFERED, []
        broadcast.state = State.CLAIMED
        self._claimed += 1
        broadcast.winner = app
        broadcast.claimed_at = now
        commands: list[Command] = [CancelTimer(channel_id), HandOver(broadcast, app)]
        if broadcast.notify_claimed:
            commands.append(SendCallClaimed(broadcast, app))
        return ClaimOutcome.WON, commands

    def expire(self, channel_id: str, now: float) -> list[Command]:
        """The timer fired: the verdict is taken now, once. Stale timers are ignored."""
        broadcast = self._broadcasts.get(channel_id)
        if broadcast is None or broadcast.state is not State.OFFERED:
            return []
        if now < broadcast.deadline - 0.05:
            raise IllegalTransition(
                f"timer for {channel_id} fired {broadcast.deadline - now:.3f}s early"
            )
        self._end(channel_id, now)
        return [ResumeDialplan(broadcast, Verdict.TIMEOUT)]

    def channel_left(self, channel_id: str, now: float) -> list[Command]:
        """The channel hung up or left the broadcast application on its own."""
        broadcast = self._broadcasts.get(channel_id)
        if broadcast is None:
            return []
        if broadcast.state is State.CLAIMED:
            # Leaving the broadcast application is what the hand-over itself does.
            return []
        self._end(channel_id, now)
        return [CancelTimer(channel_id)]

    def handover_failed(self, channel_id: str, channel_gone: bool, now: float) -> list[Command]:
        """The winner could not get the channel: FAILED, as native's stasis_app_exec failure."""
        broadcast = self._require(channel_id, State.CLAIMED)
        self._end(channel_id, now)
        if channel_gone:
            return []
        return [ResumeDialplan(broadcast, Verdict.FAILED)]

    def session_started(self, channel_id: str, app: str) -> bool:
        """The winner's StasisStart was seen; True the first time (the hand-over is done)."""
        broadcast = self._broadcasts.get(channel_id)
        if broadcast is None or broadcast.state is not State.CLAIMED or broadcast.winner != app:
            return False
        first = not broadcast.session_started
        broadcast.session_started = True
        return first

    def session_ended(self, channel_id: str, now: float) -> Broadcast[C] | None:
        """The winner's Stasis session ended (or the channel is gone): the broadcast ends."""
        broadcast = self._broadcasts.get(channel_id)
        if broadcast is None or broadcast.state is not State.CLAIMED:
            return None
        self._end(channel_id, now)
        return broadcast

    def drain(self) -> list[Command]:
        """Shutdown: every channel still on offer goes back to the dialplan (TIMEOUT)."""
        commands: list[Command] = []
        for channel_id, broadcast in list(self._broadcasts.items()):
            if broadcast.state is State.OFFERED:
                del self._broadcasts[channel_id]
                commands += [CancelTimer(channel_id), ResumeDialplan(broadcast, Verdict.TIMEOUT)]
        return commands

    def _end(self, channel_id: str, now: float) -> None:
        if self._broadcasts.pop(channel_id).state is State.CLAIMED:
            self._claimed -= 1
        self._ended[channel_id] = now
        self._ended.move_to_end(channel_id)
        self._forget_ended(now)

    def _forget_ended(self, now: float) -> None:
        while self._ended and next(iter(self._ended.values())) <= now - LINGER:
            self._ended.popitem(last=False)

    def _require(self, channel_id: str, state: State) -> Broadcast[C]:
        broadcast = self._broadcasts.get(channel_id)
        if broadcast is None or broadcast.state is not state:
            found = "nothing" if broadcast is None else broadcast.state.value
            raise IllegalTransition(f"channel {channel_id}: expected {state.value}, found {found}")
        return broadcast
