"""The ingester's Prometheus metrics, on a registry the caller owns (one per app)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edgefleet.fleet.ingest.writer import WriteResult
from edgefleet.shared.topics import Channel

# Device-to-fleet channels (a lag per channel: telemetry at QoS 0 is not drift at QoS 1).
DEVICE_CHANNELS = (Channel.STATE, Channel.TELEMETRY, Channel.DRIFT, Channel.EVENTS)
# Seconds: milliseconds on a healthy fleet; minutes to hours for an outbox replayed after
# an outage.
LAG_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600)


class IngestMetrics:
    """Counters of what the ingester received, stored, skipped and dead-lettered."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.received = Counter(
            "edgefleet_ingest_received",
            "MQTT messages received on device-to-fleet and unknown topics (fleet-to-device"
            " topics count as ignored)",
            registry=registry,
        )
        self.persisted = Counter(
            "edgefleet_ingest_persisted",
            "device messages stored (state: applied to the registry)",
            ["channel"],
            registry=registry,
        )
        self.duplicates = Counter(
            "edgefleet_ingest_duplicates",
            "device messages already stored (or states older than the stored one)",
            ["channel"],
            registry=registry,
        )
        self.seq_conflicts = Counter(
            "edgefleet_ingest_seq_conflicts",
            "device messages on a stored (device, seq) with other content (dead-lettered)",
            ["channel"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            "edgefleet_ingest_dead_lettered",
            "invalid payloads kept in dead_letters",
            registry=registry,
        )
        self.dead_letters_dropped = Counter(
            "edgefleet_ingest_dead_letters_dropped",
            "dead letters deleted, oldest first: over the row or byte cap, or past retention",
            ["why"],
            registry=registry,
        )
        self.ignored = Counter(
            "edgefleet_ingest_ignored",
            "fleet-to-device messages seen and skipped",
            registry=registry,
        )
        self.db_retries = Counter(
            "edgefleet_ingest_db_retries",
            "batches retried after a database error",
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "edgefleet_ingest_batch_seconds",
            "time to write one batch",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.lag_seconds = Histogram(
            "edgefleet_ingest_lag_seconds",
            "from a device message's own timestamp to the commit that stored it (live "
            "messages; a retained one replayed on subscribe is not counted)",
            ["channel"],
            buckets=LAG_BUCKETS_S,
            registry=registry,
        )
        for channel in DEVICE_CHANNELS:
            self.lag_seconds.labels(channel.value)
        self.queue_depth = Gauge(
            "edgefleet_ingest_queue_depth", "messages waiting for the writer", registry=registry
        )
        self.connected = Gauge(
            "edgefleet_ingest_broker_connected",
            "1 while connected to the broker",
            registry=registry,
        )

    def record(self, result: WriteResult) -> None:
        for channel, n in result.persisted.items():
            self.persisted.labels(channel.value).inc(n)
        for channel, n in result.duplicates.items():
            self.duplicates.labels(channel.value).inc(n)
        for channel, n in result.conflicts.items():
            self.seq_conflicts.labels(channel.value).inc(n)
        self.dead_lettered.inc(result.dead_lettered)
        self.dead_letters_dropped.labels("cap").inc(result.dead_letters_dropped)

    def observe_lags(self, lags: Iterable[tuple[str, float]]) -> None:
        """Observe each live message's (channel, lag) of a committed batch (see
        `edgefleet.fleet.ingest.batches.lags`)."""
        histogram = self.lag_seconds
        for channel, lag_s in lags:
            histogram.labels(channel).observe(lag_s)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value, 0 if never set (name with its _total suffix)."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def total(self, name: str) -> float:
        """The sum of a labelled counter over all its labels."""
        return sum(
            sample.value
            for metric in self.registry.collect()
            for sample in metric.samples
            if sample.name == name
        )
