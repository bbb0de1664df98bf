"""Leadership as this replica sees it, on its own monotonic clock (no I/O).

Redis holds the lease (`SET NX PX`); this says how long the replica may still act on it. A
renewal counts from when it was *sent*, less a margin for clock drift, so the replica stops
acting before Redis can let the key expire and hand it to another: a replica frozen past
its lease (SIGSTOP, a stalled VM) finds on waking that it may no longer act, before any
message it sends could reach Asterisk.
"""

from __future__ import annotations

import uuid

__all__ = ["LEASE_TTL", "Lease"]

LEASE_TTL = 2.0  # seconds a lease lives in Redis without renewal
RENEW_EVERY = 0.5  # seconds between renewals by the leader
DRIFT_MARGIN = 0.25  # seconds the replica stops acting before its lease could expire


class Lease:
    def __init__(self, replica: str, ttl: float = LEASE_TTL) -> None:
        self.replica = replica
        self.ttl = ttl
        self.token = ""
        self._until = float("-inf")
        self.leading = False

    @property
    def ttl_ms(self) -> int:
        return int(self.ttl * 1000)

    def new_token(self) -> str:
        """A token no other acquisition has used: what every fenced script compares."""
        self.token = f"{self.replica}:{uuid.uuid4().hex[:12]}"
        return self.token

    def granted(self, sent_at: float) -> None:
        """Redis granted or renewed the lease asked for at `sent_at`."""
        self.leading = True
        self._until = sent_at + self.ttl - DRIFT_MARGIN

    def lost(self) -> None:
        self.leading = False
        self._until = float("-inf")

    def holds(self, now: float) -> bool:
        """Whether this replica may act on Asterisk now."""
        return self.leading and now < self._until

    def lapsed(self, now: float) -> bool:
        """Leading, but no renewal in time: step down."""
        return self.leading and now >= self._until
