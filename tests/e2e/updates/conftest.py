"""Fixtures: real packages (session), a fleet rig per test, in-process agents stopped after."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgefleet.shared.manifest import ProbationBudget
from edgefleet.simulators.models import TrainedModel, train_wine_classifier
from tests.e2e.updates.support import Pkg, Rig, build, repackage
from tests.support.agent import Subscriber, channel_subscribers
from tests.support.mosquitto import MosquittoBroker


@dataclass(frozen=True)
class Packages:
    factory: Pkg  # 1.0.0, what a fresh device ships with
    upgrade: Pkg  # 1.1.0, a good update
    older: Pkg  # 0.9.0, a downgrade
    wrong_golden: Pkg  # 1.2.0, another model's outputs against 1.1.0's golden samples
    unloadable: Pkg  # 1.3.0, a model file the runtime cannot load
    slow: Pkg  # 1.4.0, a latency budget no model can keep


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory, wine_model: TrainedModel) -> Packages:
    out = tmp_path_factory.mktemp("packages")
    other = train_wine_classifier(out / "other.onnx", seed=7, max_iter=20)
    factory = build(wine_model.path, "1.0.0", out)
    upgrade = build(wine_model.path, "1.1.0", out)
    return Packages(
        factory=factory,
        upgrade=upgrade,
        older=repackage(factory, out, version="0.9.0"),
        wrong_golden=repackage(upgrade, out, version="1.2.0", model_bytes=other.path.read_bytes()),
        unloadable=repackage(upgrade, out, version="1.3.0", model_bytes=b"this is no onnx model"),
        slow=repackage(
            upgrade,
            out,
            version="1.4.0",
            probation=ProbationBudget(max_latency_p95_ms=0.001, min_inferences=5, duration_s=30),
        ),
    )


@pytest.fixture
def rig(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[Rig]:
    fleet = Rig(tmp_path / "fleet", mosquitto)
    yield fleet
    fleet.close()


@pytest.fixture
def events_of(mosquitto: MosquittoBroker) -> Iterator[Callable[[str], Subscriber]]:
    """Subscribers to one device's ``events`` topic, closed after the test."""
    yield from channel_subscribers(mosquitto, "events")
