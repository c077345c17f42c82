"""The reconciler's shell on a real database: which stored desired states it republishes.

The director and the watcher are replaced at the interfaces the reconciler defines
(`Republisher`, `RetainedSource`): the rows, the joins and the decisions are real.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlmodel import Session

from edgefleet.fleet.errors import FleetError, PublishError
from edgefleet.fleet.reconcile.policy import EMPTY, Reason, ReconcileRules
from edgefleet.fleet.reconcile.service import ReconcileMetrics, Reconciler
from edgefleet.fleet.store.tables import DesiredStateRow, Device, EventRow
from edgefleet.shared.signing.director import (
    DesiredBody,
    DesiredTarget,
    DirectorSignature,
    SignedDesiredState,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(seconds=400)
TARGET = "a" * 64
OLD = "b" * 64
RULES = ReconcileRules(after_s=300, in_flight_s=10, backoff_s=60, backoff_max_s=600, max_attempts=2)


class RecordingDirector:
    """Republishes into a list; ``fail`` makes the broker refuse."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.fail = False

    def republish_many(
        self, device_ids: list[str]
    ) -> Mapping[str, SignedDesiredState | FleetError]:
        self.calls.append(list(device_ids))
        if self.fail:
            return {d: PublishError("broker away") for d in device_ids}
        return {d: envelope(d) for d in device_ids}


class FixedRetained:
    """What the watcher would have seen, fixed by the test."""

    def __init__(self, observed: dict[str, int], *, settled: bool = True) -> None:
        self.seen = dict(observed)
        self.is_settled = settled

    def settled(self) -> bool:
        return self.is_settled

    def seconds_to_settle(self) -> float | None:
        return None

    def observed(self) -> dict[str, int]:
        return dict(self.seen)

    def prune(self, keep: Collection[str]) -> None:
        self.seen = {d: s for d, s in self.seen.items() if d in keep}


def body(device_id: str, seq: int = 5) -> DesiredBody:
    return DesiredBody(
        device_id=device_id,
        seq=seq,
        target=DesiredTarget(name="wine-1.1.0.efpkg", sha256=TARGET, length=10, version="1.1.0"),
        expires_at=T0 + timedelta(days=30),
        issued_at=T0,
    )


def envelope(device_id: str, seq: int = 5) -> SignedDesiredState:
    return SignedDesiredState(
        signed=body(device_id, seq), signatures=[DirectorSignature(keyid="k", sig="ab")]
    )


def store(
    engine: Engine,
    device_id: str,
    *,
    online: bool | None = True,
    active: str | None = OLD,
    event_seqs: tuple[int, ...] = (),
    event_kind: str = "rejected",
) -> None:
    """A device with desired seq 5; ``online`` None: never seen by the fleet."""
    with Session(engine) as session:
        envelope_ = envelope(device_id)
        session.add(
            DesiredStateRow(
                device_id=device_id,
                seq=5,
                body=envelope_.signed.model_dump(mode="json", by_alias=True),
                envelope=envelope_.to_dict(),
                updated_at=T0,
            )
        )
        if online is not None:
            session.add(
                Device(
                    device_id=device_id,
                    online=online,
                    first_seen=T0,
                    last_seen=NOW - timedelta(seconds=10),
                    model_sha256=active,
                    state_ts=T0,
                )
            )
        for i, desired_seq in enumerate(event_seqs):
            session.add(
                EventRow(
                    device_id=device_id,
                    seq=100 + i,
                    ts=T0,
                    received_at=T0,
                    kind=event_kind,
                    desired_seq=desired_seq,
                )
            )
        session.commit()


def reconciler(
    engine: Engine, director: RecordingDirector, retained: FixedRetained
) -> tuple[Reconciler, CollectorRegistry]:
    registry = CollectorRegistry()
    return (
        Reconciler(
            engine,
            director,
            retained,
            RULES,
            ReconcileMetrics(registry),
            interval_s=1.0,
            offline_after_s=300.0,
        ),
        registry,
    )


def test_only_lost_and_stuck_desired_states_are_republished(engine: Engine) -> None:
    store(engine, "stuck")  # online, old model, silent about seq 5 for 400 s
    store(engine, "stuck-old-events", event_seqs=(4,))  # it answered an older seq only
    store(engine, "rejected", event_seqs=(5,))  # it refused seq 5: not fought
    store(engine, "rolled-back", event_seqs=(5,), event_kind="rolled_back")
    store(engine, "offline", online=False)
    store(engine, "installed", active=TARGET)
    store(engine, "cleared", online=False)  # offline, its retained message cleared
    store(engine, "absent", online=None)  # never seen, and no retained message at all
    observed = {d: 5 for d in ("stuck", "stuck-old-events", "rejected", "rolled-back")}
    observed |= {"offline": 5, "installed": 5, "cleared": EMPTY, "junk-device": EMPTY}
    director = RecordingDirector()
    retained = FixedRetained(observed)
    run, registry = reconciler(engine, director, retained)

    chosen = run.run_once(NOW)

    assert {d: c.reason for d, c in chosen.items()} == {
        "stuck": Reason.STUCK,
        "stuck-old-events": Reason.STUCK,
        "cleared": Reason.RETAINED_LOST,
        "absent": Reason.RETAINED_LOST,
    }
    assert director.calls == [sorted(chosen)]
    assert "junk-device" not in retained.seen  # no stored state: not remembered
    lost = registry.get_sample_value(
        "edgefleet_reconcile_republished_total", {"reason": "retained_lost"}
    )
    assert lost == 2


def test_a_device_that_stays_stuck_is_backed_off_then_given_up_on(engine: Engine) -> None:
    store(engine, "stuck")
    director = RecordingDirector()
    run, registry = reconciler(engine, director, FixedRetained({"stuck": 5}))

    assert set(run.run_once(NOW)) == {"stuck"}
    assert run.run_once(NOW + timedelta(seconds=59)) == {}  # within the 60 s backoff
    assert set(run.run_once(NOW + timedelta(seconds=60))) == {"stuck"}
    # Still online (heard from 10 s before NOW), past the 120 s backoff: two attempts
    # were the budget, so the reconciler gives up, once.
    assert run.run_once(NOW + timedelta(seconds=180)) == {}
    assert run.run_once(NOW + timedelta(seconds=250)) == {}
    assert len(director.calls) == 2
    gave_up = registry.get_sample_value(
        "edgefleet_reconcile_gave_up_total", {"reason": "stuck", "why": "attempts"}
    )
    assert gave_up == 1


def test_a_refused_publish_is_retried_after_the_backoff_without_spending_attempts(
    engine: Engine,
) -> None:
    store(engine, "cleared", online=False)
    director = RecordingDirector()
    director.fail = True
    run, registry = reconciler(engine, director, FixedRetained({"cleared": EMPTY}))

    for minute in range(4):  # the broker refuses for a while: never given up
        assert set(run.run_once(NOW + timedelta(minutes=minute))) == {"cleared"}
    director.fail = False
    assert set(run.run_once(NOW + timedelta(minutes=4))) == {"cleared"}
    assert registry.get_sample_value("edgefleet_reconcile_publish_failed_total") == 4
    assert (
        registry.get_sample_value(
            "edgefleet_reconcile_republished_total", {"reason": "retained_lost"}
        )
        == 1
    )
