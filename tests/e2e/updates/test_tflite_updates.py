"""Signed updates to and from TFLite models, end to end, on the committed real models.

A device ships the wine model as ONNX (`wine_float.onnx`) and is updated over the real
path (TUF repository over HTTP, director signature, retained MQTT desired state) to
the int8 TFLite twin (`wine_int8.tflite`, run by LiteRT with float tensors outside).
Inferences in-process and over the HTTP API are checked against the held-out labels
while the model changes under them.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from edgefleet.agent.daemon import Agent
from edgefleet.agent.update.machine import Phase
from edgefleet.shared.manifest import ProbationBudget, Tolerance
from edgefleet.shared.modeltools.builder import build_package
from edgefleet.simulators.tflite_models.catalog import load_manifest, model_path
from edgefleet.simulators.tflite_models.datasets import Split, wine_split
from tests.e2e.updates.support import FAST_PROBATION, Pkg, Rig, repackage
from tests.e2e.updates.test_updates import EXPECTED_PROGRESS, kinds_for, wait_event

GOLDEN_COUNT = 8


@dataclass(frozen=True)
class TflitePackages:
    factory: Pkg  # 1.0.0, wine_float.onnx: what the device ships with
    int8: Pkg  # 2.0.0, wine_int8.tflite with its own golden samples
    wrong_golden: Pkg  # 2.1.0, wine_int8.tflite against wine_float.tflite's golden, tight
    slow: Pkg  # 2.2.0, wine_int8.tflite with a latency budget no model can keep
    accuracy: dict[str, float]  # version -> held-out accuracy of its model file


@pytest.fixture(scope="module")
def split() -> Split:
    return wine_split()


@pytest.fixture(scope="module")
def tflite_packages(tmp_path_factory: pytest.TempPathFactory, split: Split) -> TflitePackages:
    out = tmp_path_factory.mktemp("tflite-packages")
    reference = out / "wine-train.npy"
    np.save(reference, split.x_train)

    def build(file: str, version: str, **extra: Any) -> Pkg:
        path = build_package(
            model_path(file),
            name="wine",
            version=version,
            out_dir=out,
            reference_data=reference,
            golden_count=GOLDEN_COUNT,
            probation=extra.pop("probation", FAST_PROBATION),
            **extra,
        )
        return Pkg(path, version)

    int8 = build("wine_int8.tflite", "2.0.0")
    # Golden outputs of the float model, held to 1e-4: the int8 model is ~0.007 away.
    float_golden = build("wine_float.tflite", "2.1.0", tolerance=Tolerance(atol=1e-4, rtol=1e-4))
    catalog = load_manifest()
    return TflitePackages(
        factory=build("wine_float.onnx", "1.0.0"),
        int8=int8,
        wrong_golden=repackage(
            float_golden,
            out / "mixed",
            version="2.1.0",
            model_bytes=model_path("wine_int8.tflite").read_bytes(),
        ),
        slow=repackage(
            int8,
            out / "slow",
            version="2.2.0",
            probation=ProbationBudget(max_latency_p95_ms=0.001, min_inferences=5, duration_s=30),
        ),
        accuracy={
            "1.0.0": catalog.entry("wine_float.onnx").heldout_accuracy,
            "2.0.0": catalog.entry("wine_int8.tflite").heldout_accuracy,
        },
    )


def _accuracy(scores: NDArray[Any], labels: NDArray[np.int64]) -> float:
    return float(np.mean(np.asarray(scores).argmax(axis=1) == labels))


class LabelledTraffic:
    """The held-out rows, in-process and over HTTP in a loop, each answer scored."""

    def __init__(self, agent: Agent, split: Split) -> None:
        self.agent = agent
        self.split = split
        self.answers: list[tuple[str, str, float]] = []  # (door, version, accuracy)
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._in_process, daemon=True),
            threading.Thread(target=self._http, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _in_process(self) -> None:
        while not self._stop.is_set():
            try:
                ref, outputs = self.agent.infer({"input": self.split.x_test})
            except Exception as e:
                self.failures.append(f"infer: {e!r}")
                continue
            accuracy = _accuracy(outputs["probabilities"], self.split.y_test)
            self.answers.append(("infer", ref.version, accuracy))

    def _http(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.agent.api_port or 0, timeout=5)
        body = json.dumps({"inputs": {"input": self.split.x_test.tolist()}})
        while not self._stop.is_set():
            try:
                conn.request("POST", "/v1/predict", body=body)
                response = conn.getresponse()
                document = json.loads(response.read())
            except Exception as e:
                self.failures.append(f"http: {e!r}")
                continue
            if response.status != 200:
                self.failures.append(f"HTTP {response.status}: {document}")
                continue
            accuracy = _accuracy(document["outputs"]["probabilities"], self.split.y_test)
            self.answers.append(("http", document["model"]["version"], accuracy))
        conn.close()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)

    def wait_for_version(self, version: str, timeout_s: float = 10) -> None:
        """Until both doors have had an answer from ``version``."""
        deadline = time.monotonic() + timeout_s
        while not all(version in self.versions(door) for door in ("infer", "http")):
            assert time.monotonic() < deadline, f"no answer from {version}: {self.answers[-3:]}"
            time.sleep(0.01)

    def versions(self, door: str) -> set[str]:
        return {version for d, version, _ in self.answers if d == door}

    def below(self, accuracy: dict[str, float]) -> list[tuple[str, str, float]]:
        """Answers less accurate than the model that gave them reached at generation time."""
        return [a for a in self.answers if a[2] < accuracy[a[1]]]


def assert_serves_accurately(
    agent: Agent, pkg: Pkg, runtime: str, split: Split, accuracy: float
) -> None:
    updates = agent.updates
    assert updates is not None
    assert updates.store.active() == pkg.sha256
    updates.store.verify(pkg.sha256)
    host = agent.model_host.active
    assert host is not None
    assert host.runtime.runtime == runtime
    ref, outputs = agent.infer({"input": split.x_test})
    assert (ref.sha256, ref.version) == (pkg.sha256, pkg.version)
    assert _accuracy(outputs["probabilities"], split.y_test) >= accuracy


def _install_int8(
    tmp_path: Path,
    rig: Rig,
    packs: TflitePackages,
    start_agent: Any,
    events_of: Any,
    device: str,
    split: Split,
) -> tuple[Agent, Any]:
    """A device on the ONNX factory model, updated to int8 TFLite (seq 1, committed)."""
    for pkg in (packs.factory, packs.int8, packs.wrong_golden, packs.slow):
        rig.add(pkg)
    events = events_of(device)
    agent = start_agent(rig.config(tmp_path, device, packs.factory))
    assert_serves_accurately(agent, packs.factory, "onnx", split, packs.accuracy["1.0.0"])
    rig.publish(device, rig.sign(device, packs.int8, 1))
    wait_event(events, "committed", 1)
    return agent, events


def test_onnx_device_is_updated_to_int8_tflite_and_serves_accurately_throughout(
    tmp_path, rig: Rig, tflite_packages: TflitePackages, start_agent, events_of, unique_id, split
) -> None:
    packs = tflite_packages
    device = f"tfl-{unique_id}"
    rig.add(packs.factory)
    rig.add(packs.int8)
    events = events_of(device)
    agent = start_agent(rig.config(tmp_path, device, packs.factory))
    assert_serves_accurately(agent, packs.factory, "onnx", split, packs.accuracy["1.0.0"])
    traffic = LabelledTraffic(agent, split)
    try:
        traffic.wait_for_version("1.0.0")
        rig.publish(device, rig.sign(device, packs.int8, 1))
        committed = wait_event(events, "committed", 1)
        traffic.wait_for_version("2.0.0")
    finally:
        traffic.stop()
    assert kinds_for(events, 1) == EXPECTED_PROGRESS
    assert committed["model"]["sha256"] == packs.int8.sha256
    healthy = wait_event(events, "healthy", 1)
    assert f"all {GOLDEN_COUNT} golden samples within tolerance" in json.dumps(healthy)
    assert traffic.failures == []
    for door in ("infer", "http"):
        assert traffic.versions(door) == {"1.0.0", "2.0.0"}, f"{door}: both sides of the swap"
    assert traffic.below(packs.accuracy) == []
    assert agent.updates is not None
    assert agent.updates.state.phase is Phase.COMMITTED
    assert agent.updates.store.previous() == packs.factory.sha256
    assert_serves_accurately(agent, packs.int8, "tflite", split, packs.accuracy["2.0.0"])


def test_tflite_model_failing_its_golden_samples_is_rolled_back_to_the_serving_tflite_model(
    tmp_path, rig: Rig, tflite_packages: TflitePackages, start_agent, events_of, unique_id, split
) -> None:
    packs = tflite_packages
    device = f"tflgold-{unique_id}"
    agent, events = _install_int8(tmp_path, rig, packs, start_agent, events_of, device, split)
    traffic = LabelledTraffic(agent, split)
    try:
        rig.publish(device, rig.sign(device, packs.wrong_golden, 2))
        rolled = wait_event(events, "rolled_back", 2)
    finally:
        traffic.stop()
    assert "golden samples failed" in rolled["reason"]
    assert "committed" not in kinds_for(events, 2)
    assert traffic.failures == []
    # The rejected model may answer while on probation; the int8 model keeps serving after.
    assert {"2.0.0"} <= traffic.versions("infer") <= {"2.0.0", "2.1.0"}
    assert agent.updates is not None
    assert agent.updates.state.phase is Phase.ROLLED_BACK
    assert not agent.updates.store.has(packs.wrong_golden.sha256), "the failed model is gone"
    assert_serves_accurately(agent, packs.int8, "tflite", split, packs.accuracy["2.0.0"])


def test_signed_rollback_returns_a_tflite_device_to_its_onnx_model(
    tmp_path, rig: Rig, tflite_packages: TflitePackages, start_agent, events_of, unique_id, split
) -> None:
    packs = tflite_packages
    device = f"tflback-{unique_id}"
    agent, events = _install_int8(tmp_path, rig, packs, start_agent, events_of, device, split)
    rig.publish(device, rig.sign(device, packs.factory, 2, rollback=False))
    rejected = wait_event(events, "rejected", 2)
    assert "is older than the active 2.0.0" in rejected["reason"]
    assert_serves_accurately(agent, packs.int8, "tflite", split, packs.accuracy["2.0.0"])

    rig.publish(device, rig.sign(device, packs.factory, 3, rollback=True))
    committed = wait_event(events, "committed", 3)
    model = committed["model"]
    assert (model["version"], model["sha256"]) == ("1.0.0", packs.factory.sha256)
    assert agent.updates is not None
    assert agent.updates.state.phase is Phase.COMMITTED
    assert_serves_accurately(agent, packs.factory, "onnx", split, packs.accuracy["1.0.0"])


def test_tflite_model_over_its_latency_budget_is_rolled_back(
    tmp_path, rig: Rig, tflite_packages: TflitePackages, start_agent, events_of, unique_id, split
) -> None:
    packs = tflite_packages
    device = f"tflslow-{unique_id}"
    rig.add(packs.factory)
    rig.add(packs.slow)
    events = events_of(device)
    agent = start_agent(rig.config(tmp_path, device, packs.factory))
    rig.publish(device, rig.sign(device, packs.slow, 1))
    traffic = LabelledTraffic(agent, split)
    try:
        rolled = wait_event(events, "rolled_back", 1)
    finally:
        traffic.stop()
    assert "latency p95" in rolled["reason"]
    assert "above the budget 0.0 ms" in rolled["reason"]
    assert "activated" in kinds_for(events, 1), "the TFLite model did serve on probation"
    assert traffic.failures == []
    assert traffic.below(packs.accuracy | {"2.2.0": packs.accuracy["2.0.0"]}) == []
    assert agent.updates is not None
    assert agent.updates.state.phase is Phase.ROLLED_BACK
    assert not agent.updates.store.has(packs.slow.sha256)
    assert_serves_accurately(agent, packs.factory, "onnx", split, packs.accuracy["1.0.0"])
