"""The lease, the rollout store and the observations, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

import edgefleet.fleet.store.rollout_tables  # noqa: F401  (registers the rollout tables)
from edgefleet.fleet.ingest.rows import EVENT_COLUMNS, event_row
from edgefleet.fleet.rollout_service import store
from edgefleet.fleet.rollout_service.lease import Lease, current_holder
from edgefleet.fleet.rollout_service.observe import EventCache, observe, wave_metrics
from edgefleet.fleet.rollouts.model import (
    DeviceRolloutState,
    Gate,
    ModelTarget,
    RolloutSpec,
    RolloutStatus,
    Selector,
    Wave,
)
from edgefleet.fleet.rollouts.policy import decide
from edgefleet.fleet.store.tables import Device, EventRow, TelemetryRow
from edgefleet.shared.messages import EventKind, EventMessage, ModelRef

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def test_lease_has_one_holder_until_it_lapses_or_is_released(engine: Engine) -> None:
    clock = Clock()
    a = Lease(engine, "orch", "a", duration_s=5, clock=clock)
    b = Lease(engine, "orch", "b", duration_s=5, clock=clock)
    assert a.try_acquire()
    assert not b.try_acquire()
    clock.now += timedelta(seconds=4)
    assert a.try_acquire()  # renewed: lapses at +9 s now
    clock.now += timedelta(seconds=4)
    assert not b.try_acquire()
    with engine.connect() as conn:
        assert a.holds(conn)
        assert not b.holds(conn)
    clock.now += timedelta(seconds=2)  # a stopped renewing 6 s ago
    assert b.try_acquire()
    assert not a.try_acquire()
    assert current_holder(engine, "orch", clock.now) == "b"
    b.release()
    assert current_holder(engine, "orch", clock.now) is None
    assert a.try_acquire()


def test_racing_replicas_never_both_take_a_lapsed_lease(engine: Engine) -> None:
    clock = Clock()
    leases = [Lease(engine, "race", f"r{i}", duration_s=5, clock=clock) for i in range(6)]
    leases[0].try_acquire()
    clock.now += timedelta(seconds=10)
    barrier = threading.Barrier(len(leases) - 1)
    won: list[str] = []

    def race(lease: Lease) -> None:
        barrier.wait()
        if lease.try_acquire():
            won.append(lease.holder)

    threads = [threading.Thread(target=race, args=(lease,)) for lease in leases[1:]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1
    assert current_holder(engine, "race", clock.now) == won[0]


def _spec(waves: tuple[Wave, ...] = (Wave(fraction=1.0),)) -> RolloutSpec:
    return RolloutSpec(
        model=ModelTarget(name="wine", version="1.1.0"), selector=Selector(), waves=waves
    )


def _device(session: Session, device_id: str, version: str = "1.0.0", seq: int = 1) -> None:
    session.add(
        Device(
            device_id=device_id,
            online=True,
            first_seen=T0,
            last_seen=T0,
            model_name="wine",
            model_version=version,
            last_state_seq=seq,
        )
    )


def _event(device_id: str, seq: int, kind: str, version: str, rollout_id: str) -> EventRow:
    return EventRow(
        device_id=device_id,
        seq=seq,
        ts=T0,
        received_at=T0 + timedelta(seconds=seq),
        kind=kind,
        model_name=f"wine-{version}.efpkg",
        model_version=version,
        desired_seq=7,
        rollout_id=rollout_id,
    )


def test_state_round_trips_and_a_stale_write_is_refused(engine: Engine) -> None:
    with Session(engine) as session:
        _device(session, "d1")
        _device(session, "d2")
        session.commit()
    created = store.create(engine, "ro-1", _spec(), created_by="alice", now=T0)
    with engine.connect() as conn:
        loaded = store.load(conn, "ro-1")
    assert loaded.state == created.state
    assert loaded.version == 1
    started = decide(loaded.state, {}, None, T0 + timedelta(seconds=1)).state
    assert started.status is RolloutStatus.RUNNING
    with engine.begin() as conn:
        saved = store.save(conn, loaded, started, [])
    assert saved.version == 2
    with engine.begin() as conn, pytest.raises(store.StaleRolloutError):
        store.save(conn, loaded, started, [])  # written from version 1 again
    with engine.connect() as conn:
        again = store.load(conn, "ro-1")
    assert again.state == started
    assert again.version == 2
    kinds = [row.kind for row in store.history(engine, "ro-1")]
    assert kinds == ["created"]


def test_observations_follow_the_devices_events_in_seq_order(engine: Engine) -> None:
    with Session(engine) as session:
        for d in ("ok", "bad", "rebooted", "silent"):
            _device(session, d)
        session.add_all(
            [
                _event("ok", 2, "downloading", "1.1.0", "ro-2"),
                _event("ok", 3, "info", "1.1.0", "ro-2"),
                _event("ok", 4, "committed", "1.1.0", "ro-2"),
                _event("bad", 2, "activated", "1.1.0", "ro-2"),
                _event("bad", 3, "failed", "1.1.0", "ro-2"),
                _event("bad", 4, "rolled_back", "1.1.0", "ro-2"),
                _event("rebooted", 2, "committed", "1.1.0", "ro-2"),
                _event("ok", 9, "committed", "1.1.0", "another-rollout"),
            ]
        )
        session.commit()
    with Session(engine) as session:
        rebooted = session.get(Device, "rebooted")
        assert rebooted is not None
        # a birth state after the commit, showing the version the device now runs
        rebooted.model_version, rebooted.last_state_seq = "1.1.0", 3
        session.add(rebooted)
        session.commit()
    state = store.create(engine, "ro-2", _spec(), created_by="alice", now=T0).state
    with engine.connect() as conn:
        seen = observe(conn, state, now=T0 + timedelta(seconds=30), offline_after_s=60)
    ok, bad, rebooted_obs, silent = (seen[d] for d in ("ok", "bad", "rebooted", "silent"))
    assert (ok.current_version, ok.previous_version, ok.last_event_kind) == (
        "1.1.0",
        "1.0.0",
        "committed",
    )
    assert ok.last_event_at == T0 + timedelta(seconds=4)  # the fleet's receive time
    assert (bad.current_version, bad.last_event_kind) == ("1.0.0", "rolled_back")
    assert rebooted_obs.current_version == "1.1.0"
    assert (silent.current_version, silent.last_event_kind) == ("1.0.0", None)
    assert all(o.online for o in seen.values())
    with engine.connect() as conn:
        later = observe(conn, state, now=T0 + timedelta(seconds=120), offline_after_s=60)
    assert not any(o.online for o in later.values())

    decided = decide(state, seen, None, T0 + timedelta(seconds=1)).state
    states = {d: r.state for d, r in decided.devices.items()}
    assert states["ok"] is DeviceRolloutState.HEALTHY
    assert states["bad"] is DeviceRolloutState.FAILED


def test_an_event_cache_reads_only_new_events_and_agrees_with_a_full_read(
    engine: Engine,
) -> None:
    with Session(engine) as session:
        for d in ("a", "b"):
            _device(session, d)
        session.add_all(
            [
                _event("a", 20, "downloading", "1.1.0", "ro-3"),
                _event("b", 21, "downloading", "1.1.0", "ro-3"),
            ]
        )
        session.commit()
    state = store.create(engine, "ro-3", _spec(), created_by="alice", now=T0).state
    mono = [0.0]
    cache = EventCache(overlap_s=5, full_every_s=60, clock=lambda: mono[0])

    def both(at: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
        with engine.connect() as conn:
            cached = observe(conn, state, now=at, offline_after_s=600, cache=cache)
            full = observe(conn, state, now=at, offline_after_s=600)
        return cached, full

    now = T0 + timedelta(seconds=30)
    cached, full = both(now)
    assert cached == full
    assert cached["a"].last_event_kind is EventKind.DOWNLOADING
    with Session(engine) as session:
        # "a" commits; "b"'s commit was received earlier (within the overlap) but its
        # batch is written only now; a stale row far older than the overlap too.
        session.add_all(
            [
                _event("a", 30, "committed", "1.1.0", "ro-3"),
                _event("b", 27, "committed", "1.1.0", "ro-3"),
                _event("b", 5, "info", "1.1.0", "ro-3"),
            ]
        )
        session.commit()
    cached, full = both(now)
    assert cached == full
    assert [cached[d].current_version for d in ("a", "b")] == ["1.1.0", "1.1.0"]
    with Session(engine) as session:
        late = _event("a", 31, "rolled_back", "1.1.0", "ro-3")
        late.received_at = T0  # lagged far behind the newest event seen
        session.add(late)
        session.commit()
    cached, full = both(now)
    assert full["a"].last_event_kind is EventKind.ROLLED_BACK
    if engine.dialect.name == "sqlite":
        assert cached == full  # SQLite numbers rows in commit order: read at once
    else:
        assert cached["a"].last_event_kind is EventKind.COMMITTED  # missed, for now
    mono[0] = 61.0  # a full re-read repairs it
    cached, full = both(now)
    assert cached == full
    with Session(engine) as session:
        device = session.get(Device, "b")
        assert device is not None
        device.model_version, device.last_state_seq = "1.0.0", 40  # rebooted into 1.0.0
        session.add(device)
        session.commit()
    cached, full = both(now)
    assert cached == full
    assert cached["b"].current_version == "1.0.0"
    cache.retain([])
    cached, full = both(now)
    assert cached == full


def _telemetry(device_id: str, seq: int, version: str, errors: int, p95: float) -> TelemetryRow:
    return TelemetryRow(
        device_id=device_id,
        seq=seq,
        ts=T0,
        received_at=T0 + timedelta(seconds=seq),
        interval_s=10,
        inferences=100,
        errors=errors,
        inferences_total=100 * seq,
        errors_total=errors,
        latency_p95_ms=p95,
        cpu_percent=1,
        rss_bytes=1,
        disk_free_bytes=1,
        outbox_depth=0,
        model_name="wine",
        model_version=version,
    )


def test_wave_metrics_compare_the_new_version_with_the_one_it_replaced(engine: Engine) -> None:
    guarded = Wave(fraction=1.0, gate=Gate(max_error_rate_increase=0.01, min_metric_samples=100))
    with Session(engine) as session:
        _device(session, "m1")
        _device(session, "m2")
        session.commit()
    state = store.create(engine, "ro-3", _spec((guarded,)), created_by="a", now=T0).state
    with engine.connect() as conn:
        seen = observe(conn, state, now=T0, offline_after_s=60)
    state = decide(state, seen, None, T0 + timedelta(seconds=5)).state  # assigned at +5 s
    assert {r.from_version for r in state.devices.values()} == {"1.0.0"}
    with Session(engine) as session:
        session.add_all(
            [
                _telemetry("m1", 1, "1.0.0", errors=1, p95=10.0),
                _telemetry("m2", 2, "1.0.0", errors=1, p95=12.0),
                _telemetry("m1", 3, "1.0.0", errors=50, p95=99.0),  # before assignment
                _telemetry("m1", 10, "1.1.0", errors=5, p95=20.0),
                _telemetry("m2", 11, "1.1.0", errors=3, p95=30.0),
            ]
        )
        session.commit()
    with engine.connect() as conn:
        metrics = wave_metrics(conn, state)
    assert metrics is not None
    assert (metrics.candidate.version, metrics.candidate.inference_samples) == ("1.1.0", 200)
    assert metrics.candidate.error_rate == pytest.approx(0.04)
    assert metrics.candidate.latency_p95_ms == 30.0
    assert metrics.baseline is not None
    # the baseline looks back before the wave: all three 1.0.0 reports count
    assert metrics.baseline.version == "1.0.0"
    assert metrics.baseline.error_rate == pytest.approx(52 / 300)
    verdict = decide(state, {}, metrics, T0 + timedelta(seconds=30)).state
    assert verdict.status is RolloutStatus.RUNNING  # devices not healthy yet: gate waits


OLD_SHA, NEW_SHA = "aa" * 32, "bb" * 32


def test_an_old_shape_event_is_attributed_to_the_target_by_sha256(engine: Engine) -> None:
    # Agents before `ModelRef.target` named the TUF target in an event's ``name``; newer
    # ones name the manifest and add ``target``. Both carry the package's sha256.
    refs = {
        "old-agent": ModelRef(name="wine-1.1.0.efpkg", version="1.1.0", sha256=NEW_SHA),
        "new-agent": ModelRef(
            name="wine", version="1.1.0", sha256=NEW_SHA, target="wine-1.1.0.efpkg"
        ),
    }
    with Session(engine) as session:
        for device_id in refs:
            _device(session, device_id)
            session.get(Device, device_id).model_sha256 = OLD_SHA  # type: ignore[union-attr]
        session.commit()
        for device_id, ref in refs.items():
            for seq, kind in ((2, EventKind.DOWNLOADING), (3, EventKind.COMMITTED)):
                message = EventMessage(
                    device_id=device_id, seq=seq, ts=T0, kind=kind, model=ref, rollout_id="ro-s"
                )
                row = event_row(message, T0 + timedelta(seconds=seq))
                session.add(EventRow(**dict(zip(EVENT_COLUMNS, row, strict=True))))
        session.commit()
    target = ModelTarget(name="wine", version="1.1.0", sha256=NEW_SHA)
    spec = RolloutSpec(model=target, selector=Selector(), waves=(Wave(fraction=1.0),))
    state = store.create(engine, "ro-s", spec, created_by="alice", now=T0).state
    with engine.connect() as conn:
        seen = observe(conn, state, now=T0 + timedelta(seconds=30), offline_after_s=60)
    for device_id in refs:
        observation = seen[device_id]
        assert (observation.current_version, observation.previous_version) == ("1.1.0", "1.0.0")
        assert observation.last_event_kind is EventKind.COMMITTED


def test_a_birth_with_the_targets_sha256_runs_the_target(engine: Engine) -> None:
    with Session(engine) as session:
        _device(session, "born", version="1.1.0")
        session.get(Device, "born").model_sha256 = NEW_SHA  # type: ignore[union-attr]
        _device(session, "other", version="1.1.0")  # the same version, another package
        session.get(Device, "other").model_sha256 = OLD_SHA  # type: ignore[union-attr]
        _device(session, "stranger", version="1.0.0")
        session.get(Device, "stranger").model_name = "beer"  # type: ignore[union-attr]
        session.commit()
    target = ModelTarget(name="wine", version="1.1.0", sha256=NEW_SHA)
    spec = RolloutSpec(model=target, selector=Selector(), waves=(Wave(fraction=1.0),))
    state = store.create(engine, "ro-b", spec, created_by="alice", now=T0).state
    with engine.connect() as conn:
        seen = observe(conn, state, now=T0 + timedelta(seconds=30), offline_after_s=60)
    assert seen["born"].current_version == "1.1.0"
    assert seen["other"].current_version == "1.1.0"  # by manifest name and version
    assert seen["stranger"].current_version is None  # runs no version of wine
