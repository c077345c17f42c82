"""Reading the log: every filter, paging, and both export formats, streamed in chunks."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlmodel import Session

from edgefleet.fleet.audit.entry import AuditEntry, AuditOutcome
from edgefleet.fleet.audit.log import append
from edgefleet.fleet.audit.read import (
    CSV_COLUMNS,
    AuditFilter,
    export_csv,
    export_jsonl,
    iter_entries,
    iter_for_verify,
    query_page,
)
from edgefleet.fleet.audit.verify import Unreadable
from tests.fleet.audit.conftest import BOB, T0, record, sql


def seed(engine: Engine) -> None:
    """Six entries: alice creates r-1..r-3 (minutes 1-3), bob aborts r-2 (minute 4),
    a denied model.approve (minute 5), a rollout_x.y action (minute 6)."""
    items = [
        record(1),
        record(2),
        record(3),
        record(2, actor=BOB, action="rollout.abort"),
        record(5, action="model.approve").model_copy(update={"outcome": AuditOutcome.DENIED}),
        record(6, action="rollout_x.y"),
    ]
    for n, rec in enumerate(items, 1):
        with Session(engine) as session:
            append(session, rec, now=T0 + timedelta(minutes=n))
            session.commit()


def seqs(engine: Engine, **where: object) -> list[int]:
    with Session(engine) as session:
        return [e.seq for e in query_page(session, AuditFilter(**where), limit=100).items]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({}, [1, 2, 3, 4, 5, 6]),
        ({"actor": "bob"}, [4]),  # by name
        ({"actor": "u-bob"}, [4]),  # by id
        ({"action": "rollout.abort"}, [4]),
        ({"action": "rollout."}, [1, 2, 3, 4]),  # a prefix; rollout_x.y is not in it
        ({"action": "rollout"}, []),  # exact without the dot
        ({"object_kind": "rollout", "object_id": "r-2"}, [2, 4]),
        ({"outcome": AuditOutcome.DENIED}, [5]),
        ({"since": T0 + timedelta(minutes=2), "until": T0 + timedelta(minutes=4)}, [2, 3]),
        ({"actor": "alice", "action": "rollout.", "since": T0 + timedelta(minutes=3)}, [3]),
    ],
)
def test_filters(engine: Engine, where: dict[str, object], expected: list[int]) -> None:
    seed(engine)
    assert seqs(engine, **where) == expected


def test_a_prefix_with_like_wildcards_matches_only_itself(sqlite_engine: Engine) -> None:
    seed(sqlite_engine)
    assert seqs(sqlite_engine, action="rollout_.") == []
    assert seqs(sqlite_engine, action="rollout_x.") == [6]


def test_times_without_an_offset_are_refused() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        AuditFilter(since=datetime(2026, 1, 1))


def test_pages_follow_each_other_by_seq(engine: Engine) -> None:
    seed(engine)
    seen: list[int] = []
    after = 0
    with Session(engine) as session:
        while True:
            page = query_page(session, AuditFilter(), after_seq=after, limit=4)
            seen += [e.seq for e in page.items]
            if page.next_after_seq is None:
                break
            after = page.next_after_seq
    assert seen == [1, 2, 3, 4, 5, 6]


def test_a_page_limit_out_of_bounds_is_refused(sqlite_engine: Engine) -> None:
    with Session(sqlite_engine) as session, pytest.raises(ValueError, match="limit"):
        query_page(session, AuditFilter(), limit=0)


def test_iterating_reads_in_chunks_and_misses_nothing(engine: Engine) -> None:
    seed(engine)
    assert [e.seq for e in iter_entries(engine, chunk_rows=2)] == [1, 2, 3, 4, 5, 6]
    assert [e.seq for e in iter_entries(engine, AuditFilter(action="rollout."), chunk_rows=3)] == [
        1,
        2,
        3,
        4,
    ]


def test_jsonl_export_round_trips_entries(engine: Engine) -> None:
    seed(engine)
    chunks = list(export_jsonl(iter_entries(engine), chunk_rows=4))
    assert len(chunks) == 2  # streamed: 4 lines, then 2
    lines = b"".join(chunks).decode().splitlines()
    entries = [AuditEntry.model_validate_json(line) for line in lines]
    assert entries == list(iter_entries(engine))


def test_csv_export_has_a_header_and_one_row_an_entry(engine: Engine) -> None:
    seed(engine)
    chunks = list(export_csv(iter_entries(engine), chunk_rows=4))
    assert len(chunks) == 2
    rows = list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r["seq"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert rows[3]["actor_name"] == "bob"
    assert rows[4]["outcome"] == "denied"
    assert json.loads(rows[0]["after"])["tags"] == ["a", "b"]
    assert rows[0]["ts"] == (T0 + timedelta(minutes=1)).isoformat()


def test_rows_that_are_not_entries_come_as_unreadable_to_verify(engine: Engine) -> None:
    seed(engine)
    sql(engine, "UPDATE audit_log SET outcome = 'weird' WHERE seq = 3")
    items = list(iter_for_verify(engine, up_to_seq=6, chunk_rows=2))
    assert [i.seq for i in items] == [1, 2, 3, 4, 5, 6]
    assert isinstance(items[2], Unreadable)
    assert [i.seq for i in iter_for_verify(engine, up_to_seq=4, after_seq=1)] == [2, 3, 4]
