"""Fuzzing the ingest through a real Mosquitto: thousands of generated payloads on every
device topic; each lands where its label says, and memory and database stay bounded."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import func, select
from sqlmodel import Session

from edgefleet.fleet.ingest.decode import Accepted, Ignored, Oversized, decode
from edgefleet.fleet.store import DeadLetter, TelemetryRow
from edgefleet.shared.topics import Channel
from tests.fleet.factories import telemetry
from tests.fleet.publisher import device_message, publish, wait_until
from tests.support.fleet_fixtures import MakeFleet
from tests.support.mosquitto import MosquittoBroker
from tests.support.mqtt_fuzz import FuzzMessage, fuzz_messages

SEED = 20261203
PER_CHANNEL = 700  # about 2,800 messages in all
MAX_PAYLOAD_BYTES = 1 << 20
QUEUE_SIZE = 100
MAX_ROWS = 1000
MAX_BYTES = 1 << 20
MiB = 1 << 20


@pytest.fixture(scope="module")
def messages() -> list[FuzzMessage]:
    return fuzz_messages(SEED, "fuzz", per_channel=PER_CHANNEL, max_payload_bytes=MAX_PAYLOAD_BYTES)


def test_the_labels_are_what_the_decoder_decides(messages: list[FuzzMessage]) -> None:
    """The generator's labels come from the documented bounds; the decoder must agree."""
    now = datetime.now(UTC)
    wrong = []
    for m in messages:
        payload: bytes | Oversized = m.payload
        if len(m.payload) > MAX_PAYLOAD_BYTES:
            payload = Oversized.of(m.payload, limit=MAX_PAYLOAD_BYTES, keep=4096)
        decoded = decode(m.topic, payload, now)
        fate = (
            "stored"
            if isinstance(decoded, Accepted)
            else "ignored"
            if isinstance(decoded, Ignored)
            else "dead"
        )
        if fate != m.fate:
            wrong.append((m.why, m.fate, fate))
    assert not wrong, Counter(wrong)
    assert len(messages) > 2500
    assert {m.fate for m in messages} == {"stored", "dead", "ignored"}


class PeakRss:
    """The peak resident memory of this process (the fleet runs in it) while running."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.baseline = self._process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def stop(self) -> int:
        """Stop sampling; the growth over the baseline, in bytes."""
        self._stop.set()
        self._thread.join()
        return self.peak - self.baseline


def test_a_payload_storm_on_every_topic_is_sorted_exactly_and_stays_bounded(
    make_service: MakeFleet,
    mosquitto: MosquittoBroker,
    messages: list[FuzzMessage],
    tmp_path: Path,
) -> None:
    service = make_service(
        ingest_queue_size=QUEUE_SIZE,
        ingest_max_payload_bytes=MAX_PAYLOAD_BYTES,
        dead_letter_max_rows=MAX_ROWS,
        dead_letter_max_bytes=MAX_BYTES,
    )
    fates = Counter(m.fate for m in messages)
    stored = Counter(m.topic.rsplit("/", 1)[1] for m in messages if m.fate == "stored")
    metrics = service.metrics
    rss = PeakRss()
    # In chunks, so that the publisher in this process never holds much of the storm.
    for start in range(0, len(messages), 100):
        chunk = messages[start : start + 100]
        publish(mosquitto.port, [(m.topic, m.payload, False) for m in chunk])
    # Fleet-to-device messages are ignored, not received: the storm's, and the `stored`
    # acknowledgements the fleet publishes for what it stores.
    device_traffic = len(messages) - fates["ignored"]
    wait_until(
        lambda: metrics.value("edgefleet_ingest_received_total") == device_traffic,
        timeout_s=60,
        what="every message received",
    )
    wait_until(
        lambda: (
            metrics.value("edgefleet_ingest_dead_lettered_total")
            + metrics.total("edgefleet_ingest_persisted_total")
            >= device_traffic
        ),
        timeout_s=30,
        what="every message written",
    )
    growth = rss.stop()

    assert metrics.value("edgefleet_ingest_dead_lettered_total") == fates["dead"]
    assert metrics.value("edgefleet_ingest_ignored_total") >= fates["ignored"]
    for channel, n in stored.items():
        assert metrics.value("edgefleet_ingest_persisted_total", channel=channel) == n, channel
    assert metrics.total("edgefleet_ingest_duplicates_total") == 0
    assert metrics.value("edgefleet_ingest_db_retries_total") == 0

    with Session(service.engine) as s:
        rows = int(s.scalar(select(func.count()).select_from(DeadLetter)) or 0)
        kept_bytes = int(s.scalar(select(func.sum(DeadLetter.stored_bytes))) or 0)
        telemetry_rows = int(s.scalar(select(func.count()).select_from(TelemetryRow)) or 0)
    dropped = metrics.value("edgefleet_ingest_dead_letters_dropped_total", why="cap")
    assert rows + dropped == fates["dead"]
    assert rows <= MAX_ROWS
    assert kept_bytes <= MAX_BYTES
    assert telemetry_rows == stored[Channel.TELEMETRY.value]

    # The caps: the hand-off holds at most QUEUE_SIZE payloads of at most
    # MAX_PAYLOAD_BYTES; the store at most MAX_BYTES of dead letters (SQLite reuses the
    # pages it frees, so the file grows by little more than that, plus the WAL).
    assert growth <= QUEUE_SIZE * MAX_PAYLOAD_BYTES + 64 * MiB, growth / MiB
    if service.engine.dialect.name == "sqlite":  # PostgreSQL frees space at its vacuum
        db = tmp_path / "fleet.db"
        wal = tmp_path / "fleet.db-wal"
        size = db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        assert size <= 4 * MAX_BYTES + 8 * MiB, size / MiB

    # Ingest goes on: a valid message afterwards is stored.
    publish(mosquitto.port, [device_message(Channel.TELEMETRY, telemetry("after-fuzz", 1))])
    wait_until(
        lambda: (
            metrics.value("edgefleet_ingest_persisted_total", channel="telemetry")
            == stored[Channel.TELEMETRY.value] + 1
        ),
        what="the valid message after the storm",
    )
    assert httpx.get(f"{service.base_url}/healthz").json()["ingester"] == "connected"
