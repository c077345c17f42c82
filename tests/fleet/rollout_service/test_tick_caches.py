"""What the orchestrator and the API keep between ticks and requests gives what a fresh
read gives, before and after the devices, their events and the rollout change, and the
lease is renewed only as often as it must be; on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update
from sqlmodel import Session

from edgefleet.fleet.api.rollouts import DetailCache, build_detail
from edgefleet.fleet.rollout_service import reads, store, views
from edgefleet.fleet.rollout_service.observe import EventCache, observe
from edgefleet.fleet.rollout_service.orchestrator import LEASE_NAME, Orchestrator
from edgefleet.fleet.rollouts.model import (
    ModelTarget,
    OperatorCommand,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    Selector,
    Wave,
)
from edgefleet.fleet.rollouts.policy import decide
from edgefleet.fleet.store.engine import make_engine
from edgefleet.fleet.store.migrate import create_all
from edgefleet.fleet.store.rollout_tables import Lease, Rollout
from edgefleet.fleet.store.tables import DesiredStateRow, Device, EventRow
from tests.fleet.rollout_service.rows import register_devices

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DEVICES = [f"d{i}" for i in range(6)]


def _spec() -> RolloutSpec:
    return RolloutSpec(
        model=ModelTarget(name="wine", version="1.1.0"),
        selector=Selector(),
        waves=(Wave(count=2), Wave(fraction=1.0)),
    )


def _devices(engine: Engine) -> None:
    register_devices(engine, DEVICES, T0)


def _events(engine: Engine, *events: tuple[str, int, str, str, datetime]) -> None:
    """Store events (device, seq, kind, rollout, received at) as the ingester would."""
    with Session(engine) as session:
        for device_id, seq, kind, rollout_id, received_at in events:
            session.add(
                EventRow(
                    device_id=device_id,
                    seq=seq,
                    ts=received_at,
                    received_at=received_at,
                    kind=kind,
                    model_name="wine",
                    model_version="1.1.0",
                    rollout_id=rollout_id,
                )
            )
        session.commit()


def _set_device(engine: Engine, device_id: str, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(Device.__table__)  # type: ignore[attr-defined]
            .where(Device.__table__.c.device_id == device_id)  # type: ignore[attr-defined]
            .values(**values)
        )


def test_cached_observations_equal_a_full_read_as_devices_and_events_change(
    engine: Engine,
) -> None:
    _devices(engine)
    state = store.create(engine, "ro-c1", _spec(), created_by="alice", now=T0).state
    mono = [0.0]
    cache = EventCache(overlap_s=5, full_every_s=60, clock=lambda: mono[0])

    def both(at: datetime) -> dict[str, Any]:
        with engine.connect() as conn:
            cached = observe(conn, state, now=at, offline_after_s=120, cache=cache)
            full = observe(conn, state, now=at, offline_after_s=120)
        assert cached == full
        return cached

    now = T0 + timedelta(seconds=30)
    both(now)
    # Events of this rollout, and of another one by the same devices in the same window
    # (which must not leak into this one's observations).
    _events(
        engine,
        ("d0", 2, "downloading", "ro-c1", T0 + timedelta(seconds=10)),
        ("d1", 2, "downloading", "ro-c1", T0 + timedelta(seconds=10)),
        ("d0", 3, "failed", "ro-other", T0 + timedelta(seconds=11)),
    )
    seen = both(now)
    assert seen["d0"].last_event_kind == "downloading"
    _events(
        engine,
        ("d0", 4, "committed", "ro-c1", T0 + timedelta(seconds=12)),
        ("d1", 5, "failed", "ro-other", T0 + timedelta(seconds=12)),
        ("d1", 4, "activated", "ro-c1", T0 + timedelta(seconds=9)),  # committed late
    )
    seen = both(now)
    assert (seen["d0"].current_version, seen["d1"].last_event_kind) == ("1.1.0", "activated")
    # The registry changes: a last will, a device silent past the offline limit, a birth
    # that shows another model; only some columns of a row change each time.
    _set_device(engine, "d2", online=False)
    _set_device(engine, "d3", last_seen=T0 + timedelta(seconds=100))
    seen = both(now + timedelta(seconds=120))
    assert [seen[d].online for d in ("d2", "d3", "d4")] == [False, True, False]
    _set_device(engine, "d0", model_version="1.0.0", last_state_seq=9)
    seen = both(now + timedelta(seconds=120))
    assert seen["d0"].current_version == "1.0.0"
    # An event stored long after its receive time: SQLite numbers rows in commit order,
    # so it is read at once there; elsewhere it waits for the next full listing.
    _events(engine, ("d1", 6, "rolled_back", "ro-c1", T0))
    with engine.connect() as conn:
        late = observe(conn, state, now=now, offline_after_s=120, cache=cache)
    sqlite = engine.dialect.name == "sqlite"
    assert late["d1"].last_event_kind == ("rolled_back" if sqlite else "activated")
    mono[0] = 61.0
    assert both(now)["d1"].last_event_kind == "rolled_back"
    if sqlite:
        # Rows renumbered below what was read (as VACUUM may do) wait for a full listing.
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO device_event (rowid, device_id, seq, ts, received_at, kind, "
                "rollout_id, detail) VALUES (-1, 'd2', 7, ?, ?, 'failed', 'ro-c1', '{}')",
                (at := T0.replace(tzinfo=None).isoformat(" ", "microseconds"), at),
            )
        with engine.connect() as conn:
            missed = observe(conn, state, now=now, offline_after_s=120, cache=cache)
        assert missed["d2"].last_event_kind is None
        mono[0] = 122.0
        assert both(now)["d2"].last_event_kind == "failed"


def test_a_committed_state_is_loaded_as_saved_without_parsing_it_again(engine: Engine) -> None:
    _devices(engine)
    created = store.create(engine, "ro-c2", _spec(), created_by="alice", now=T0)
    started = decide(created.state, {}, None, T0 + timedelta(seconds=1)).state
    with engine.begin() as conn:
        saved = store.save(conn, created, started, [])
    store.committed(engine, saved)
    with engine.connect() as conn:
        loaded = store.load(conn, "ro-c2")
        raw = conn.execute(
            select(Rollout.__table__.c.state)  # type: ignore[attr-defined]
        ).scalar_one()
    assert loaded.version == saved.version
    assert loaded.state is saved.state
    # What the save wrote (pydantic's JSON) reads back as the same state, and as the
    # same JSON value the column's own serialiser writes.
    assert RolloutState.model_validate(raw) == saved.state
    assert raw == saved.state.model_dump(mode="json")


def test_the_state_cache_keeps_databases_apart(engine: Engine, tmp_path: Path) -> None:
    other = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
    create_all(other)
    try:
        for bind in (engine, other):
            _devices(bind)
        here = store.create(engine, "ro-same", _spec(), created_by="alice", now=T0)
        there = store.create(other, "ro-same", _spec(), created_by="bob", now=T0)
        paused = store.command(other, "ro-same", OperatorCommand.PAUSE, by="bob", now=T0)
        started = decide(here.state, {}, None, T0 + timedelta(seconds=1)).state
        with engine.begin() as conn:
            saved = store.save(conn, here, started, [])
        store.committed(engine, saved)
        assert saved.version == paused.version == there.version + 1
        with engine.connect() as conn:
            assert store.load(conn, "ro-same").state.status is RolloutStatus.RUNNING
        with other.connect() as conn:
            assert store.load(conn, "ro-same").state.status is RolloutStatus.PAUSED
    finally:
        other.dispose()


def test_lines_shown_with_the_state_are_written_only_with_a_new_version(
    engine: Engine,
) -> None:
    _devices(engine)
    store.create(engine, "ro-c3", _spec(), created_by="alice", now=T0)
    for line in (
        store.HistoryLine(kind="note", ts=T0, message="about the rollout"),
        store.HistoryLine(kind="gate_decision", ts=T0, device_id="d0", wave=0),
    ):
        with engine.begin() as conn, pytest.raises(ValueError, match="with a new version"):
            store.append(conn, "ro-c3", [line])
    with engine.begin() as conn:
        store.append(
            conn, "ro-c3", [store.HistoryLine(kind="desired_published", ts=T0, device_id="d0")]
        )
    assert [r.kind for r in store.history(engine, "ro-c3")] == ["created", "desired_published"]


def _detail_read_twice(engine: Engine, stored: store.StoredRollout) -> views.RolloutDetail:
    """The detail as built before `build_detail` read the history once for both parts."""
    gates = store.history(engine, stored.id, kinds=["gate_decision"], limit=10_000)
    timeline = store.history(engine, stored.id, rollout_level=True, limit=10_000)
    return views.detail(stored, gates, timeline)


def test_a_cached_rollout_detail_equals_a_fresh_one_through_ticks_and_commands(
    engine: Engine,
) -> None:
    _devices(engine)
    cache = DetailCache(size=2)
    stored = store.create(engine, "ro-c4", _spec(), created_by="alice", now=T0)
    first = cache.get(engine, stored)
    assert first == build_detail(engine, stored)
    assert cache.get(engine, stored) is first  # a hit: nothing read again
    now = T0
    for step in range(4):
        now += timedelta(seconds=5)
        with engine.connect() as conn:
            current = store.load(conn, "ro-c4")
            seen = observe(conn, current.state, now=now, offline_after_s=600)
        decision = decide(current.state, seen, None, now)
        with engine.begin() as conn:
            saved = store.save(conn, current, decision.state, store.decision_lines(decision, now))
        store.committed(engine, saved)
        _events(
            engine,
            *(
                (d, 10 + step, "healthy", "ro-c4", now)
                for d, r in decision.state.devices.items()
                if r.assigned_at is not None
            ),
        )
        with engine.connect() as conn:
            loaded = store.load(conn, "ro-c4")
        assert cache.get(engine, loaded) == build_detail(engine, loaded)
        assert build_detail(engine, loaded) == _detail_read_twice(engine, loaded)
    assert loaded.state.status is RolloutStatus.COMPLETED
    rolling_back = store.command(engine, "ro-c4", OperatorCommand.ROLLBACK, by="bob", now=now)
    detail = cache.get(engine, rolling_back)
    assert detail == build_detail(engine, rolling_back)
    assert detail.status is RolloutStatus.ROLLING_BACK
    assert [d.passed for d in detail.gate_decisions] == [True, True]
    assert [line.kind for line in detail.timeline][-2:] == ["command", "rolling_back"]


def test_the_driver_reads_return_what_the_plain_queries_return(engine: Engine) -> None:
    _devices(engine)
    _set_device(engine, "d1", online=False)
    _set_device(engine, "d2", last_seen=None)
    _set_device(engine, "d3", last_seen=T0 - timedelta(seconds=1), model_name=None)
    _events(
        engine,
        *(
            (d, 2 + i, "downloading", "ro-r", T0 + timedelta(seconds=i))
            for i, d in enumerate(DEVICES)
        ),
        ("d0", 9, "info", "ro-r", T0 + timedelta(microseconds=1)),
        ("d0", 10, "failed", "ro-other", T0),
    )
    device = Device.__table__  # type: ignore[attr-defined]
    event = EventRow.__table__  # type: ignore[attr-defined]
    wanted = [*DEVICES, "unknown"]
    with engine.connect() as conn:
        rows = reads.device_rows(conn, wanted, T0)
        plain = conn.execute(select(device).where(device.c.device_id.in_(wanted))).all()
        expected = {
            r.device_id: reads.DeviceRow(
                r.device_id,
                bool(r.online and (r.last_seen is None or r.last_seen >= T0)),
                r.model_name,
                r.model_version,
                r.model_sha256,
                r.last_state_seq,
            )
            for r in plain
        }
        assert rows == expected
        assert [rows[d].online for d in ("d0", "d1", "d2", "d3")] == [True, False, True, False]
        since = T0 + timedelta(microseconds=1)
        keys = reads.event_keys(conn, "ro-r", since)
        plain_keys = conn.execute(
            select(event.c.device_id, event.c.seq).where(
                event.c.rollout_id == "ro-r", event.c.received_at >= since
            )
        ).all()
        assert sorted(keys) == sorted(tuple(k) for k in plain_keys)
        assert ("d0", 9) in keys
        assert ("d0", 2) not in keys  # received a microsecond before ``since``
        assert len(reads.event_keys(conn, "ro-r", None)) == len(DEVICES) + 1
        columns = [getattr(event.c, n) for n in reads.EventRead._fields]
        read = reads.events(conn, [*keys, ("d0", 10), ("nobody", 1)])
        plain_events = conn.execute(select(*columns).where(event.c.device_id.in_(wanted))).all()
        by_key = {(e.device_id, e.seq): tuple(e) for e in plain_events}
        assert sorted(read) == sorted(by_key[k] for k in [*keys, ("d0", 10)])
        assert all(e.received_at.tzinfo is not None for e in read)
        last = reads.last_insert(conn)
        if engine.dialect.name == "sqlite":
            ours = [v for k, v in by_key.items() if k != ("d0", 10)]
            inserted, upto = reads.events_inserted_after(conn, "ro-r", 0)
            assert sorted(inserted) == sorted(ours)
            assert last is not None
            assert upto < last  # the last row stored is the other rollout's
            assert reads.events_inserted_after(conn, "ro-r", upto) == ([], upto)
        else:
            assert last is None  # no commit order to rely on
    with Session(engine) as session:
        for device_id, rollout_id, rollback in (
            ("d0", "ro-r", False),
            ("d1", "ro-r", True),
            ("d2", "ro-other", False),
        ):
            session.add(
                DesiredStateRow(
                    device_id=device_id,
                    seq=3,
                    body={"seq": 3, "rollback": rollback, "note": "é"},
                    envelope={},
                    rollout_id=rollout_id,
                    updated_at=T0 + timedelta(seconds=3),
                )
            )
        session.commit()
    desired = DesiredStateRow.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        found = reads.desired_states(conn, "ro-r", wanted)
        plain_desired = conn.execute(
            select(desired.c.device_id, desired.c.updated_at, desired.c.body).where(
                desired.c.rollout_id == "ro-r", desired.c.device_id.in_(wanted)
            )
        ).all()
    assert sorted(found) == sorted(tuple(r) for r in plain_desired)
    assert [(d.device_id, d.body["rollback"]) for d in sorted(found)] == [
        ("d0", False),
        ("d1", True),
    ]
    assert found[0].updated_at == T0 + timedelta(seconds=3)


def test_the_holder_renews_the_lease_a_third_of_the_way_through_and_others_keep_trying(
    engine: Engine,
) -> None:
    clock = [T0]
    lease = Lease.__table__  # type: ignore[attr-defined]

    def expires() -> datetime:
        with engine.connect() as conn:
            found: datetime = conn.execute(
                select(lease.c.expires_at).where(lease.c.name == LEASE_NAME)
            ).scalar_one()
        return found

    def orchestrator(holder: str) -> Orchestrator:
        # No rollout runs here, so the director and the registry are never called.
        return Orchestrator(
            engine,
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            holder=holder,
            tick_interval_s=0.1,
            lease_s=3.0,
            clock=lambda: clock[0],
        )

    holder, other = orchestrator("a"), orchestrator("b")
    holder.tick()
    assert holder.lease.held
    assert expires() == T0 + timedelta(seconds=3)
    clock[0] += timedelta(seconds=0.1)
    holder.tick()  # well within the first third of the lease: no write
    assert expires() == T0 + timedelta(seconds=3)
    assert other.tick() == 0
    assert not other.lease.held
    time.sleep(1.05)  # a third of the lease (1 s) has passed
    holder.tick()
    assert expires() == clock[0] + timedelta(seconds=3)
    clock[0] += timedelta(seconds=4)  # the holder stopped: its lease lapsed
    other.tick()  # the other replica still tries at every tick, and takes it now
    assert other.lease.held
