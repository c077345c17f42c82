"""Fixtures: real model packages with reference profiles, agents stopped after each test."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from edgefleet.agent.config import AgentConfig
from edgefleet.shared.drift import ReferenceProfile, build_profile
from edgefleet.shared.manifest import ModelManifest
from edgefleet.shared.messages import DriftMessage, decode_device_message
from edgefleet.shared.modeltools.builder import build_package
from edgefleet.shared.package.read import read_package
from edgefleet.shared.topics import Channel
from edgefleet.simulators.models import TrainedModel
from tests.e2e.updates.support import FAST_PROBATION, Pkg
from tests.support.agent import Received, Subscriber, agent_config, channel_subscribers
from tests.support.mosquitto import MosquittoBroker


@dataclass(frozen=True)
class Packages:
    profiled: Pkg  # 1.0.0, reference profile with a label spec
    profiled_upgrade: Pkg  # 1.1.0, the same model, its own profile
    bare: Pkg  # 1.0.0, no reference data: no profile

    def profile(self, pkg: Pkg) -> ReferenceProfile:
        manifest: ModelManifest = read_package(pkg.path)[0]
        assert manifest.reference_profile is not None
        return ReferenceProfile.model_validate(manifest.reference_profile)


def _labelled_builder(labels: NDArray[np.int64]) -> Callable[..., ReferenceProfile]:
    def build(
        reference: dict[str, NDArray[Any]],
        outputs: dict[str, NDArray[Any]],
        feature_names: list[str] | None,
    ) -> ReferenceProfile:
        return build_profile(reference, outputs, feature_names=feature_names, labels=labels)

    return build


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory, wine_model: TrainedModel) -> Packages:
    out = tmp_path_factory.mktemp("drift-packages")
    reference = out / "reference.npy"
    np.save(reference, wine_model.x_train)
    built = {}
    for version in ("1.0.0", "1.1.0"):
        path = build_package(
            wine_model.path,
            name="wine",
            version=version,
            out_dir=out / "profiled",
            reference_data=reference,
            feature_names=wine_model.feature_names,
            golden_count=8,
            probation=FAST_PROBATION,
            profile_builder=_labelled_builder(wine_model.y_train),
        )
        built[version] = Pkg(path, version)
    bare = build_package(
        wine_model.path, name="wine", version="1.0.0", out_dir=out / "bare", golden_count=8
    )
    return Packages(built["1.0.0"], built["1.1.0"], Pkg(bare, "1.0.0"))


@pytest.fixture
def drift_of(mosquitto: MosquittoBroker) -> Iterator[Callable[[str], Subscriber]]:
    """Subscribers to one device's ``drift`` topic, closed after the test."""
    yield from channel_subscribers(mosquitto, "drift")


def profiled_config(
    tmp_path: Path, broker: MosquittoBroker, device_id: str, pkg: Pkg, **drift: Any
) -> AgentConfig:
    """An agent serving ``pkg`` (no updates) with a fast drift timer."""
    return agent_config(
        tmp_path,
        broker,
        device_id,
        model={"path": str(pkg.path)},
        drift={"tick_s": 0.05, **drift},
    )


def drift_messages(sub: Subscriber, device_id: str) -> list[DriftMessage]:
    return [_decode(r, device_id) for r in sub.on("drift")]


def _decode(received: Received, device_id: str) -> DriftMessage:
    message = decode_device_message(Channel.DRIFT, device_id, received.payload)
    assert isinstance(message, DriftMessage)
    return message


def wait_drift(
    sub: Subscriber, device_id: str, rows: int, timeout_s: float = 10.0
) -> list[DriftMessage]:
    """Drift messages until their counts add up to ``rows``."""

    def enough(received: list[Received]) -> bool:
        return sum(m.count for m in drift_messages(sub, device_id)) >= rows

    sub.wait_for(enough, timeout_s)
    return drift_messages(sub, device_id)


def post(port: int, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        document: dict[str, Any] = json.loads(response.read())
        return response.status, document
    finally:
        conn.close()


def post_json(port: int, path: str, document: Any) -> tuple[int, dict[str, Any]]:
    return post(port, path, json.dumps(document).encode())
