"""Prometheus metrics: one registry per application, never prometheus-client's global one.

Per request the access middleware (`cliproxy.web.logs`) calls `observe_request` once, after the
handler, with the request's `AccessInfo` and the model it asked for: nothing on the forwarding path itself is timed or
counted. The request-path series are plain dicts of numbers keyed by their label values (asyncio
runs one callback at a time, so they need none of prometheus-client's per-update locks) and are
turned into prometheus-client metric families only when Prometheus scrapes: a request costs a
few dict updates and one `bisect` per histogram, about a microsecond.

Label cardinality is bounded by the configuration, whatever the clients send: `model` is a
configured client-facing name or `unknown`, `vendor` a configured vendor or `none` (no upstream
was tried), `reason` one of the fixed outcome reasons. Tracker transitions arrive through
`on_event` (a tracker *committed* listener) and what is disabled right now is read from the
tracker's committed view when Prometheus scrapes: /metrics never shows a disable or an enable that
is not yet in SQLite (it would be lost by kill -9), even while the database is locked.

    cliproxy_requests_total{model,vendor,status_class}      proxied requests by final status (2xx..5xx)
    cliproxy_upstream_attempts_total{model}                  upstream attempts, failovers included
    cliproxy_failovers_total{model}                          attempts after the first of a request
    cliproxy_notifications_total{result}                     webhook notifications: sent|failed|dropped|coalesced
    cliproxy_upstream_failures_total{model,reason}           countable failures by reason
    cliproxy_upstream_latency_seconds{model,vendor}          arrival to the end of the relayed answer
    cliproxy_upstream_ttfb_seconds{model,vendor}             arrival to the first byte relayed
    cliproxy_streams_in_flight                               SSE answers being relayed now
    cliproxy_pair_disables_total{vendor,model,reason}        disables (reason auto | manual | rate-limited)
    cliproxy_pair_enables_total{vendor,model,cause}          re-enables (expired | manual | startup-expired)
    cliproxy_config_reloads_total{result}                    reloaded | rejected
    cliproxy_pair_would_disable_total{vendor,model}          trips not enforced (enforce: false, max-disabled-fraction)
    cliproxy_pairs_disabled{reason}                          pairs disabled now (at scrape)
    cliproxy_pair_disabled{vendor,model,reason}              1 for each pair disabled now (at scrape)
    cliproxy_pair_recovering{vendor,model,state}             1 for each pair half-open, probing or slow-starting now
    cliproxy_store_pending_writes                            transitions not yet committed (at scrape)
    cliproxy_store_writes_healthy                            0 while writes to the database fail
    cliproxy_vendor_keys_available{vendor}                   keys of a vendor in its rotation (at scrape; key scope)
    cliproxy_vendor_key_out{vendor,key_index}                1 for each key out of its rotation now (at scrape)
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Container, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from cliproxy.core.events import Event
from cliproxy.services.journal import Journal
from cliproxy.services.tracker import FailureTracker
from cliproxy.web.access import AccessInfo

__all__ = ["CONTENT_TYPE", "Metrics", "NOT_FAILURES", "status_class"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Outcome reasons that do not count against a pair (see `cliproxy.core.events.Outcome`).
NOT_FAILURES = frozenset({"ok", "client_error", "client_disconnect", "client_write_timeout", "gateway_overloaded"})

UNKNOWN_MODEL = "unknown"
NO_VENDOR = "none"

# LLM answers take from milliseconds (embeddings) to minutes (long streams).
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TTFB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_STATUS_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")


def status_class(status: int) -> str:
    """`2xx` for 200..299 and so on; anything outside 100..599 becomes `0xx`."""
    return _STATUS_CLASSES[status // 100] if 100 <= status < 600 else "0xx"


class _Counter:
    """A counter family: label values -> count."""

    __slots__ = ("name", "doc", "labels", "values")

    def __init__(self, name: str, doc: str, labels: tuple[str, ...]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, key: tuple[str, ...], amount: float = 1) -> None:
        values = self.values
        values[key] = values.get(key, 0) + amount

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in sorted(self.values.items()):
            family.add_metric(key, value)
        return family


class _Histogram:
    """A histogram family: label values -> [count per bucket..., count above the last bound, sum]."""

    __slots__ = ("name", "doc", "labels", "bounds", "values")

    def __init__(self, name: str, doc: str, labels: tuple[str, ...], bounds: tuple[float, ...]) -> None:
        self.name, self.doc, self.labels, self.bounds = name, doc, labels, bounds
        self.values: dict[tuple[str, ...], list[float]] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        row = self.values.get(key)
        if row is None:
            row = self.values[key] = [0] * (len(self.bounds) + 2)
        row[bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value ("le")
        row[-1] += value

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for key, row in sorted(self.values.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip((*self.bounds, float("inf")), row[:-1]):
                cumulative += count
                buckets.append((_le(bound), cumulative))
            family.add_metric(key, buckets, row[-1])
        return family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class Metrics:
    """The metrics of one application, in their own `CollectorRegistry`."""

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry()
        self._requests = _Counter(
            "cliproxy_requests", "Proxied requests by final status class.", ("model", "vendor", "status_class")
        )
        self._attempts = _Counter("cliproxy_upstream_attempts", "Upstream attempts, failovers included.", ("model",))
        self._failovers = _Counter("cliproxy_failovers", "Upstream attempts after the first one of a request.", ("model",))
        self._failures = _Counter("cliproxy_upstream_failures", "Countable upstream failures by reason.", ("model", "reason"))
        self._latency = _Histogram(
            "cliproxy_upstream_latency_seconds",
            "Seconds from the request's arrival to the end of the relayed answer (requests that reached an upstream).",
            ("model", "vendor"),
            _LATENCY_BUCKETS,
        )
        self._ttfb = _Histogram(
            "cliproxy_upstream_ttfb_seconds",
            "Seconds from the request's arrival to the first byte relayed to the client.",
            ("model", "vendor"),
            _TTFB_BUCKETS,
        )
        self._disables = _Counter(
            "cliproxy_pair_disables", "Pairs disabled, by reason (auto | manual | rate-limited).", ("vendor", "model", "reason")
        )
        self._enables = _Counter(
            "cliproxy_pair_enables",
            "Pairs re-enabled, by cause (expired | manual | startup-expired).",
            ("vendor", "model", "cause"),
        )
        self._reloads = _Counter("cliproxy_config_reloads", "Configuration reloads by result.", ("result",))
        self._would_disables = _Counter(
            "cliproxy_pair_would_disable",
            "Trips not enforced: a dry run (enforce: false) or held back by max-disabled-fraction.",
            ("vendor", "model"),
        )
        self._notifications = _Counter(
            "cliproxy_notifications",
            "Webhook notifications by result (sent | failed | dropped | coalesced).",
            ("result",),
        )
        for result in ("sent", "failed", "dropped", "coalesced"):
            self._notifications.inc((result,), 0)  # every series from the start: alerts on rate() need them
        #: SSE answers being relayed now (`stream_started` / `stream_ended`).
        self.streams_in_flight = 0
        self._tracker: FailureTracker | None = None
        self._journal: Journal | None = None
        self.registry.register(self)
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    # ------------------------------------------------------------------ wiring

    def attach(self, tracker: FailureTracker, journal: Journal) -> None:
        """Count the journal's events once committed; report the tracker's committed state and the
        journal's backlog at scrape time."""
        self._tracker = tracker
        self._journal = journal
        journal.committed_listeners.append(self.on_event)

    def render(self) -> bytes:
        """The Prometheus text exposition of everything in this registry."""
        return generate_latest(self.registry)

    # ------------------------------------------------------------------ per request

    def observe_request(
        self, info: AccessInfo, model: str | None, status: int, elapsed: float, configured: Container[str]
    ) -> None:
        """Record one proxied request for the client's `model` (None: its body was refused unread).
        `configured` holds the client-facing model names of the config."""
        label = model if model is not None and model in configured else UNKNOWN_MODEL
        vendor = info.vendor or NO_VENDOR
        series = (label, vendor)
        self._requests.inc((label, vendor, status_class(status)))
        attempts = info.attempts
        if attempts:
            self._attempts.inc((label,), attempts)
            if attempts > 1:
                self._failovers.inc((label,), attempts - 1)
            self._latency.observe(series, elapsed)
        if info.ttfb is not None:
            self._ttfb.observe(series, info.ttfb)
        for reason in info.outcomes:
            if reason not in NOT_FAILURES:
                self._failures.inc((label, reason))

    def stream_started(self) -> None:
        self.streams_in_flight += 1

    def stream_ended(self) -> None:
        self.streams_in_flight -= 1

    def count_notification(self, result: str) -> None:
        """One webhook notification's fate (`cliproxy.web.notifier`)."""
        self._notifications.inc((result,))

    # ------------------------------------------------------------------ tracker listener

    def on_event(self, event: Event) -> None:
        """A journal committed listener: count disables, enables and reloads."""
        vendor, model = event.vendor or "", event.model or ""
        if event.kind == "disabled":
            self._disables.inc((vendor, model, "auto"))
        elif event.kind == "manual-disable":
            self._disables.inc((vendor, model, "manual"))
        elif event.kind == "rate-limited" and not (event.detail or {}).get("extended"):
            self._disables.inc((vendor, model, "rate-limited"))
        elif event.kind == "enabled":
            self._enables.inc((vendor, model, event.cause or ""))
        elif event.kind == "config-reloaded":
            self._reloads.inc(("reloaded",))
        elif event.kind == "config-rejected":
            self._reloads.inc(("rejected",))
        elif event.kind == "would-disable":
            self._would_disables.inc((vendor, model))

    # ------------------------------------------------------------------ the collector

    def describe(self) -> Iterator[Metric]:
        """The families this collector yields (for the registry's duplicate check), without samples."""
        for counter in self._counters():
            yield CounterMetricFamily(counter.name, counter.doc, labels=counter.labels)
        for histogram in (self._latency, self._ttfb):
            yield HistogramMetricFamily(histogram.name, histogram.doc, labels=histogram.labels)
        yield from self._state_families()

    def collect(self) -> Iterator[Metric]:
        for counter in self._counters():
            yield counter.family()
        yield self._latency.family()
        yield self._ttfb.family()
        streams, count, each, pending, healthy, keys_available, key_out, recovering = self._state_families()
        streams.add_metric([], self.streams_in_flight)
        tracker = self._tracker
        if tracker is not None:
            by_reason = {"auto": 0, "manual": 0, "rate-limited": 0}
            for record in tracker.committed_disabled_pairs():
                by_reason[record.reason] = by_reason.get(record.reason, 0) + 1
                each.add_metric([record.vendor, record.model, record.reason], 1)
            for reason, n in sorted(by_reason.items()):
                count.add_metric([reason], n)
            # Recovering, committed view: only pairs in such a state are series (none when all is well).
            for record, phase in tracker.committed_awaiting_recovery():
                recovering.add_metric([record.vendor, record.model, phase], 1)
            for vendor, model in tracker.slow_starting_pairs():
                recovering.add_metric([vendor, model, "slow-start"], 1)
            # key scope, committed view: O(keys) per scrape, never per request
            for vendor in tracker.key_vendors():
                available = 0
                for index in sorted(tracker.keys_of(vendor)):
                    if tracker.committed_key(vendor, index) is None:
                        available += 1
                    else:
                        key_out.add_metric([vendor, str(index)], 1)
                keys_available.add_metric([vendor], available)
        journal = self._journal
        if journal is not None:
            pending.add_metric([], journal.pending_writes)
            healthy.add_metric([], 1 if journal.persist_healthy else 0)
        yield from (streams, count, each, pending, healthy, keys_available, key_out, recovering)

    def _counters(self) -> tuple[_Counter, ...]:
        return (
            self._requests,
            self._attempts,
            self._failovers,
            self._failures,
            self._disables,
            self._enables,
            self._reloads,
            self._would_disables,
            self._notifications,
        )

    @staticmethod
    def _state_families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("cliproxy_streams_in_flight", "Streamed (SSE) answers being relayed now."),
            GaugeMetricFamily("cliproxy_pairs_disabled", "Pairs disabled now, by reason.", labels=["reason"]),
            GaugeMetricFamily("cliproxy_pair_disabled", "1 for each pair disabled now.", labels=["vendor", "model", "reason"]),
            GaugeMetricFamily("cliproxy_store_pending_writes", "State transitions not yet committed to the database."),
            GaugeMetricFamily("cliproxy_store_writes_healthy", "0 while writes to the database are failing."),
            GaugeMetricFamily(
                "cliproxy_vendor_keys_available", "Keys of a vendor in its rotation now (key scope).", labels=["vendor"]
            ),
            GaugeMetricFamily(
                "cliproxy_vendor_key_out", "1 for each key out of its vendor's rotation now.", labels=["vendor", "key_index"]
            ),
            GaugeMetricFamily(
                "cliproxy_pair_recovering",
                "1 for each pair half-open, probing (its disable over, the recovery verdict pending) or slow-starting now.",
                labels=["vendor", "model", "state"],
            ),
        )
