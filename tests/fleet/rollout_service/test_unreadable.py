"""A rollout whose stored state does not parse is listed, refused with a clear error and
can be aborted, which frees its devices; on SQLite and PostgreSQL.

The bad row is written past the API, as an older schema or a hand edit leaves it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from edgefleet.fleet.rollout_service import store, views
from edgefleet.fleet.rollouts.model import (
    OperatorCommand,
    RolloutCommandError,
    RolloutOverlapError,
    RolloutStatus,
    UnreadableRolloutError,
)
from edgefleet.fleet.store.engine import make_engine
from edgefleet.fleet.store.migrate import create_all
from edgefleet.fleet.store.rollout_tables import Rollout
from tests.fleet.rollout_service.rows import create_one_wave_rollout, register_devices
from tests.fleet.rollout_service.test_isolation import (
    RecordingAlerts,
    RecordingBroker,
    _orchestrator,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
GOOD, BAD = ["g0", "g1"], ["b0", "b1"]
_ROLLOUT: Any = Rollout.__table__  # type: ignore[attr-defined]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    create_all(engine)
    register_devices(engine, GOOD + BAD, T0)
    yield engine
    engine.dispose()


def _store_state(engine: Engine, rollout_id: str, state: Any, status: str | None = None) -> None:
    """Store ``state`` as the rollout's JSON (and ``status`` in its column), a new version."""
    values: dict[str, Any] = {"state": state, "version": _ROLLOUT.c.version + 1}
    if status is not None:
        values["status"] = status
    with engine.begin() as conn:
        conn.execute(update(_ROLLOUT).where(_ROLLOUT.c.id == rollout_id).values(**values))


def _garbage_naming_targets(engine: Engine, rollout_id: str) -> Any:
    with engine.connect() as conn:
        raw = conn.execute(select(_ROLLOUT.c.state).where(_ROLLOUT.c.id == rollout_id)).scalar()
    return {"garbage": True, "targets": raw["targets"]}


def _status(engine: Engine, rollout_id: str) -> str:
    with engine.connect() as conn:
        found: str = conn.execute(
            select(_ROLLOUT.c.status).where(_ROLLOUT.c.id == rollout_id)
        ).scalar_one()
    return found


@pytest.mark.parametrize("garbage", ["object naming its targets", ["not", "a", "state"]])
def test_an_unreadable_rollout_is_listed_refused_and_aborted_freeing_its_devices(
    engine: Engine, garbage: Any
) -> None:
    create_one_wave_rollout(engine, "bad", BAD, T0 - timedelta(seconds=1), created_by="alice")
    create_one_wave_rollout(engine, "good", GOOD, T0, created_by="alice")
    if garbage == "object naming its targets":
        garbage = _garbage_naming_targets(engine, "bad")
    _store_state(engine, "bad", garbage)

    found, total = store.list_rollouts(engine)
    assert total == 2
    summaries = {s.id: s for s in map(views.summary, found)}
    assert summaries["good"].targets == len(GOOD)
    bad = summaries["bad"]
    assert (bad.status, bad.created_by, bad.created_at) == (
        RolloutStatus.CREATED,
        "alice",
        T0 - timedelta(seconds=1),
    )
    assert (bad.model, bad.version, bad.targets, bad.wave_sizes) == ("wine", "1.1.0", 0, [])
    assert bad.status_reason is not None
    assert bad.status_reason.startswith("stored state is unreadable: ValidationError: ")
    assert len(bad.status_reason) <= 40 + store.MAX_PARSE_ERROR_CHARS

    with engine.connect() as conn, pytest.raises(UnreadableRolloutError, match="abort it") as e:
        store.load(conn, "bad")
    assert e.value.code == "rollout_unreadable"
    with pytest.raises(UnreadableRolloutError):
        store.command(engine, "bad", OperatorCommand.PAUSE, by="bob", now=T0)
    if isinstance(garbage, dict):  # its JSON still names its devices: they stay held
        with pytest.raises(RolloutOverlapError, match="bad"):
            create_one_wave_rollout(
                engine, "again", BAD, T0 + timedelta(seconds=1), created_by="alice"
            )

    aborted = store.abort(engine, "bad", by="bob", now=T0 + timedelta(seconds=2))

    assert isinstance(aborted, store.UnreadableRollout)
    assert aborted.status == _status(engine, "bad") == "aborted"
    shown = views.summary(aborted)
    assert shown.status is RolloutStatus.ABORTED
    assert shown.status_reason is not None
    assert "stored state is unreadable" in shown.status_reason
    lines = store.history(engine, "bad")
    assert [(line.kind, line.message) for line in lines[-2:]] == [
        ("command", "abort by bob"),
        ("aborted", shown.status_reason),
    ]
    # Repeating it is a no-op, as for any rollout.
    again = store.abort(engine, "bad", by="bob", now=T0 + timedelta(seconds=3))
    assert again.version == aborted.version
    assert len(store.history(engine, "bad")) == len(lines)

    create_one_wave_rollout(engine, "again", BAD, T0 + timedelta(seconds=4), created_by="alice")
    with engine.connect() as conn:
        assert set(store.load(conn, "again").state.targets) == set(BAD)
        assert store.load(conn, "good").state.status is RolloutStatus.CREATED


def test_abort_still_aborts_a_readable_rollout(engine: Engine) -> None:
    create_one_wave_rollout(engine, "good", GOOD, T0, created_by="alice")
    aborted = store.abort(engine, "good", by="bob", now=T0 + timedelta(seconds=1))
    assert isinstance(aborted, store.StoredRollout)
    assert aborted.state.status is RolloutStatus.ABORTED


def test_a_finished_unreadable_rollout_cannot_be_aborted(engine: Engine) -> None:
    create_one_wave_rollout(engine, "done", GOOD, T0, created_by="alice")
    _store_state(engine, "done", {"garbage": True}, status="completed")
    with pytest.raises(RolloutCommandError, match="it is completed"):
        store.abort(engine, "done", by="bob", now=T0 + timedelta(seconds=1))
    assert _status(engine, "done") == "completed"


def test_a_garbage_object_is_paused_and_alerted_once_not_at_every_tick(engine: Engine) -> None:
    """Its parse error quoted the stored JSON, pause reason included, so each tick saw a
    new error and paused and alerted again."""
    create_one_wave_rollout(engine, "bad", BAD, T0 - timedelta(seconds=1), created_by="alice")
    _store_state(engine, "bad", _garbage_naming_targets(engine, "bad"))
    alerts, broker = RecordingAlerts(), RecordingBroker()
    orchestrator = _orchestrator(engine, alerts, broker)

    for _ in range(4):
        orchestrator.tick()

    assert _status(engine, "bad") == "paused"
    assert len(store.history(engine, "bad", kinds=["paused"])) == 1
    assert len(alerts.sent) == 1
    assert "input_value" not in alerts.sent[0].message
