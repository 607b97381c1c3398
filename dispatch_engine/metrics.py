"""Prometheus metrics of one process (each process exposes its own /metrics).

A registry per application, so several apps in one process (tests) never collide.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.emails = Counter(
            "dispatch_emails",
            "Emails finished by this process, by outcome.",
            ["status"],
            registry=r,
        )
        self.retries = Counter(
            "dispatch_retries", "Transient failures rescheduled with backoff.", registry=r
        )
        self.due_lag = Histogram(
            "dispatch_due_lag_seconds",
            "From an email's due time to the start of its send.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.transport_latency = Histogram(
            "dispatch_transport_seconds",
            "Time a transport took to accept one email.",
            ["transport"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pacing_parks = Counter(
            "dispatch_pacing_parks",
            "Senders parked by pacing or by their provider.",
            ["reason"],
            registry=r,
        )
        self.lease_reaps = Counter(
            "dispatch_lease_reaps",
            "Expired leases returned to the queue by the sweeper.",
            registry=r,
        )
        self.requeued = Counter(
            "dispatch_recovery_requeued", "Dispatches re-queued from PostgreSQL.", registry=r
        )
        self.in_flight = Gauge(
            "dispatch_sends_in_flight", "Emails this process is sending now.", registry=r
        )
        self.queue_depth = Gauge(
            "dispatch_queue_depth",
            "Queued emails per sender (the 50 deepest), at scrape time.",
            ["sender"],
            registry=r,
        )

    def response(self) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
