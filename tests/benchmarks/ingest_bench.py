"""Ingest throughput: a bare paho subscriber versus the fleet ingester (SQLite, PostgreSQL).

Run: ``.venv/bin/python tests/benchmarks/ingest_bench.py [--messages 50000] [--runs 3]``.
Starts its own Mosquitto; a publisher process sends N valid telemetry messages from
``--devices`` device ids at QoS 1 while the consumer is away on a persistent session, so
the broker queues them; the consumer is then timed from reconnecting until its last
message is counted (bare) or persisted (ingester), which measures the consumer and not
the publisher. The median of ``--runs`` runs is printed with the ratio, its target and
the verdict (exit status 1 if a target is not met). When the
PostgreSQL of the tests answers (``EDGEFLEET_TEST_POSTGRES_URL``), the ingester is also
timed on a fresh database there, in the same run.
To profile, sample every thread of the run: ``py-spy record --threads -f raw -o out.raw
-- .venv/bin/python tests/benchmarks/ingest_bench.py --runs 1`` (cProfile and
pyinstrument only see the thread that started them).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Ingester rate over the bare subscriber's (issue 15).
SQLITE_TARGET = 0.8
POSTGRES_TARGET = 0.6


def make_payloads(messages: int, devices: int) -> list[tuple[str, bytes]]:
    from edgefleet.shared.messages import LatencyPercentiles, TelemetryMessage, encode, utcnow
    from edgefleet.shared.topics import Channel, device_topic

    now = utcnow()
    out = []
    for i in range(messages):
        device_id = f"bench-{i % devices:04d}"
        message = TelemetryMessage(
            device_id=device_id,
            seq=i // devices,
            ts=now,
            interval_s=10,
            inferences=i,
            errors=0,
            inferences_total=i,
            errors_total=0,
            latency=LatencyPercentiles(p50_ms=1.0, p95_ms=2.0, p99_ms=3.0),
            cpu_percent=10.0,
            rss_bytes=50_000_000,
            disk_free_bytes=10**9,
            outbox_depth=0,
        )
        out.append((device_topic(device_id, Channel.TELEMETRY), encode(message)))
    return out


def publish_all(port: int, payloads: list[tuple[str, bytes]]) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in payloads]
    for info in infos:
        info.wait_for_publish(timeout=120)
    client.disconnect()
    client.loop_stop()


def publish_and_wait(port: int, payloads: list[tuple[str, bytes]]) -> None:
    publisher = multiprocessing.Process(target=publish_all, args=(port, payloads))
    publisher.start()
    publisher.join()


def drain_rate(count: int, started: float, done: Callable[[], bool]) -> float:
    """Messages per second from ``started`` until ``done()``."""
    deadline = started + 600
    while not done():
        if time.perf_counter() > deadline:
            raise TimeoutError("consumer did not finish within 600s")
        time.sleep(0.002)
    return count / (time.perf_counter() - started)


def bare_run(port: int, payloads: list[tuple[str, bytes]], client_id: str) -> float:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    count = 0
    subscribed = threading.Event()

    def on_message(_c: object, _u: object, _m: object) -> None:
        nonlocal count
        count += 1

    def make() -> mqtt.Client:
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
        )
        client.on_message = on_message
        client.on_subscribe = lambda *_args: subscribed.set()
        return client

    client = make()
    client.connect("127.0.0.1", port)
    client.subscribe("edgefleet/v1/devices/+/+", qos=1)
    client.loop_start()
    subscribed.wait(10)
    client.disconnect()
    client.loop_stop()
    publish_and_wait(port, payloads)
    client = make()
    started = time.perf_counter()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        return drain_rate(len(payloads), started, lambda: count >= len(payloads))
    finally:
        client.disconnect()
        client.loop_stop()


def ingester_run(
    port: int,
    payloads: list[tuple[str, bytes]],
    workdir: Path,
    client_id: str,
    database_url: str | None = None,
) -> float:
    from prometheus_client import CollectorRegistry

    from edgefleet.fleet.ingest import Ingester, IngestMetrics
    from edgefleet.fleet.settings import FleetSettings
    from edgefleet.fleet.store import create_all, make_engine

    # A persistent session without $share: the broker queues all N while the ingester
    # is away, so the run times the ingester draining them, not the publisher.
    settings = FleetSettings(
        data_dir=workdir,
        migrate_at_start=True,
        broker_url=f"mqtt://127.0.0.1:{port}",
        shared_subscription=False,
        broker_client_id=client_id,
        broker_persistent_session=True,
        database_url=database_url or "",
    )
    engine = make_engine(settings.database_url)
    create_all(engine)
    subscriber = Ingester(settings, engine, IngestMetrics(CollectorRegistry()))
    subscriber.start()
    if not subscriber.wait_connected(10):
        raise RuntimeError("ingester did not connect")
    time.sleep(0.3)  # SUBACK
    subscriber.stop()
    publish_and_wait(port, payloads)
    metrics = IngestMetrics(CollectorRegistry())
    ingester = Ingester(settings, engine, metrics)
    # The writer process starts once with the fleet (a second or two of imports): not
    # part of the drain, which is timed from connecting, as the bare subscriber's is.
    ingester.start_writer()
    telemetry = metrics.persisted.labels("telemetry")
    started = time.perf_counter()
    ingester.start()
    n = len(payloads)
    try:
        # One counter, not `metrics.total` (which collects the whole registry): this
        # thread polls inside the ingester's process, and must not cost it GIL time.
        return drain_rate(n, started, lambda: telemetry._value.get() >= n)
    finally:
        ingester.stop()
        engine.dispose()


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from tests.support.mosquitto import MosquittoBroker

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    payloads = make_payloads(args.messages, args.devices)
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        broker = MosquittoBroker(Path(tmp) / "mosquitto")
        broker.start()
        try:
            bare = [bare_run(broker.port, payloads, f"bench-bare-{i}") for i in range(args.runs)]
            ingest = [
                ingester_run(broker.port, payloads, Path(tmp) / f"run{i}", f"bench-ingest-{i}")
                for i in range(args.runs)
            ]
            postgres = postgres_runs(broker.port, payloads, Path(tmp), args.runs)
        finally:
            broker.stop()
    bare_median, ingest_median = statistics.median(bare), statistics.median(ingest)
    print(f"messages: {args.messages:,} from {args.devices} devices, QoS 1, median of {args.runs}")
    print(f"bare paho subscriber : {bare_median:10,.0f} msg/s  runs {[round(r) for r in bare]}")
    print(f"fleet ingester+SQLite: {ingest_median:10,.0f} msg/s  runs {[round(r) for r in ingest]}")
    met = [verdict("ingester / bare      ", ingest_median / bare_median, SQLITE_TARGET)]
    if isinstance(postgres, str):
        print(f"fleet ingester+PostgreSQL: skipped, {postgres}")
    else:
        pg_median = statistics.median(postgres)
        print(
            f"fleet ingester+Postgres: {pg_median:8,.0f} msg/s  runs {[round(r) for r in postgres]}"
        )
        met.append(verdict("ingester(PG) / bare  ", pg_median / bare_median, POSTGRES_TARGET))
    return 0 if all(met) else 1


def verdict(label: str, ratio: float, target: float) -> bool:
    """Print ``ratio`` against ``target``; whether it is met."""
    met = ratio >= target
    print(f"{label}: {ratio:10.2f}  target >= {target:.2f}: {'met' if met else 'NOT met'}")
    return met


def postgres_runs(
    port: int, payloads: list[tuple[str, bytes]], workdir: Path, runs: int
) -> list[float] | str:
    """The ingester's rates on a fresh PostgreSQL database per run, or why not."""
    from tests.support import pg

    reason = pg.unavailable_reason()
    if reason is not None:
        return reason
    rates = []
    for i in range(runs):
        with pg.fresh_database() as url:
            rates.append(
                ingester_run(port, payloads, workdir / f"pg{i}", f"bench-ingest-pg-{i}", url)
            )
    return rates


if __name__ == "__main__":
    sys.exit(main())
