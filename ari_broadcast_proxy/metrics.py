"""Prometheus metrics, in a registry of their own (one per proxy, so tests can read them)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.broadcasts = Counter(
            "ari_proxy_broadcasts", "Calls that entered the broadcast application", registry=r
        )
        self.outcomes = Counter(
            "ari_proxy_broadcast_outcomes",
            "How broadcasts ended: claimed (the winner got StasisStart), timeout, failed "
            "(hand-over), hangup, rejected",
            ["outcome"],
            registry=r,
        )
        self.claims = Counter(
            "ari_proxy_claims",
            "Claims answered by the proxy, by HTTP status (forwarded: sent to Asterisk)",
            ["status"],
            registry=r,
        )
        self.claims_at_once = Counter(
            "ari_proxy_claims_read_at_once",
            "Of those, claims the HTTP protocol answered as it read them (no ASGI request)",
            registry=r,
        )
        self.time_to_claim = Histogram(
            "ari_proxy_time_to_claim_seconds",
            "From CallBroadcast sent to the winning claim",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.handover = Histogram(
            "ari_proxy_handover_seconds",
            "From the winning claim to Asterisk accepting the hand-over (move or continue)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.fanout = Histogram(
            "ari_proxy_broadcast_fanout_seconds",
            "From the broadcast application's StasisStart to every CallBroadcast written",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.slow_consumers = Counter(
            "ari_proxy_slow_consumer_closes",
            "Client sockets closed because they stopped reading",
            registry=r,
        )
        self.filter_timeouts = Counter(
            "ari_proxy_filter_timeouts",
            "Application names an app_filter could not be matched against in time (only "
            "where the process has no glibc and the regex port matches)",
            registry=r,
        )
        self.app_replaced = Counter(
            "ari_proxy_broadcast_app_replaced",
            "Times another client registered the broadcast application on Asterisk",
            registry=r,
        )
        self.leader = Gauge(
            "ari_proxy_broadcast_leader",
            "1 while this replica leads (holds the broadcast application); a proxy without "
            "--cluster-url always leads",
            registry=r,
        )
        self.upstream_errors = Counter(
            "ari_proxy_upstream_errors",
            "Upstream calls that failed: unreachable (502) or timeout (504)",
            ["kind"],
            registry=r,
        )

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge read at scrape time (connected applications, upstream state...)."""
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def gauges(
        self, name: str, documentation: str, label: str, reads: dict[str, Callable[[], float]]
    ) -> None:
        """One gauge per `label` value (one per Asterisk server...), read at scrape time."""
        gauge = Gauge(name, documentation, [label], registry=self.registry)
        for value, read in reads.items():
            gauge.labels(value).set_function(read)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
