"""Appending: one contiguous chain, in the caller's transaction, even from two replicas."""

from __future__ import annotations

import multiprocessing
from datetime import timedelta

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from edgefleet.fleet.audit.chain import recomputed_hash
from edgefleet.fleet.audit.check import verify_database
from edgefleet.fleet.audit.entry import SYSTEM_ACTOR, AuditObject, AuditRecord
from edgefleet.fleet.audit.log import AuditHeadMissingError, append
from edgefleet.fleet.audit.read import iter_entries, read_head
from edgefleet.fleet.audit.verify import ChainHead
from edgefleet.fleet.store.engine import make_engine
from edgefleet.fleet.store.governance_tables import UserRow
from tests.fleet.audit.conftest import BOB, T0, fill, record, sql


def test_appends_number_entries_and_move_the_head(engine: Engine) -> None:
    with Session(engine) as session:
        seqs = [append(session, record(n), now=T0 + timedelta(seconds=n)) for n in (1, 2, 3)]
        session.commit()
    assert seqs == [1, 2, 3]
    entries = list(iter_entries(engine))
    assert [e.seq for e in entries] == [1, 2, 3]
    assert all(recomputed_hash(e) == e.hash for e in entries)
    assert read_head(engine) == ChainHead(3, entries[-1].hash)


def test_numbers_read_back_from_the_store_hash_as_appended(engine: Engine) -> None:
    # JSONB returns 1e16 as the integer 10000000000000000 and -0.0 as 0.0.
    fill(engine, 2)
    entry = next(iter(iter_entries(engine)))
    assert entry.after is not None
    assert entry.after["big"] == 1e16
    assert recomputed_hash(entry) == entry.hash
    assert verify_database(engine).ok


def test_an_entry_rolls_back_with_its_change(engine: Engine) -> None:
    fill(engine, 1)
    with Session(engine) as session:
        session.add(UserRow(id="u-x", name="x", kind="user"))
        append(session, record(2))
        session.rollback()
    assert read_head(engine) is not None
    assert read_head(engine).seq == 1  # type: ignore[union-attr]
    assert [e.seq for e in iter_entries(engine)] == [1]
    fill(engine, 1, start=2)  # the next append takes seq 2: no gap was left
    assert verify_database(engine).ok


def test_a_number_without_a_json_form_is_kept_as_null(engine: Engine) -> None:
    with Session(engine) as session:
        append(session, record(1).model_copy(update={"after": {"x": float("nan")}}))
        session.commit()
    assert next(iter(iter_entries(engine))).after == {"x": None}
    assert verify_database(engine).ok


def test_append_without_the_head_row_says_so(sqlite_engine: Engine) -> None:
    sql(sqlite_engine, "DELETE FROM audit_head")
    with Session(sqlite_engine) as session, pytest.raises(AuditHeadMissingError):
        append(session, record(1))


def _replica(url: str, name: str, count: int, barrier: object) -> None:
    """One replica: its own engine, ``count`` appends, each in its own transaction."""
    engine = make_engine(url)
    barrier.wait()  # type: ignore[attr-defined]
    for n in range(count):
        with Session(engine) as session:
            session.add(UserRow(id=f"{name}-{n}", name=f"{name}-{n}", kind="user"))
            append(
                session,
                AuditRecord(
                    actor=SYSTEM_ACTOR if name == "a" else BOB.model_copy(),
                    action="user.create",
                    object=AuditObject(kind="user", id=f"{name}-{n}"),
                    after={"replica": name, "n": n},
                ),
            )
            session.commit()
    engine.dispose()


def test_two_replicas_appending_at_once_keep_one_unbroken_chain(
    engine: Engine, database_url: str
) -> None:
    count = 40
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    processes = [
        context.Process(target=_replica, args=(database_url, name, count, barrier))
        for name in ("a", "b")
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    entries = list(iter_entries(engine))
    assert [e.seq for e in entries] == list(range(1, 2 * count + 1))
    replicas = [e.after["replica"] for e in entries if e.after]
    assert replicas.count("a") == replicas.count("b") == count
    # Each replica's own entries stay in its order within the one chain.
    for name in ("a", "b"):
        assert [e.after["n"] for e in entries if e.after and e.after["replica"] == name] == list(
            range(count)
        )
    result = verify_database(engine)
    assert result.ok, result.describe()
    assert result.count == 2 * count
