"""The ingester's writer process: stores what the thread would, survives its own death."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, func, select
from sqlmodel import Session

from edgefleet.fleet.ingest import Ingester, IngestMetrics
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store import DeadLetter, TelemetryRow
from edgefleet.shared.topics import Channel, device_topic
from tests.fleet.factories import telemetry
from tests.fleet.publisher import device_message, publish, wait_until
from tests.support.mosquitto import MosquittoBroker


def stored(engine: Engine, table: type) -> int:
    with Session(engine) as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


@pytest.fixture
def start(
    engine: Engine, mosquitto: MosquittoBroker, tmp_path: Path
) -> Iterator[tuple[Ingester, IngestMetrics]]:
    settings = FleetSettings(
        broker_url=mosquitto.url,
        data_dir=tmp_path,
        ingest_flush_interval_s=0.05,
        ingest_batch_size=20,
    )
    metrics = IngestMetrics(CollectorRegistry())
    ingester = Ingester(settings, engine, metrics)
    ingester.start()
    try:
        assert ingester.wait_connected(10)
        time.sleep(0.2)  # the SUBACK follows on_connect
        yield ingester, metrics
    finally:
        ingester.stop()


def test_the_writer_process_stores_each_seq_once_within_and_across_batches(
    start: tuple[Ingester, IngestMetrics], engine: Engine, mosquitto: MosquittoBroker
) -> None:
    ingester, metrics = start
    assert ingester.writer_pid is not None
    assert ingester.writer_pid != os.getpid()
    first = [device_message(Channel.TELEMETRY, telemetry("wp-1", seq)) for seq in range(30)]
    publish(mosquitto.port, first + first[:3])  # batches of 20: the repeats in the second
    wait_until(lambda: metrics.total("edgefleet_ingest_duplicates_total") == 3, what="dupes")
    again = [device_message(Channel.TELEMETRY, telemetry("wp-1", seq)) for seq in range(25, 35)]
    publish(mosquitto.port, again)
    wait_until(lambda: metrics.total("edgefleet_ingest_duplicates_total") == 8, what="dupes")
    # Counted just before the commit: the rows may land a moment after the count.
    wait_until(lambda: stored(engine, TelemetryRow) == 35, what="the rows committed")
    assert metrics.total("edgefleet_ingest_persisted_total") == 35
    assert metrics.value("edgefleet_ingest_received_total") == 43
    assert metrics.value("edgefleet_ingest_lag_seconds_count", channel="telemetry") == 43


def test_a_killed_writer_process_is_replaced_and_nothing_is_lost(
    start: tuple[Ingester, IngestMetrics], engine: Engine, mosquitto: MosquittoBroker
) -> None:
    ingester, metrics = start
    before = ingester.writer_pid
    assert before is not None
    publish(mosquitto.port, [device_message(Channel.TELEMETRY, telemetry("wp-2", 1))])
    # Its outcome back, not only committed: a batch whose outcome the kill loses is sent
    # again and counted as a duplicate (stored once all the same).
    wait_until(lambda: metrics.total("edgefleet_ingest_persisted_total") == 1, what="first")
    os.kill(before, signal.SIGKILL)
    messages = [device_message(Channel.TELEMETRY, telemetry("wp-2", seq)) for seq in range(2, 12)]
    publish(mosquitto.port, messages)
    # Every row once in the database: that is the guarantee. The counters are not exact
    # across a writer's death: a batch it had counted but not committed is counted again
    # by its replacement (received and persisted 12 for 11 rows, seen under load).
    wait_until(lambda: stored(engine, TelemetryRow) == 11, timeout_s=60, what="all stored")
    wait_until(lambda: metrics.total("edgefleet_ingest_persisted_total") >= 11, what="all counted")
    time.sleep(0.5)
    assert stored(engine, TelemetryRow) == 11  # and nothing twice
    assert ingester.writer_pid not in (None, before)


def test_the_writer_process_logs_through_the_ingesters_loggers(
    start: tuple[Ingester, IngestMetrics],
    engine: Engine,
    mosquitto: MosquittoBroker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="edgefleet")
    topic = device_topic("wp-3", Channel.TELEMETRY)
    publish(mosquitto.port, [(topic, b'{"seq": 1, "schema": 3}', False)])
    wait_until(lambda: stored(engine, DeadLetter) == 1, what="dead letter")
    wait_until(lambda: any("dead-lettering" in r.getMessage() for r in caplog.records), what="log")
    (record,) = [r for r in caplog.records if "dead-lettering" in r.getMessage()]
    assert record.name == "edgefleet.fleet.ingest.batches"
    assert record.process != os.getpid()  # made in the writer process, handled here
    assert getattr(record, "device_id", None) == "wp-3"  # the structured fields come along


def test_without_the_process_the_thread_writes_the_same(
    engine: Engine, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    settings = FleetSettings(
        broker_url=mosquitto.url,
        data_dir=tmp_path,
        ingest_flush_interval_s=0.05,
        ingest_writer_process=False,
    )
    metrics = IngestMetrics(CollectorRegistry())
    ingester = Ingester(settings, engine, metrics)
    ingester.start()
    try:
        assert ingester.wait_connected(10)
        assert ingester.writer_pid is None
        time.sleep(0.2)  # the SUBACK follows on_connect
        message = device_message(Channel.TELEMETRY, telemetry("wp-4", 1))
        publish(mosquitto.port, [message, message])
        wait_until(lambda: metrics.total("edgefleet_ingest_duplicates_total") == 1, what="dupe")
        assert stored(engine, TelemetryRow) == 1
    finally:
        ingester.stop()
