from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pytest

from edgefleet.agent.outbox import Outbox, clock_floor_seq

NOW = 1_700_000_000.0


def payload(seq: int) -> bytes:
    return f'{{"seq": {seq}}}'.encode()


def open_outbox(tmp_path: Path, **kwargs: object) -> Outbox:
    kwargs.setdefault("clock", lambda: NOW)
    return Outbox(tmp_path / "outbox.sqlite3", **kwargs)  # type: ignore[arg-type]


def test_fresh_outbox_starts_at_the_clock_floor(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    seq = outbox.enqueue("t", "events", payload)
    assert seq == clock_floor_seq(NOW) == int(NOW * 1000) * 1000


def test_messages_come_back_in_order_with_strictly_increasing_seqs(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    seqs = [outbox.enqueue(f"topic/{i}", "events", payload) or 0 for i in range(50)]
    messages = outbox.peek(0, 100)
    assert [m.seq for m in messages] == seqs
    assert all(b > a for a, b in itertools.pairwise(seqs))
    assert [m.topic for m in messages] == [f"topic/{i}" for i in range(50)]
    assert messages[7].payload == payload(messages[7].seq)
    # peek pages from an id cursor without consuming
    assert [m.seq for m in outbox.peek(messages[9].id, 5)] == seqs[10:15]
    assert outbox.depth == 50


def test_ack_removes_only_that_message(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    for _ in range(3):
        outbox.enqueue("t", "events", payload)
    first, second, third = outbox.peek()
    outbox.ack(second.id)
    outbox.ack(second.id)  # a duplicate PUBACK changes nothing
    assert [m.id for m in outbox.peek()] == [first.id, third.id]
    assert outbox.depth == 2


def test_backlog_seq_and_drop_count_survive_reopen(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path, max_messages=10)
    for _ in range(12):
        outbox.enqueue("t", "telemetry", payload)
    outbox.ack(outbox.peek()[0].id)
    last = outbox.peek(0, 100)[-1].seq
    outbox.close()

    # The clock went backwards (no RTC at boot): the stored counter still wins.
    reopened = open_outbox(tmp_path, max_messages=10, clock=lambda: NOW - 3600)
    assert reopened.depth == 9
    assert reopened.dropped_total == 2
    assert [m.payload for m in reopened.peek(0, 100)][-1] == payload(last)
    assert reopened.enqueue("t", "events", payload) == last + 1


def test_reopen_with_a_later_clock_continues_above_the_floor(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    outbox.enqueue("t", "events", payload)
    outbox.close()
    later = NOW + 10
    assert open_outbox(tmp_path, clock=lambda: later).enqueue("t", "events", payload) == (
        clock_floor_seq(later)
    )


def test_full_outbox_drops_oldest_telemetry_then_drift_then_oldest_of_any(
    tmp_path: Path,
) -> None:
    outbox = open_outbox(tmp_path, max_messages=10)
    kinds = ["events", "telemetry", "drift", "telemetry", "events", "drift"] + ["events"] * 4
    for i, kind in enumerate(kinds):
        outbox.enqueue(f"{kind}/{i}", kind, payload)
    assert outbox.depth == 10
    assert outbox.dropped_total == 0

    def topics() -> list[str]:
        return [m.topic for m in outbox.peek(0, 100)]

    outbox.enqueue("events/10", "events", payload)
    assert "telemetry/1" not in topics()
    assert "telemetry/3" in topics()
    outbox.enqueue("events/11", "events", payload)
    assert "telemetry/3" not in topics()
    outbox.enqueue("events/12", "events", payload)
    assert "drift/2" not in topics()
    assert "drift/5" in topics()
    outbox.enqueue("events/13", "events", payload)
    assert "drift/5" not in topics()
    outbox.enqueue("events/14", "events", payload)  # only events left: the oldest goes
    assert topics() == [f"events/{i}" for i in (4, 6, 7, 8, 9, 10, 11, 12, 13, 14)]
    assert outbox.depth == 10
    assert outbox.dropped_total == 5


def test_full_disk_is_counted_not_raised_and_writes_resume_after_acks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # max_db_bytes sets SQLite's max_page_count: the database file really is full.
    outbox = open_outbox(tmp_path, max_db_bytes=65536)
    big = b"x" * 3000
    stored: list[int] = []
    with caplog.at_level(logging.WARNING, logger="edgefleet.agent.outbox"):
        for _ in range(60):
            seq = outbox.enqueue("t", "events", lambda s: big)
            if seq is None:
                break
            stored.append(seq)
        else:
            pytest.fail("the outbox never filled up")
        assert outbox.enqueue("t", "events", lambda s: big) is None
    assert outbox.write_failures_total == 2
    assert outbox.dropped_total == 2
    assert outbox.depth == len(stored)
    assert [m.seq for m in outbox.peek(0, 100)] == stored  # nothing stored was lost
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "cannot store" in warnings[0].getMessage()

    for message in outbox.peek(0, 5):
        outbox.ack(message.id)
    resumed = outbox.enqueue("t", "events", lambda s: big)
    assert resumed is not None
    assert resumed > stored[-1]
    outbox.close()
    assert open_outbox(tmp_path, max_db_bytes=65536).dropped_total == 2


def test_a_failing_builder_consumes_no_seq(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)

    def broken(seq: int) -> bytes:
        raise ValueError("cannot encode")

    first = outbox.enqueue("t", "events", payload)
    with pytest.raises(ValueError, match="cannot encode"):
        outbox.enqueue("t", "events", broken)
    assert outbox.enqueue("t", "events", payload) == (first or 0) + 1


def test_allocated_seqs_interleave_with_stored_ones(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    a = outbox.enqueue("t", "events", payload)
    b = outbox.allocate_seq()
    c = outbox.enqueue("t", "events", payload)
    assert a is not None
    assert c is not None
    assert a < b < c
    outbox.close()
    assert open_outbox(tmp_path).allocate_seq() == c + 1


def test_messages_the_fleet_stored_are_deleted_by_seq_range(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    seqs = [outbox.enqueue("t", "telemetry", payload) or 0 for _ in range(6)]
    deleted = outbox.ack_seqs([(seqs[0], seqs[1]), (seqs[4], seqs[4]), (10**18, 10**18)])
    assert deleted == 3
    assert outbox.depth == 3
    assert [m.seq for m in outbox.peek()] == [seqs[2], seqs[3], seqs[5]]
    assert outbox.ack_seqs([(seqs[0], seqs[1])]) == 0  # again: nothing left to delete


def test_the_fleet_acknowledging_is_remembered_across_a_restart(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    assert not outbox.fleet_acks
    outbox.mark_fleet_acks()
    outbox.mark_fleet_acks()
    assert outbox.fleet_acks
    outbox.close()
    assert open_outbox(tmp_path).fleet_acks
