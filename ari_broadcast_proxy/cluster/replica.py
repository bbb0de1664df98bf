"""One replica among several in front of one Asterisk, sharing its broadcasts through Redis.

Every replica keeps the same core (`BroadcastCore`) as a mirror of every broadcast, fed by
Redis's messages, so that it can present channels as native, refuse what native refuses,
and offer each call to its own applications. One replica, the leader (it holds the lease in
Redis), also holds the broadcast application's socket and alone acts on Asterisk: hand-overs,
returns to the dialplan. Redis takes every decision that two replicas could take at once:

- an offer is recorded (fenced by the lease) before any application sees it;
- a claim, sent to any replica, is one script: the first one wins (204), the others get
  native's 404/409/422; the claim is announced to every replica, and the leader hands the
  channel over;
- a deadline's verdict is one fenced script on the leader: TIMEOUT, unless a claim came first.

Nothing acts on Asterisk without a lease held on this replica's own clock (`Lease`): when
Redis cannot be reached, no verdict is taken anywhere (claims get 503) and calls on offer
wait in the broadcast application until a leader can reach Redis again; then those whose
deadline passed go back with TIMEOUT at once, and those claimed reach their winner.

A new leader (the old one died, froze, was cut off, or handed over on SIGTERM) reads the
records in Redis, re-offers calls it finds parked that nobody recorded, locates every claimed
call whose hand-over the old leader may or may not have written, and carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from ..broadcast.clock import Clock
from ..broadcast.controller import BroadcastController
from ..broadcast.core import ArmTimer, CancelTimer, ClaimOutcome, Outcome, State
from ..broadcast.executor import Offer, log_channel
from ..errors import ClusterUnavailable
from ..metrics import Metrics
from ..registry import AppRegistry
from .codec import offer_from_wire, offer_to_wire
from .leadership import Leadership
from .membership import ClusterAudience, Membership
from .store import Record, SharedStore, now_ms

__all__ = ["Replica"]

log = logging.getLogger(__name__)

RETRY_EVERY = 0.25  # a verdict or an offer Redis could not take is tried again
RECONCILE_AFTER = 3.0  # a claim without word of its session this long is checked in Redis
FOLLOWER_SLACK = 3.0  # a mirror of an offer ends on its own this long after its deadline
RECONNECT_GRACE = 2.0  # a winner whose replica stopped has this long to reconnect elsewhere
STOP_WAIT = 1.0  # SIGTERM: how long its own loops and Redis connections get to close

_OUTCOMES = {204: ClaimOutcome.WON, 404: ClaimOutcome.NOT_FOUND, 409: ClaimOutcome.CONFLICT}


class Replica:
    def __init__(
        self,
        controller: BroadcastController,
        store: SharedStore,
        registry: AppRegistry,
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self._controller = controller
        self._core = controller.core
        self._executor = controller.executor
        self._store = store
        self._registry = registry
        self._metrics = metrics
        self._clock = clock
        self.name = store.replica
        self.leadership = Leadership(
            store,
            controller,
            metrics,
            clock,
            renewed_late=lambda: self._executor.execute(self._core.taken_over()),
            lease_vanished=self._reseed,
        )
        self.lease = self.leadership.lease
        self.audience = ClusterAudience(registry)
        self.membership = Membership(store, registry, self.audience, self._reconcile)
        self._pending: dict[str, asyncio.Task[None]] = {}  # offers being recorded
        self._tasks: list[asyncio.Task[None]] = []
        executor = controller.executor
        executor.audience = self.audience
        executor.acting = self.leadership.acting
        executor.on_deadline = self._on_deadline
        executor.on_end = self._on_end
        executor.reconnect_grace = RECONNECT_GRACE
        controller.recovery.adopt = self.adopt
        controller.recovery.busy = lambda: set(self._pending)
        controller.attach(self)

    # -- state --------------------------------------------------------------------------------

    def acting(self) -> bool:
        return self.leadership.acting()

    @property
    def leading(self) -> bool:
        return self.lease.leading

    @property
    def ready(self) -> bool:
        """Redis answers and a leader holds the broadcast application (this one, or another
        this replica saw holding the lease)."""
        if not self._store.up:
            return False
        if self.lease.leading:
            return self._controller.connected
        return self.leadership.leader_seen

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        for name, loop in (
            ("lease", self.leadership.run),
            ("messages", self._message_loop),
            ("membership", self.membership.run),
        ):
            self._tasks.append(asyncio.create_task(loop(), name=f"replica-{name}"))

    async def stop(self) -> bool:
        """SIGTERM. Returns True when another replica leads now (nothing to send back)."""
        if self._tasks:  # the lease loop first: it must not take the lease back meanwhile
            self.leadership.stop()  # it ends even if the cancellation is lost
            self._tasks[0].cancel()
            await asyncio.wait(self._tasks[:1])
        handed = self.lease.leading and bool(self.audience.replicas)
        if handed:
            handed = await self.leadership.hand_off()
        tasks = [*self._tasks, *self._pending.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_WAIT)
        self._tasks.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_WAIT):
                await self._store.aclose()
        return handed

    # -- offers -------------------------------------------------------------------------------

    def record_offer(
        self, channel_id: str, offer: Offer, recipients: list[str], started: float
    ) -> None:
        """Leader: record the offer in Redis, then make it (a channel already known or
        being recorded is not offered twice)."""
        if channel_id in self._pending or self._core.get(channel_id) is not None:
            return
        task = asyncio.create_task(
            self._record(channel_id, offer, recipients, started), name=f"offer-{channel_id}"
        )
        self._pending[channel_id] = task
        task.add_done_callback(lambda _: self._pending.pop(channel_id, None))

    async def _record(
        self, channel_id: str, offer: Offer, recipients: list[str], started: float
    ) -> None:
        deadline_ms = now_ms() + max(offer.options.timeout_ms, 0)
        wire = offer_to_wire(offer)
        # Tried until it is recorded, or this replica no longer leads (then the next leader
        # finds the call parked, unrecorded, and offers it). Not recorded meanwhile: a
        # renewal is late, Redis cannot be reached, or the lease is not in Redis as this
        # replica holds it (Redis restarted empty: the lease loop records it again).
        while self.lease.leading:
            try:
                if self.acting() and await self._store.offer(
                    self.lease.token, channel_id, wire, recipients, deadline_ms
                ):
                    self._controller.open_offer(
                        channel_id, offer, recipients, started, self._local(deadline_ms)
                    )
                    return
            except ClusterUnavailable as exc:
                log_channel(logging.WARNING, channel_id, "cannot offer it yet: %s", exc.message)
            await self._clock.sleep(RETRY_EVERY)

    def after_offer(self, channel_id: str, handle: Callable[..., None], *args: Any) -> None:
        pending = self._pending.get(channel_id)
        if pending is None:
            handle(*args)
        else:
            pending.add_done_callback(lambda _: handle(*args))

    def _local(self, deadline_ms: int) -> float:
        """An epoch deadline on this replica's monotonic clock."""
        return self._clock.now() + (deadline_ms - now_ms()) / 1000

    def _mirror(
        self,
        channel_id: str,
        wire: dict[str, Any],
        apps: list[str],
        deadline_ms: int,
        fan_out: bool = True,
    ) -> None:
        """Another replica's offer, made to this replica's applications."""
        if self._core.get(channel_id) is not None:
            return
        offer = offer_from_wire(wire)
        now = self._clock.now()
        self._controller.presenter.remember(channel_id, offer.invocation)
        commands = self._core.offer(
            channel_id,
            offer,
            apps,
            offer.options.timeout_ms,
            offer.options.notify_claimed,
            now,
            self._local(deadline_ms),
        )
        if not fan_out:  # read back at a takeover: the applications saw it already
            commands = [c for c in commands if isinstance(c, ArmTimer)]
        self._executor.execute(commands)

    def adopt(self, channel_id: str) -> None:
        """A call parked in the broadcast application that no record holds (its leader
        died before recording it): offer it now, as if it had just arrived."""
        self._executor.spawn(self._adopt(channel_id), f"adopt-{channel_id}")

    async def _adopt(self, channel_id: str) -> None:
        event = await self._controller.gateway.stasis_start_of(channel_id)
        if event is not None and self._core.get(channel_id) is None:
            log_channel(logging.WARNING, channel_id, "found parked and unrecorded: offering it")
            self._controller.on_event(event)

    # -- claims and verdicts ------------------------------------------------------------------

    async def claim(self, channel_id: str, app: str) -> ClaimOutcome | None:
        result = await self._store.claim(channel_id, app)
        if result == 0:
            if self._core.get(channel_id) is not None:
                # On offer here, unknown to Redis: it restarted empty and the leader has not
                # recorded its calls again yet. Asked again in a moment, Redis will know.
                raise ClusterUnavailable("the call's record is being restored; claim again")
            return None
        return _OUTCOMES.get(result, ClaimOutcome.NOT_OFFERED)

    def _on_deadline(self, channel_id: str) -> None:
        broadcast = self._core.get(channel_id)
        if broadcast is None or broadcast.state is not State.OFFERED:
            return
        now = self._clock.now()
        if self.acting():
            self._executor.spawn(self._settle(channel_id), f"settle-{channel_id}")
        elif now >= broadcast.deadline + FOLLOWER_SLACK:
            self._executor.execute(self._core.dismiss(channel_id, now))  # the word was lost
        else:
            self._retry_deadline(channel_id)

    def _retry_deadline(self, channel_id: str) -> None:
        self._executor.execute([ArmTimer(channel_id, self._clock.now() + RETRY_EVERY)])

    async def _settle(self, channel_id: str) -> None:
        """The leader's deadline: Redis says TIMEOUT, or who claimed it first."""
        try:
            verdict, winner = await self._store.expire(self.lease.token, channel_id)
        except ClusterUnavailable as exc:
            log_channel(logging.WARNING, channel_id, "deadline passed, no verdict: %s", exc.message)
            verdict, winner = "retry", None
        now = self._clock.now()
        if verdict == "expired":
            self._executor.execute(self._core.expire(channel_id, now), decided=True)
        elif verdict == "claimed" and winner is not None:
            self._executor.execute(self._core.claim(channel_id, winner, now)[1], decided=True)
        elif verdict == "ended":
            self._executor.execute(self._core.dismiss(channel_id, now))
        else:  # Redis unreachable, or this replica no longer leads: the next word decides
            if verdict == "fenced":
                log_channel(logging.WARNING, channel_id, "deadline passed; lease not ours")
            self._retry_deadline(channel_id)

    def _on_end(self, channel_id: str, outcome: Outcome) -> None:
        self._spawn_store(self._store.end(channel_id, outcome.value), f"end-{channel_id}")

    def session_started(self, channel_id: str, app: str) -> None:
        self._spawn_store(self._store.session_started(channel_id, app), f"started-{channel_id}")

    def released(self, channel_id: str) -> None:
        self._spawn_store(self._store.end(channel_id, "released"), f"released-{channel_id}")

    def _spawn_store(self, operation: Coroutine[Any, Any, None], name: str) -> None:
        self._executor.spawn(_logged(operation, name), name)

    # -- messages from the other replicas -----------------------------------------------------

    async def _message_loop(self) -> None:
        while True:
            try:
                async for message in self._store.messages():
                    self._on_message(message)
            except ClusterUnavailable:
                pass  # logged by the store; subscribe again
            await self._clock.sleep(RETRY_EVERY)

    def _on_message(self, message: dict[str, Any]) -> None:
        kind, channel_id = message.get("k"), str(message.get("c", ""))
        mine = message.get("r") == self.name
        try:
            if kind == "offer" and not mine:
                self._mirror(channel_id, message["o"], message["to"], int(message["d"]))
            elif kind in ("claimed", "started") or (kind == "ended" and not mine):
                # The leader publishes an offer before it opens its own (the script's answer
                # comes after): word of the call can arrive before the call is open here.
                self.after_offer(channel_id, self._follow_word, kind, channel_id, message)
            elif kind == "apps":
                self.membership.heard(str(message["r"]), message["apps"])
            elif kind == "resign" and not mine:
                self.leadership.wake()
        except Exception:
            log.exception("replica message %r could not be handled", kind)

    def _follow_word(self, kind: str, channel_id: str, message: dict[str, Any]) -> None:
        """What another replica (or Redis, for a claim) said of a call."""
        now = self._clock.now()
        try:
            if kind == "claimed":
                commands = self._core.claim(channel_id, message["app"], now)[1]
            elif kind == "started":
                commands = self._core.session_started(channel_id, message["app"], now, mirror=True)
            else:
                # Ended. Not its own word: that can arrive before the answer of the script
                # that sent it, and the replica that ended a broadcast has ended its mirror.
                commands = self._core.dismiss(channel_id, now)
            self._executor.execute(commands)
        except Exception:
            log.exception("channel %s: word %r could not be followed", channel_id, kind)

    # -- upkeep -------------------------------------------------------------------------------

    async def _reconcile(self) -> None:
        """Claims this replica's mirror has held for a while without word of the winner's
        session or of the end (a message lost while its connection to Redis was down): ask
        Redis, and follow it."""
        now = self._clock.now()
        stale = [
            b.channel_id
            for b in self._core.claimed()
            if b.state is not State.IN_SESSION
            and b.claimed_at is not None
            and now - b.claimed_at > RECONCILE_AFTER
        ]
        if not stale:
            return
        for channel_id, (state, winner) in (await self._store.states(stale)).items():
            if state == "session" and winner is not None:
                commands = self._core.session_started(channel_id, winner, now, mirror=True)
            elif state in (None, "ended") and not self.acting():
                commands = self._core.dismiss(channel_id, now)  # the leader's own ends itself
            else:
                continue
            self._executor.execute(commands)

    # -- taking over --------------------------------------------------------------------------

    async def taken_over(self) -> None:
        """The broadcast application's socket is this replica's now: carry on every call
        Redis records, record every call this replica knows that Redis lost (restarted), and
        locate claimed calls whose hand-over the old leader may or may not have written."""
        try:
            records = await self._store.records()
        except ClusterUnavailable as exc:
            log.error("taking over without the records: %s", exc.message)
            records = []
        for record in records:
            self._restore(record)
        await self._reseed({r.channel_id for r in records})
        self._executor.execute(self._core.taken_over())
        if records:
            log.info("took over %d call(s) from the records", len(records))

    def _restore(self, record: Record) -> None:
        now = self._clock.now()
        self._mirror(
            record.channel_id,
            record.offer,
            sorted(record.recipients),
            record.deadline_ms,
            fan_out=False,
        )
        broadcast = self._core.get(record.channel_id)
        if broadcast is None or record.winner is None:
            return
        if broadcast.state is State.OFFERED:
            commands = self._core.claim(record.channel_id, record.winner, now)[1]
            self._executor.execute([c for c in commands if isinstance(c, CancelTimer)])
        if record.state == "session":
            commands = self._core.session_started(record.channel_id, record.winner, now)
            self._executor.execute(commands)

    async def _reseed(self, known: set[str] | None = None) -> None:
        """Record again what Redis lost: offers on offer, and claims (so that no second
        claim can win them)."""
        if known is None:
            with contextlib.suppress(ClusterUnavailable):
                known = {r.channel_id for r in await self._store.records()}
        for channel_id in self._core.channel_ids():
            broadcast = self._core.get(channel_id)
            if broadcast is None or channel_id in (known or set()):
                continue
            if broadcast.state is State.IN_SESSION:
                continue
            deadline_ms = now_ms() + int((broadcast.deadline - self._clock.now()) * 1000)
            with contextlib.suppress(ClusterUnavailable):
                await self._store.offer(
                    self.lease.token,
                    channel_id,
                    offer_to_wire(broadcast.context),
                    broadcast.recipients,
                    deadline_ms,
                    broadcast.winner,
                )


async def _logged(operation: Coroutine[Any, Any, None], name: str) -> None:
    try:
        await operation
    except ClusterUnavailable as exc:
        log.warning("%s: %s", name, exc.message)
