"""Prometheus metrics of one ServiceApp, in its own registry (several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class KitMetrics:
    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.consumer_lag = Gauge(
            "loyalty_consumer_lag", "Records behind the partition end", ["topic", "partition"], registry=r
        )
        self.batch_seconds = Histogram(
            "loyalty_batch_seconds", "Time to handle one consumed batch", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.batch_size = Histogram(
            "loyalty_batch_size", "Records per consumed batch", registry=r,
            buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000),
        )
        self.events_handled = Counter(
            "loyalty_events_handled", "Events applied by a handler", ["event_type"], registry=r
        )
        self.duplicates = Counter("loyalty_events_duplicate", "Events skipped by the inbox", registry=r)
        self.dead_letters = Counter(
            "loyalty_dead_letters", "Records sent to the dead-letter topic", ["reason"], registry=r
        )
        self.outbox_backlog = Gauge("loyalty_outbox_backlog", "Outbox rows not yet published", registry=r)
        self.outbox_published = Counter("loyalty_outbox_published", "Outbox rows published", registry=r)
        self.timers_due = Gauge("loyalty_timers_due", "Timers due and not yet fired", registry=r)
        self.timers_fired = Counter("loyalty_timers_fired", "Timers fired", ["kind"], registry=r)
        self.retries = Counter("loyalty_transient_retries", "Retries after transient errors", ["where"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
