"""Drift fixtures: a real wine model's profile and windows, the fleet, a webhook receiver.

Windows are built the way a device builds them: real rows (resampled from the wine
training data, optionally shifted), the real ONNX model's outputs on them, folded by
`edgefleet.shared.drift.WindowAccumulator`, sent as `DriftMessage`s by a plain paho client and
stored by the real ingester of a running `FleetService`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlmodel import Session, SQLModel

from edgefleet.fleet.api.app import create_app
from edgefleet.fleet.api.drift import router as drift_router
from edgefleet.fleet.drift.store import put_reference
from edgefleet.fleet.service import FleetService
from edgefleet.fleet.store.tables import DriftWindowRow
from edgefleet.shared.drift import ReferenceProfile, WindowAccumulator, WindowSketch, build_profile
from edgefleet.shared.messages import DriftMessage, ModelRef
from edgefleet.shared.topics import Channel, device_topic
from edgefleet.simulators.models import SensorFeed, TrainedModel
from tests.fleet.factories import state
from tests.fleet.publisher import device_message, publish, wait_until
from tests.support.drift_reference import version1_payload
from tests.support.mosquitto import MosquittoBroker

MODEL = "wine"
VERSION = "1.0.0"


@dataclass
class WineData:
    """The wine model, its reference profile, and a way to make device windows."""

    model: TrainedModel
    session: ort.InferenceSession
    profile: ReferenceProfile
    std: np.ndarray

    def outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        label, probabilities = self.session.run(None, {"input": x})
        return {"label": np.asarray(label), "probabilities": np.asarray(probabilities)}

    def unlabelled(self, n: int, *, shift: float = 0.0, seed: int = 0) -> WindowSketch:
        """A window of ``n`` sensor readings from `SensorFeed` with ``shift`` std."""
        feed = SensorFeed(self.model.x_train, seed=seed)
        feed.shift = shift
        x = feed.sample(n)
        accumulator = WindowAccumulator(self.profile)
        accumulator.add(x, self.outputs(x))
        return accumulator.snapshot()

    def labelled(
        self, n: int, *, shift: float = 0.0, wrong: float = 0.0, seed: int = 0
    ) -> WindowSketch:
        """``n`` training rows (+ noise + ``shift`` std) with their true labels, a
        fraction ``wrong`` of which is replaced by another class (the world changed)."""
        rng = np.random.default_rng(seed)
        rows = rng.integers(0, len(self.model.x_train), size=n)
        noise = rng.normal(0.0, 0.05, size=(n, self.model.n_features)) * self.std
        x = (self.model.x_train[rows] + noise + shift * self.std).astype(np.float32)
        y = self.model.y_train[rows].copy()
        flip = rng.random(n) < wrong
        y[flip] = (y[flip] + 1) % 3
        accumulator = WindowAccumulator(self.profile)
        accumulator.add(x, self.outputs(x), y)
        return accumulator.snapshot()


@pytest.fixture(scope="session")
def wine(wine_model: TrainedModel) -> WineData:
    session = ort.InferenceSession(str(wine_model.path))
    label, probabilities = session.run(None, {"input": wine_model.x_train})
    profile = build_profile(
        wine_model.x_train,
        {"label": np.asarray(label), "probabilities": np.asarray(probabilities)},
        feature_names=wine_model.feature_names,
        labels=wine_model.y_train,
    )
    return WineData(
        model=wine_model,
        session=session,
        profile=profile,
        std=wine_model.x_train.std(axis=0) + 1e-6,
    )


@dataclass
class Window:
    """One window a test device sends."""

    device_id: str
    start: datetime
    sketch: WindowSketch
    length_s: float = 60.0
    version: str = VERSION


class Fleet:
    """A running fleet service plus helpers to feed it drift windows over MQTT."""

    def __init__(self, fleet_service: FleetService, broker: MosquittoBroker) -> None:
        self.service = fleet_service
        self.broker = broker
        self._seq: dict[str, int] = {}

    @property
    def engine(self) -> Any:
        return self.service.engine

    def register(self, profile: ReferenceProfile, version: str = VERSION) -> None:
        with Session(self.engine) as session:
            put_reference(session, MODEL, version, profile)

    def birth(self, device_id: str, *, tags: list[str], hardware: str, ts: datetime) -> None:
        message = state(device_id, self._next(device_id), ts=ts, tags=tags, hardware=hardware)
        publish(self.broker.port, [device_message(Channel.STATE, message, retain=True)])

    def send(self, windows: list[Window], *, version1: bool = False) -> None:
        """Publish the windows as DriftMessages and wait until the ingester stored them.

        ``version1``: in the sketch form of agents before the compact one.
        """
        before = self.stored()
        messages = []
        for w in windows:
            drift = DriftMessage(
                device_id=w.device_id,
                seq=self._next(w.device_id),
                ts=w.start + timedelta(seconds=w.length_s),
                model=ModelRef(name=MODEL, version=w.version),
                window_start=w.start,
                window_end=w.start + timedelta(seconds=w.length_s),
                count=w.sketch.count,
                sketch=w.sketch,
            )
            if version1:
                topic = device_topic(w.device_id, Channel.DRIFT)
                messages.append((topic, version1_payload(drift), False))
            else:
                messages.append(device_message(Channel.DRIFT, drift))
        publish(self.broker.port, messages)
        wait_until(
            lambda: self.stored() == before + len(windows), timeout_s=15, what="drift windows"
        )

    def stored(self) -> int:
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(DriftWindowRow)) or 0)

    def _next(self, device_id: str) -> int:
        self._seq[device_id] = self._seq.get(device_id, 0) + 1
        return self._seq[device_id]


@pytest.fixture
def fleet(service: FleetService, mosquitto: MosquittoBroker) -> Fleet:
    # The fleet creates its own tables; ours were registered on the metadata by the
    # import above, and create_all again is a no-op for what exists.
    SQLModel.metadata.create_all(service.engine)
    return Fleet(service, mosquitto)


@pytest.fixture
def drift_api(fleet: Fleet) -> Iterator[TestClient]:
    """The fleet app with the drift router, on the running service's database."""
    app = create_app(fleet.service.settings, engine=fleet.engine)
    app.include_router(drift_router)
    token = fleet.service.bootstrap_admin_token
    assert token
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client
