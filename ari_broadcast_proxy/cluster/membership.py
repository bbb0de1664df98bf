"""Which applications are connected to which replica: each replica announces its own (a
set in Redis with a time to live, and a message when it changes) and reads the others', so
that an offer's filter matches against every replica's applications."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from ..errors import ClusterUnavailable
from ..registry import AppRegistry
from .store import SharedStore

__all__ = ["ClusterAudience", "Membership"]

ANNOUNCE_TTL_MS = 3000  # a replica's applications count this long after its last announcement
ANNOUNCE_EVERY = 1.0


class ClusterAudience:
    """The applications connected to every live replica (this one's own always current)."""

    def __init__(self, registry: AppRegistry) -> None:
        self._registry = registry
        self._others: dict[str, set[str]] = {}

    def apps(self) -> list[str]:
        apps = set(self._registry.apps())
        for others in self._others.values():
            apps |= others
        return list(apps)

    def connected(self, app: str) -> bool:
        return self._registry.connected(app) or any(app in s for s in self._others.values())

    def update(self, replica: str, apps: set[str]) -> None:
        self._others[replica] = apps

    def replace(self, others: dict[str, set[str]]) -> None:
        self._others = others

    @property
    def replicas(self) -> int:
        """Other live replicas."""
        return len(self._others)


class Membership:
    def __init__(
        self,
        store: SharedStore,
        registry: AppRegistry,
        audience: ClusterAudience,
        every_round: Callable[[], Awaitable[None]],
    ) -> None:
        self._store = store
        self._registry = registry
        self._audience = audience
        self._every_round = every_round  # more upkeep on the same beat (the mirror's)
        self._changed = asyncio.Event()
        registry.on_change.append(self._changed.set)

    def heard(self, replica: str, apps: list[str]) -> None:
        """Another replica announced its applications."""
        if replica != self._store.replica:
            self._audience.update(replica, set(apps))

    async def run(self) -> None:
        changed = True
        while True:
            with contextlib.suppress(ClusterUnavailable):
                await self._store.announce(self._registry.apps(), ANNOUNCE_TTL_MS, changed)
                changed = False
                others = await self._store.replicas()
                others.pop(self._store.replica, None)
                self._audience.replace(others)
                await self._every_round()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ANNOUNCE_EVERY):
                    await self._changed.wait()
                    changed = True
            self._changed.clear()
