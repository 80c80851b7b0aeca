"""Prometheus metrics of one ServiceApp, in its own registry (several apps can live in one process).

Services add their own series with ``counter`` / ``gauge`` / ``histogram`` (also on ``ServiceApp``); they
are served by the app's ``/metrics`` next to the kit's. Asking again for the same name returns the same
metric (handy for module-level helpers), a different kind or label set under that name is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

_M = TypeVar("_M", bound=MetricWrapperBase)


class KitMetrics:
    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._own: dict[str, MetricWrapperBase] = {}  # service-registered metrics by name
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

    def _register(self, kind: type[_M], name: str, documentation: str, labels: Sequence[str],
                  **kwargs: object) -> _M:
        # prometheus_client drops a counter's "_total" suffix from its name; key on what it keeps.
        key = name.removesuffix("_total") if kind is Counter else name
        existing = self._own.get(key)
        if existing is not None:
            if type(existing) is not kind or tuple(existing._labelnames) != tuple(labels):
                raise ValueError(
                    f"metric {name!r} already registered as {type(existing).__name__}{list(existing._labelnames)}"
                )
            return existing  # type: ignore[return-value]
        metric = kind(name, documentation, list(labels), registry=self.registry, **kwargs)  # type: ignore[arg-type]
        self._own[key] = metric
        return metric

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        """A service counter, exported as ``<name>_total`` (``name`` may already end in ``_total``)."""
        return self._register(Counter, name, documentation, labels)

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        return self._register(Gauge, name, documentation, labels)

    def histogram(
        self, name: str, documentation: str, labels: Sequence[str] = (),
        buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS,
    ) -> Histogram:
        return self._register(Histogram, name, documentation, labels, buckets=tuple(buckets))

    def render(self) -> bytes:
        return generate_latest(self.registry)
