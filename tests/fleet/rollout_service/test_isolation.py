"""One bad rollout pauses itself and never stops the others, on SQLite and PostgreSQL.

A bad rollout is a row the API would not write today, inserted past it as an older
schema or a hand edit leaves it: a state that no longer parses, a state `decide` chokes
on, a gate of 1e15 s. The orchestrator runs for real (real director, signer and store);
only the broker behind the director and the alert transport are recording fakes, at the
`DesiredPublisher` and `AlertPublisher` interfaces the fleet defines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select, update
from sqlmodel import Session

from edgefleet.fleet.director import Director
from edgefleet.fleet.errors import PublishError
from edgefleet.fleet.rollout_service import store
from edgefleet.fleet.rollout_service.orchestrator import ALERT_KIND, Orchestrator
from edgefleet.fleet.rollouts.model import (
    ModelTarget,
    RolloutSpec,
    RolloutStatus,
    Selector,
    Wave,
)
from edgefleet.fleet.store.engine import create_all, make_engine
from edgefleet.fleet.store.rollout_tables import Rollout
from edgefleet.fleet.store.tables import Device
from edgefleet.shared.messages import AlertMessage
from edgefleet.shared.signing.director import DesiredTarget
from edgefleet.shared.signing.keys import generate_signer

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
GOOD, BAD = ["g0", "g1", "g2"], ["b0", "b1", "b2"]
_ROLLOUT: Any = Rollout.__table__  # type: ignore[attr-defined]


class RecordingBroker:
    """The director's `DesiredPublisher`: every retained publish is acknowledged."""

    def __init__(self) -> None:
        self.topics: list[str] = []

    def publish_retained(self, topic: str, payload: bytes) -> None:
        self.topics.append(topic)

    def publish_retained_many(
        self, messages: Sequence[tuple[str, bytes]]
    ) -> list[PublishError | None]:
        self.topics += [topic for topic, _ in messages]
        return [None] * len(messages)


class Registry:
    """The orchestrator's `TargetRegistry`: every version is published."""

    def published_target(self, name: str, version: str) -> DesiredTarget:
        return DesiredTarget(name=name, version=version, sha256="ab" * 32, length=1)


class RecordingAlerts:
    def __init__(self) -> None:
        self.sent: list[AlertMessage] = []

    def publish_alert(self, message: AlertMessage) -> None:
        self.sent.append(message)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    create_all(engine)
    with Session(engine) as session:
        for device_id in GOOD + BAD:
            session.add(
                Device(
                    device_id=device_id,
                    online=True,
                    first_seen=T0,
                    last_seen=T0,
                    model_name="wine",
                    model_version="1.0.0",
                    last_state_seq=1,
                )
            )
        session.commit()
    yield engine
    engine.dispose()


def _create(engine: Engine, rollout_id: str, devices: list[str], at: datetime) -> None:
    spec = RolloutSpec(
        model=ModelTarget(name="wine", version="1.1.0"),
        selector=Selector(device_ids=tuple(devices)),
        waves=(Wave(fraction=1.0),),
    )
    store.create(engine, rollout_id, spec, created_by="test", now=at)


def _corrupt(engine: Engine, rollout_id: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit the stored state JSON past every model, as a hand edit or old schema would."""
    with engine.begin() as conn:
        raw = dict(
            conn.execute(select(_ROLLOUT.c.state).where(_ROLLOUT.c.id == rollout_id)).scalar()
        )
        change(raw)
        # A new version, as every write makes: the parsed-state cache keys on it.
        conn.execute(
            update(_ROLLOUT)
            .where(_ROLLOUT.c.id == rollout_id)
            .values(state=raw, version=_ROLLOUT.c.version + 1)
        )


def _ghost_target(raw: dict[str, Any]) -> None:
    raw["targets"] = ["ghost", *raw["targets"][1:]]  # a target with no device record


def _unparseable(raw: dict[str, Any]) -> None:
    raw["devices"] = "not a mapping"


def _huge_timeout(raw: dict[str, Any]) -> None:
    raw["spec"]["gate"]["timeout_s"] = 1e15
    for wave in raw["waves"]:
        wave["gate"]["timeout_s"] = 1e15


def _status(engine: Engine, rollout_id: str) -> str:
    with engine.connect() as conn:
        found: str = conn.execute(
            select(_ROLLOUT.c.status).where(_ROLLOUT.c.id == rollout_id)
        ).scalar_one()
    return found


def _orchestrator(engine: Engine, alerts: RecordingAlerts, broker: RecordingBroker) -> Orchestrator:
    now = T0 + timedelta(seconds=1)
    director = Director(
        engine, generate_signer(), broker, default_expires_s=3600, clock=lambda: now
    )
    return Orchestrator(
        engine,
        director,
        Registry(),
        holder="test",
        tick_interval_s=0.1,
        lease_s=3.0,
        clock=lambda: now,
        alerts=alerts,
    )


@pytest.mark.parametrize(
    ("corruption", "error"),
    [(_ghost_target, "KeyError"), (_unparseable, "ValidationError")],
)
def test_a_rollout_that_cannot_be_decided_is_paused_and_the_others_go_on(
    engine: Engine, corruption: Callable[[dict[str, Any]], None], error: str
) -> None:
    # The bad one is older, so today's orchestrator meets it first and stops there.
    _create(engine, "bad", BAD, T0 - timedelta(seconds=1))
    _create(engine, "good", GOOD, T0)
    _corrupt(engine, "bad", corruption)
    alerts, broker = RecordingAlerts(), RecordingBroker()
    orchestrator = _orchestrator(engine, alerts, broker)

    orchestrator.tick()

    with engine.connect() as conn:
        good = store.load(conn, "good")
    assert good.state.status is RolloutStatus.RUNNING
    assert {d for d, r in good.state.devices.items() if r.assigned_at is not None} == set(GOOD)
    assert sorted(broker.topics) == sorted(f"edgefleet/v1/devices/{d}/desired" for d in GOOD)

    assert _status(engine, "bad") == "paused"
    failed = store.history(engine, "bad", kinds=["decide_failed"])
    assert len(failed) == 1
    assert failed[0].detail["error"] == error
    assert failed[0].detail["status_before"] == "created"
    paused = store.history(engine, "bad", kinds=["paused"])
    assert len(paused) == 1
    assert paused[0].message.startswith(f"paused: deciding it failed with {error}: ")
    if error == "KeyError":  # it still parses: the reason is its status reason too
        with engine.connect() as conn:
            assert store.load(conn, "bad").state.status_reason == paused[0].message
    assert [(a.kind, a.severity, a.evidence["rollout_id"]) for a in alerts.sent] == [
        (ALERT_KIND, "critical", "bad")
    ]
    assert alerts.sent[0].evidence["error"] == error

    # The same error at the next ticks is recorded once; the good rollout keeps going.
    orchestrator.tick()
    orchestrator.tick()
    assert len(store.history(engine, "bad", kinds=["decide_failed"])) == 1
    assert len(alerts.sent) == 1
    assert _status(engine, "bad") == "paused"
    assert _status(engine, "good") == "running"


def test_a_stored_gate_of_1e15_seconds_does_not_stop_a_healthy_rollout(engine: Engine) -> None:
    """The issue's case: such a gate made every tick raise OverflowError. Whether the
    stored state still parses depends on the schema's bounds; either way the healthy
    rollout advances, and the bad one is paused with the error or simply waits."""
    _create(engine, "huge", BAD, T0 - timedelta(seconds=1))
    _create(engine, "good", GOOD, T0)
    _corrupt(engine, "huge", _huge_timeout)
    alerts, broker = RecordingAlerts(), RecordingBroker()
    orchestrator = _orchestrator(engine, alerts, broker)

    orchestrator.tick()

    assert _status(engine, "good") == "running"
    assert set(GOOD) <= {t.rsplit("/", 2)[1] for t in broker.topics}
    failed = store.history(engine, "huge", kinds=["decide_failed"])
    assert _status(engine, "huge") == ("paused" if failed else "running")
    assert len(alerts.sent) == len(failed)
