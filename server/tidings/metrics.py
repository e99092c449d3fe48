"""Counters, gauges and histograms, exposed through ``prometheus_client`` for ``GET /metrics``.

Hot paths stay cheap: a counter is a plain ``Counter`` entry (one dict update
per ``inc``), a histogram observation is one ``bisect`` into a list of ints,
and gauges and ``counter_fn`` counters are read only when ``/metrics`` is
scraped. ``prometheus_client`` does the exposition (names, escaping, the
text format) through one collector that reads those plain values, plus its
own process, platform and garbage-collector collectors.

Every metric has a HELP text: the catalogue :data:`HELP` below, or the text
given to :meth:`Metrics.describe`, :meth:`Metrics.gauge`,
:meth:`Metrics.counter_fn` or :meth:`Metrics.histogram`. A name missing from
both renders with a HELP text saying so (and a test keeps the catalogue whole).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["HELP", "Histogram", "Metrics"]

# What each counter counts, for the ones the code increments with ``inc``.
HELP: dict[str, str] = {
    "tidings_connections_total": "Connections accepted, by edge (ws, mqtt, mqtts, mqtt-ws).",
    "tidings_messages_in_total": "Messages published and stored (any edge or the HTTP API; "
                                 "idempotent retries and $SYS statistics not counted).",
    "tidings_deliveries_total": "Messages handed to local subscribers (one per subscriber).",
    "tidings_slow_consumers_total": "Sessions closed because their unsent bytes exceeded "
                                    "the outbound bound (WS close 4008, MQTT disconnect).",
    "tidings_errors_total": "Errors answered to peers or met internally, by error code.",
    "tidings_notifications_total": "Notifications accepted by POST /v1/notify "
                                   "(idempotent retries not counted).",
    "tidings_bus_duplicates_total": "Publications the bus delivered twice to this node "
                                    "(dropped: each is delivered once).",
    "tidings_bus_gaps_total": "Gaps in a topic's offsets seen on the bus (the bus dropped "
                              "messages; each gap is filled from history).",
    "tidings_bus_gaps_unfilled_total": "Bus gaps history could not fill (it no longer "
                                       "reached back, or the store was unavailable).",
    "tidings_mqtt_dropped_total": "MQTT messages not delivered, by reason.",
    "tidings_acl_denied_messages_total": "Messages a subscriber's filter matched but the ACL "
                                         "kept from it ([[acl]] deny rules, other users' "
                                         "users/ topics, token grants), live or retained, "
                                         "by edge (ws, mqtt).",
    "tidings_mqtt_takeovers_total": "MQTT sessions taken over by a new connection with "
                                    "the same client id.",
    "tidings_mqtt_cluster_takeovers_total": "MQTT sessions this node took over from "
    "another node of the cluster (that node handed them over in time).",
    "tidings_mqtt_wills_total": "MQTT will messages published.",
    "tidings_webhook_sent_total": "Presence webhook events delivered.",
    "tidings_webhook_failed_total": "Presence webhook events given up after retries.",
    "tidings_webhook_dropped_total": "Presence webhook events dropped because the queue "
                                     "was full.",
}

LabelSet = tuple[tuple[str, str], ...]


class Histogram:
    """A Prometheus histogram kept as plain ints (cumulated only when scraped).

    ``observe`` is a ``bisect`` and two additions: cheap enough to call once
    per delivered publication or store commit.
    """

    def __init__(self, name: str, text: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.text = text
        self.bounds = sorted(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def family(self) -> HistogramMetricFamily:
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip([*self.bounds, float("inf")], self.counts, strict=True):
            total += n
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return HistogramMetricFamily(self.name, self.text, buckets=buckets, sum_value=self.sum)


class Metrics:
    """Plain counters (cheap enough for hot paths), gauges read on demand, histograms.

    The API the rest of the code calls: ``inc``, ``get``, ``describe``,
    ``gauge``, ``counter_fn`` and ``histogram``; ``render`` gives the text
    for ``GET /metrics``. Each instance has its own registry, so several
    nodes in one process (the tests) do not share series.
    """

    def __init__(self, *, process: bool = True) -> None:
        self.counters: Counter[tuple[str, LabelSet]] = Counter()
        self._gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self._help: dict[str, str] = dict(HELP)
        self._counter_fns: dict[str, tuple[str, Callable[[], float]]] = {}
        self._histograms: dict[str, Histogram] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def inc(self, name: str, n: int = 1, **labels: str) -> None:
        self.counters[self.series(name, **labels)] += n

    @staticmethod
    def series(name: str, **labels: str) -> tuple[str, LabelSet]:
        """The key of one labelled counter: made once by a hot path, which then
        calls :meth:`add` instead of sorting the labels on every ``inc``."""
        return (name, tuple(sorted(labels.items())))

    def add(self, series: tuple[str, LabelSet], n: int = 1) -> None:
        """``inc`` for a counter named by :meth:`series`."""
        self.counters[series] += n

    def get(self, name: str, **labels: str) -> int:
        return self.counters[(name, tuple(sorted(labels.items())))]

    def total(self, name: str) -> float:
        """A counter summed over its labels, or a gauge's / counter_fn's value now."""
        if name in self._gauges:
            return self._gauges[name][1]()
        if name in self._counter_fns:
            return self._counter_fns[name][1]()
        return float(sum(v for (n, _), v in self.counters.items() if n == name))

    def describe(self, name: str, text: str) -> None:
        self._help[name] = text

    def gauge(self, name: str, text: str, read: Callable[[], float]) -> None:
        self._gauges[name] = (text, read)

    def counter_fn(self, name: str, text: str, read: Callable[[], float]) -> None:
        """A counter kept elsewhere as a plain int (for hot paths), read when rendered."""
        self._counter_fns[name] = (text, read)

    def histogram(self, name: str, text: str, buckets: Sequence[float]) -> Histogram:
        """A histogram (made once per name): call ``observe`` on what it returns."""
        hist = self._histograms.get(name)
        if hist is None:
            hist = self._histograms[name] = Histogram(name, text, buckets)
        return hist

    def help_text(self, name: str) -> str:
        return self._help.get(name) or f"{name} (no description: add it to metrics.HELP)"

    def families(self) -> Iterator[Metric]:
        """Every series of this node, read now."""
        by_name: dict[str, list[tuple[LabelSet, int]]] = {}
        for (name, labels), value in sorted(self.counters.items()):
            by_name.setdefault(name, []).append((labels, value))
        for name in sorted((set(by_name) | set(self._help)) - set(self._gauges)
                           - set(self._counter_fns)):
            family = Metric(_base(name), self.help_text(name), "counter")
            for labels, value in by_name.get(name, [((), 0)]):
                family.add_sample(_base(name) + "_total", dict(labels), value)
            yield family
        for name, (text, read) in sorted(self._counter_fns.items()):
            family = Metric(_base(name), text, "counter")
            family.add_sample(_base(name) + "_total", {}, read())
            yield family
        for name, (text, read) in sorted(self._gauges.items()):
            family = Metric(name, text, "gauge")
            family.add_sample(name, {}, read())
            yield family
        for hist in self._histograms.values():
            yield hist.family()

    def render(self) -> str:
        return generate_latest(self.registry).decode()


class _Collector(Collector):
    """Hands :meth:`Metrics.families` to the registry (``Metrics`` itself cannot be
    the collector: its ``describe`` means something else)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.families()


def _base(name: str) -> str:
    """A counter's family name: Prometheus adds ``_total`` to its samples itself."""
    return name.removesuffix("_total")
