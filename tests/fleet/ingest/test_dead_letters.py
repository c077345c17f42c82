"""Dead letters are bounded: a payload prefix with size and hash, row and byte caps with
the oldest dropped first and counted, a retention, and an old table left alone."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert, inspect, select, text
from sqlmodel import Session

from edgefleet.fleet.ingest.batches import dead_letter_limits
from edgefleet.fleet.ingest.dead_letters import (
    MAX_ERROR_CHARS,
    MAX_TOPIC_CHARS,
    ROW_OVERHEAD_BYTES,
    DeadLetterLimits,
    dead_letter_row,
)
from edgefleet.fleet.ingest.decode import Oversized, Rejected, decode
from edgefleet.fleet.ingest.writer import BatchWriter
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store import DeadLetter, make_engine
from edgefleet.fleet.store.migrate import BASELINE_REVISION, upgrade
from edgefleet.shared.topics import Channel, device_topic
from tests.fleet.publisher import publish, wait_until
from tests.support.fleet_fixtures import MakeFleet
from tests.support.mosquitto import MosquittoBroker

NOW = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
TOPIC = device_topic("d1", Channel.TELEMETRY)


def garbage(i: int, size: int = 100, at: datetime = NOW) -> Rejected:
    payload = (b"%06d" % i) * (size // 6 + 1)
    decoded = decode(TOPIC, payload[:size], at)
    assert isinstance(decoded, Rejected)
    return decoded


def letters(engine: Engine) -> list[DeadLetter]:
    with Session(engine) as s:
        return list(s.scalars(select(DeadLetter).order_by(DeadLetter.id)))  # type: ignore[arg-type]


def test_a_dead_letter_keeps_a_prefix_with_the_whole_size_and_hash(engine: Engine) -> None:
    payload = b"\xff" + b"x" * (1 << 20)
    rejected = decode(TOPIC, payload, NOW)
    assert isinstance(rejected, Rejected)
    BatchWriter(engine, DeadLetterLimits(prefix_bytes=4096)).write([rejected])
    [letter] = letters(engine)
    assert letter.payload_prefix == payload[:4096]
    assert letter.payload_bytes == len(payload)
    assert letter.payload_sha256 == hashlib.sha256(payload).hexdigest()
    assert letter.stored_bytes < 4096 + 1024


def test_an_oversized_payload_cut_on_arrival_keeps_its_whole_size_and_hash() -> None:
    payload = b"{" * 5000
    cut = Oversized.of(payload, limit=1024, keep=16)
    decoded = decode(TOPIC, cut, NOW)
    assert isinstance(decoded, Rejected)
    assert "payload of 5000 bytes is larger than the 1024" in decoded.error
    assert (decoded.payload, decoded.payload_size) == (b"{" * 16, 5000)
    assert decoded.payload_sha256 == hashlib.sha256(payload).hexdigest()
    on_a_bad_topic = decode("not/a/device/topic", cut, NOW)
    assert isinstance(on_a_bad_topic, Rejected)
    assert on_a_bad_topic.payload_size == 5000


def test_huge_topics_and_reasons_are_cut_too() -> None:
    rejected = Rejected("t" * 70_000, b"", NOW, "e" * 70_000)
    row = dead_letter_row(rejected, 4096)
    assert (len(row["topic"]), len(row["error"])) == (MAX_TOPIC_CHARS, MAX_ERROR_CHARS)
    assert row["stored_bytes"] == MAX_TOPIC_CHARS + MAX_ERROR_CHARS + ROW_OVERHEAD_BYTES


def test_the_row_cap_drops_the_oldest_first_and_counts_them(engine: Engine) -> None:
    writer = BatchWriter(engine, DeadLetterLimits(max_rows=5))
    first = writer.write([garbage(i) for i in range(4)])
    second = writer.write([garbage(i) for i in range(4, 8)])
    assert (first.dead_letters_dropped, second.dead_letters_dropped) == (0, 3)
    assert [letter.payload_prefix[:6] for letter in letters(engine)] == [
        b"%06d" % i for i in range(3, 8)
    ]


def test_the_byte_cap_drops_the_oldest_first_and_counts_them(engine: Engine) -> None:
    one = dead_letter_row(garbage(0, size=1000), 4096)["stored_bytes"]
    writer = BatchWriter(engine, DeadLetterLimits(max_bytes=3 * one + one // 2))
    dropped = sum(writer.write([garbage(i, size=1000)]).dead_letters_dropped for i in range(10))
    kept = letters(engine)
    assert dropped == 7
    assert [letter.payload_prefix[:6] for letter in kept] == [b"%06d" % i for i in (7, 8, 9)]
    assert sum(letter.stored_bytes for letter in kept) <= 3 * one + one // 2


def test_the_retention_deletes_only_the_dead_letters_older_than_it(engine: Engine) -> None:
    writer = BatchWriter(engine, DeadLetterLimits(retention_s=3600))
    writer.write([garbage(0, at=NOW - timedelta(hours=2)), garbage(1, at=NOW)])
    assert writer.expire_dead_letters(NOW) == 1
    assert [letter.payload_prefix[:6] for letter in letters(engine)] == [b"000001"]
    assert writer.expire_dead_letters(NOW) == 0


def test_the_settings_defaults_are_the_limits_defaults() -> None:
    assert dead_letter_limits(FleetSettings()) == DeadLetterLimits()


def test_a_database_with_the_old_dead_letter_table_migrates_to_the_new_shape(
    database_url: str,
) -> None:
    # A database of the releases before migrations: the tables, no alembic_version, and
    # the dead-letter table as it was before payloads were bounded.
    upgrade(database_url, BASELINE_REVISION)
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            pg = engine.dialect.name == "postgresql"
            conn.execute(text("DROP TABLE alembic_version"))
            conn.execute(
                text(
                    f"CREATE TABLE dead_letter (id {'SERIAL' if pg else 'INTEGER'} PRIMARY KEY,"
                    " received_at TEXT, topic TEXT NOT NULL,"
                    f" payload {'BYTEA' if pg else 'BLOB'} NOT NULL, error TEXT NOT NULL)"
                )
            )
            conn.execute(
                text("INSERT INTO dead_letter (topic, payload, error) VALUES ('t', 'p', 'e')")
            )

        upgrade(database_url)

        assert BatchWriter(engine).write([garbage(1)]).dead_lettered == 1
        assert len(letters(engine)) == 1
        assert "dead_letter" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_the_running_ingester_cuts_huge_payloads_and_applies_the_retention(
    make_service: MakeFleet, mosquitto: MosquittoBroker, unique_id: str
) -> None:
    service = make_service(
        ingest_max_payload_bytes=64 * 1024,
        dead_letter_payload_prefix_bytes=100,
        dead_letter_retention_s=60,
        dead_letter_sweep_interval_s=0.1,
    )
    old = dead_letter_row(garbage(0, at=datetime.now(UTC) - timedelta(hours=1)), 100)
    with service.engine.begin() as conn:
        conn.execute(insert(DeadLetter.__table__), [old])  # type: ignore[attr-defined]
    huge = b"[" * (2 << 20)
    publish(mosquitto.port, [(device_topic(f"dev-{unique_id}", Channel.DRIFT), huge, False)])
    wait_until(
        lambda: service.metrics.value("edgefleet_ingest_dead_lettered_total") == 1,
        what="the huge payload dead-lettered",
    )
    wait_until(
        lambda: (
            service.metrics.value("edgefleet_ingest_dead_letters_dropped_total", why="retention")
            == 1
        ),
        what="the retention sweep",
    )
    [letter] = letters(service.engine)
    assert (letter.payload_prefix, letter.payload_bytes) == (b"[" * 100, len(huge))
    assert letter.payload_sha256 == hashlib.sha256(huge).hexdigest()
    assert "larger than the 65536" in letter.error


def test_a_reason_that_echoes_a_nul_from_the_payload_is_stored_not_retried(
    engine: Engine,
) -> None:
    # The schema tag is echoed in the reason; PostgreSQL text refuses NUL, and a dead
    # letter the database refuses used to stall the writer in retries.
    rejected = decode(TOPIC, b'{"schema": "a\\u0000b"}', NOW)
    assert isinstance(rejected, Rejected)
    assert "\x00" in rejected.error
    odd = Rejected("t\x00\ud800", b"", NOW, "e\ud800")
    assert BatchWriter(engine).write([rejected, odd]).dead_lettered == 2
    first, second = letters(engine)
    assert "'a\\x00b'" in first.error
    assert (second.topic, second.error) == ("t\\x00\\ud800", "e\\ud800")
