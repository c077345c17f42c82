"""Fixtures of the audit tests: a real store (SQLite and PostgreSQL) with entries in it,
and raw SQL to tamper with it the way someone with database access would."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session

from edgefleet.fleet.audit.entry import AuditActor, AuditObject, AuditOutcome, AuditRecord
from edgefleet.fleet.audit.log import append
from edgefleet.fleet.store.engine import make_engine
from edgefleet.fleet.store.migrate import create_all

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
ALICE = AuditActor(kind="user", id="u-alice", name="alice", token_prefix="eft_aaaaaaaa")
BOB = AuditActor(kind="user", id="u-bob", name="bob")


def record(n: int, actor: AuditActor = ALICE, action: str = "rollout.create") -> AuditRecord:
    """A record of the ``n``-th change, with a before and after that differ per ``n``."""
    return AuditRecord(
        actor=actor,
        action=action,
        object=AuditObject(kind="rollout", id=f"r-{n}"),
        outcome=AuditOutcome.OK,
        request_id=f"req-{n}",
        source="10.0.0.1",
        before={"n": n - 1, "fraction": 0.25},
        after={"n": n, "fraction": 1.0, "big": 1e16, "zero": -0.0, "tags": ["a", "b"]},
    )


def fill(engine: Engine, count: int, *, start: int = 1) -> None:
    """Append ``count`` entries, one transaction each, a minute apart from `T0`."""
    for n in range(start, start + count):
        with Session(engine) as session:
            append(session, record(n), now=T0 + timedelta(minutes=n))
            session.commit()


def sql(engine: Engine, statement: str, **params: object) -> None:
    """Run raw SQL in its own transaction: tampering that goes around the code."""
    with engine.begin() as connection:
        connection.execute(text(statement), params)


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """A fresh SQLite store, for tests the engine does not matter to."""
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    create_all(engine)
    yield engine
    engine.dispose()
