"""Channels the proxy lost track of: recovery after (re)connecting, and the periodic sweep.

After the broadcast application registers on a server, channels already parked in it there
that the core does not know (the proxy restarted, or its socket dropped) go back to the
dialplan (TIMEOUT). Each server's socket recovers and sweeps its own server (`parked` lists
that server's broadcast application): a call on another server whose StasisStart is on its
way is none of its business.
Every SWEEP_INTERVAL while connected: claimed broadcasts whose channel no longer exists are
fed to the core as gone (the winner's socket was gone, so its StasisEnd was never seen), and
channels left parked are sent back as the core's SweepRule says (a return that failed every
retry).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

from ..errors import ProxyError
from ..metrics import Metrics
from .clock import Clock
from .core import SWEEP_INTERVAL, BroadcastCore, SweepRule, Verdict
from .executor import Executor, Offer, log_channel
from .handover import ChannelGateway

__all__ = ["Parked", "Recovery"]

Parked = Callable[[], Awaitable[list[str]]]  # the channels in one server's broadcast app

log = logging.getLogger(__name__)


class Recovery:
    def __init__(
        self,
        core: BroadcastCore[Offer],
        executor: Executor,
        gateway: ChannelGateway,
        metrics: Metrics,
        clock: Clock,
        ready: Callable[[], bool],
    ) -> None:
        self._core = core
        self._executor = executor
        self._gateway = gateway
        self._metrics = metrics
        self._clock = clock
        self._ready = ready  # False once another client took the broadcast application
        # Replicas: orphans are offered again (`adopt`), and calls whose offer is being
        # recorded in Redis are not orphans (`busy`).
        self.adopt: Callable[[str], None] | None = None
        self.busy: Callable[[], set[str]] = set

    async def run(self, parked: Parked) -> None:
        """While the broadcast application is connected to a server: recover, then sweep."""
        await self.recover(parked)
        rule = SweepRule()
        while True:
            await self._clock.sleep(SWEEP_INTERVAL)
            await self.sweep(rule, parked)

    async def recover(self, parked: Parked) -> None:
        try:
            self._return_orphans(await self._orphans(parked))
        except ProxyError as exc:
            log.warning(
                "could not list channels left in the broadcast application: %s", exc.message
            )

    async def sweep(self, rule: SweepRule, parked: Parked) -> None:
        claimed = self._core.claimed()
        with contextlib.suppress(ProxyError):
            # One listing for all of them (the claimed ones were taken before it).
            live = await self._gateway.live_channels() if claimed else None
            if live is not None:
                for broadcast in claimed:
                    if broadcast.channel_id not in live:
                        now = self._clock.now()
                        self._executor.execute(self._core.channel_gone(broadcast, now))
        if not self._ready():  # the broadcast application was taken over: not ours
            return
        with contextlib.suppress(ProxyError):
            found = await self._orphans(parked)
            if self._ready():
                self._return_orphans(rule.sweep(found))

    async def _orphans(self, parked: Parked) -> set[str]:
        """Channels in the broadcast application that the proxy neither offers nor is
        sending back (ProxyError when Asterisk cannot say)."""
        return self._core.orphans(await parked(), self._executor.returning | self.busy())

    def _return_orphans(self, channel_ids: set[str]) -> None:
        for channel_id in channel_ids:
            if self.adopt is not None:
                self.adopt(channel_id)
                continue
            log_channel(
                logging.WARNING,
                channel_id,
                "was left in the broadcast application; sending it back (TIMEOUT)",
            )
            self._metrics.outcomes.labels("timeout").inc()
            self._executor.send_back_unknown(channel_id, Verdict.TIMEOUT)
