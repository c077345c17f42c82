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

from edgefleet.fleet.director import Director
from edgefleet.fleet.errors import PublishError
from edgefleet.fleet.rollout_service import store
from edgefleet.fleet.rollout_service.orchestrator import ALERT_KIND, Orchestrator
from edgefleet.fleet.rollouts.model import (
    MAX_DURATION_S,
    OperatorCommand,
    RolloutStatus,
)
from edgefleet.fleet.store.engine import make_engine
from edgefleet.fleet.store.migrate import create_all
from edgefleet.fleet.store.rollout_tables import Rollout
from edgefleet.shared.messages import AlertMessage
from edgefleet.shared.signing.director import DesiredTarget
from edgefleet.shared.signing.keys import generate_signer
from tests.fleet.rollout_service.rows import create_one_wave_rollout, register_devices

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
    register_devices(engine, GOOD + BAD, T0)
    yield engine
    engine.dispose()


def _corrupt(engine: Engine, rollout_id: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit the stored state JSON past every model, as a hand edit or old schema would."""
    with engine.begin() as conn:
        raw = dict(
            conn.execute(select(_ROLLOUT.c.state).where(_ROLLOUT.c.id == rollout_id)).scalar()
        )
        change(raw)
        stored: Any = raw or ["not", "a", "state"]
        # A new version, as every write makes: the parsed-state cache keys on it.
        conn.execute(
            update(_ROLLOUT)
            .where(_ROLLOUT.c.id == rollout_id)
            .values(state=stored, version=_ROLLOUT.c.version + 1)
        )


def _ghost_target(raw: dict[str, Any]) -> None:
    raw["targets"] = ["ghost", *raw["targets"][1:]]  # a target with no device record


def _unparseable(raw: dict[str, Any]) -> None:
    raw["devices"] = "not a mapping"


def _not_an_object(raw: dict[str, Any]) -> None:
    raw.clear()  # `_corrupt` stores an empty object as a JSON list instead


def _huge_timeout(raw: dict[str, Any]) -> None:
    raw["spec"]["gate"]["timeout_s"] = 1e15
    for wave in raw["waves"]:
        wave["gate"]["timeout_s"] = 1e15


def _infinite_soak(raw: dict[str, Any]) -> None:
    # How an older schema stored soak_s = inf: JSON has no infinity, pydantic wrote null.
    raw["spec"]["gate"]["soak_s"] = None
    for wave in raw["waves"]:
        wave["gate"]["soak_s"] = None


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
    [
        (_ghost_target, "KeyError"),
        (_unparseable, "ValidationError"),
        (_not_an_object, "ValidationError"),
    ],
)
def test_a_rollout_that_cannot_be_decided_is_paused_and_the_others_go_on(
    engine: Engine, corruption: Callable[[dict[str, Any]], None], error: str
) -> None:
    # The bad one is older, so today's orchestrator meets it first and stops there.
    create_one_wave_rollout(engine, "bad", BAD, T0 - timedelta(seconds=1))
    create_one_wave_rollout(engine, "good", GOOD, T0)
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


@pytest.mark.parametrize("corruption", [_huge_timeout, _infinite_soak])
def test_a_gate_stored_before_the_bounds_is_read_at_the_maximum_and_runs(
    engine: Engine, corruption: Callable[[dict[str, Any]], None]
) -> None:
    """The issue's case: a gate of 1e15 s made every tick raise OverflowError. Such a row
    is read with its durations at the schema's maximum, so it runs beside the healthy
    one, and the API can still show and command it."""
    create_one_wave_rollout(engine, "huge", BAD, T0 - timedelta(seconds=1))
    create_one_wave_rollout(engine, "good", GOOD, T0)
    _corrupt(engine, "huge", corruption)
    alerts, broker = RecordingAlerts(), RecordingBroker()
    orchestrator = _orchestrator(engine, alerts, broker)

    orchestrator.tick()

    assert _status(engine, "good") == "running"
    assert _status(engine, "huge") == "running"
    assert sorted(broker.topics) == sorted(f"edgefleet/v1/devices/{d}/desired" for d in GOOD + BAD)
    assert store.history(engine, "huge", kinds=["decide_failed"]) == []
    assert alerts.sent == []
    with engine.connect() as conn:
        gate = store.load(conn, "huge").state.waves[0].gate
    assert MAX_DURATION_S in (gate.timeout_s, gate.soak_s)
    aborted = store.command(engine, "huge", OperatorCommand.ABORT, by="test", now=T0)
    assert aborted.state.status is RolloutStatus.ABORTED
