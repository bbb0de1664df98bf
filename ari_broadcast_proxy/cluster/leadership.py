"""Which replica leads: the lease loop (take the lease, renew it, step down when it cannot be
renewed in time or another holds it) and the hand-over on SIGTERM. The leader alone holds
the broadcast application's socket (`controller.lead()`/`follow()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from ..broadcast.clock import Clock
from ..broadcast.controller import BroadcastController
from ..errors import ClusterUnavailable
from ..metrics import Metrics
from .lease import RENEW_EVERY, Lease
from .store import SharedStore

__all__ = ["POLL_EVERY", "Leadership"]

log = logging.getLogger(__name__)

POLL_EVERY = 0.25  # how often a follower tries for the lease
HANDOFF_WAIT = 2.0  # SIGTERM: how long the old leader waits for the new one's registration


class Leadership:
    def __init__(
        self,
        store: SharedStore,
        controller: BroadcastController,
        metrics: Metrics,
        clock: Clock,
        *,
        renewed_late: Callable[[], None],
        lease_vanished: Callable[[], Awaitable[None]],
    ) -> None:
        self._store = store
        self._controller = controller
        self._metrics = metrics
        self._clock = clock
        self._renewed_late = renewed_late  # hand-overs skipped meanwhile are due now
        self._lease_vanished = lease_vanished  # Redis restarted empty: record the calls again
        self.lease = Lease(store.replica)
        self.leader_seen = False  # some replica held the lease at the last look
        self._wake = asyncio.Event()
        self._stopped = False

    def acting(self) -> bool:
        """Whether this replica may act on Asterisk now."""
        return self.lease.holds(self._clock.now())

    def wake(self) -> None:
        """The leader resigned: try for the lease now."""
        self._wake.set()

    def stop(self) -> None:
        """SIGTERM: `run` ends after the step under way, if any. Cancelling it alone is not
        enough: Python 3.11's `asyncio.wait_for` (redis-py sends every command through it)
        swallows a cancellation that arrives as the command is sent, and the loop would go
        on renewing the lease of a replica that is shutting down."""
        self._stopped = True
        self._wake.set()

    async def run(self) -> None:
        while not self._stopped:
            sent = self._clock.now()
            try:
                await self._step(sent)
            except ClusterUnavailable:
                self.leader_seen = False
                if self.lease.lapsed(self._clock.now()):
                    log.error("the lease could not be renewed in time: stepping down")
                    await self._follow()
            if self._stopped:
                return
            pause = RENEW_EVERY if self.lease.leading else POLL_EVERY
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()

    async def _step(self, sent: float) -> None:
        store, lease = self._store, self.lease
        if lease.leading:
            lapsed = lease.lapsed(sent)
            if await store.renew(lease.token, lease.ttl_ms):
                lease.granted(sent)
                if lapsed:
                    log.warning("the lease was renewed late; locating claimed calls")
                    self._renewed_late()
                return
            # Gone from Redis (restarted empty?) or taken: try again, before stepping down.
            if await store.acquire(lease.token, lease.ttl_ms):
                lease.granted(sent)
                log.warning("the lease had vanished from Redis; re-recording this replica's calls")
                await self._lease_vanished()
                return
            log.warning("another replica holds the lease now: following")
            await self._follow()
            return
        self.leader_seen = True  # taken now, or held by another
        if await store.acquire(lease.new_token(), lease.ttl_ms):
            lease.granted(sent)
            self._metrics.leader.set(1)
            log.info("leading: holding the broadcast application (lease %s)", lease.token)
            self._controller.lead()

    async def _follow(self) -> None:
        self.step_down()
        await self._controller.follow()

    def step_down(self) -> None:
        if self.lease.leading:
            self._metrics.leader.set(0)
        self.lease.lost()

    async def hand_off(self) -> bool:
        """SIGTERM on the leader, with other replicas alive (the lease loop stopped): give
        the lease up and wait until the new leader's socket replaced this one's (no gap for
        arriving calls). True: the calls on offer are the new leader's. Nobody came (the
        others are stopping too): take the lease back if it is still free, and False, so
        that they go back to the dialplan under it, as one proxy does."""
        try:
            released = await self._store.release(self.lease.token)
        except ClusterUnavailable:
            released = False
        if not released:
            return False
        log.info("handing the broadcast application over to another replica")
        deadline = self._clock.now() + HANDOFF_WAIT
        controller = self._controller
        while controller.connected and self._clock.now() < deadline:
            await self._clock.sleep(0.02)
        if controller.connected:
            sent = self._clock.now()
            try:
                taken_back = await self._store.acquire(self.lease.new_token(), self.lease.ttl_ms)
            except ClusterUnavailable:
                taken_back = False
            if taken_back:
                self.lease.granted(sent)
                log.warning("no replica took the broadcast application over: returning its calls")
                return False
        await self._follow()
        return True
