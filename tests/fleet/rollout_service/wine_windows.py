"""Drift windows of the wine model, built the way an agent builds them.

`WineWindows` reads each version's reference profile from its real package (as the agent
does when it activates it), draws sensor rows with `edgefleet.simulators.models.SensorFeed`
(shifted by ``shift`` standard deviations, or not), runs the real ONNX model on them and
folds inputs and outputs with `edgefleet.shared.drift.WindowAccumulator`. It remembers every
window it made, so a test can compute the score the fleet should find.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgefleet.shared.drift import (
    ReferenceProfile,
    WindowAccumulator,
    WindowSketch,
    evaluate,
    merge_all,
)
from edgefleet.shared.package.read import read_package
from edgefleet.simulators.models import SensorFeed, TrainedModel
from tests.fleet.rollout_service.devices import DriftSource


class WineWindows:
    """Makes windows for `ProtocolFleet`'s ``drift`` source; see the module docstring."""

    def __init__(self, model: TrainedModel, packages: dict[str, Path]) -> None:
        self.model = model
        self.profiles: dict[str, ReferenceProfile] = {}
        for version, package in packages.items():
            manifest, _ = read_package(package)
            assert manifest.reference_profile is not None, f"{package} has no reference profile"
            self.profiles[version] = ReferenceProfile.model_validate(manifest.reference_profile)
        self._session = ort.InferenceSession(str(model.path))
        self._lock = threading.Lock()
        self.made: dict[tuple[str, str], list[WindowSketch]] = {}

    def window(self, device_id: str, version: str, *, shift: float, rows: int) -> WindowSketch:
        """One window of ``rows`` readings of ``device_id`` running ``version``."""
        feed = SensorFeed(self.model.x_train, seed=zlib.crc32(device_id.encode()))
        feed.shift = shift
        x = feed.sample(rows)
        with self._lock:
            label, probabilities = self._session.run(None, {"input": x})
        accumulator = WindowAccumulator(self.profiles[version])
        accumulator.add(x, {"label": np.asarray(label), "probabilities": np.asarray(probabilities)})
        sketch = accumulator.snapshot()
        with self._lock:
            self.made.setdefault((device_id, version), []).append(sketch)
        return sketch

    def source(self, *, version: str, shift: float = 0.0, rows: int = 1000) -> DriftSource:
        """A ``drift`` source: a window after committing ``version``, none for others."""

        def make(device_id: str, running: str) -> WindowSketch | None:
            if running != version:
                return None
            return self.window(device_id, running, shift=shift, rows=rows)

        return make

    def expected_score(self, device_ids: Sequence[str], version: str) -> tuple[float, str]:
        """(largest PSI, "role name") of the merge of the windows made for ``device_ids``."""
        with self._lock:
            sketches = [s for d in device_ids for s in self.made.get((d, version), [])]
        report = evaluate(self.profiles[version], merge_all(sketches))
        worst = max(
            (v.scores for v in report.features if v.scores.psi is not None),
            key=lambda f: f.psi or 0.0,
        )
        return worst.psi or 0.0, f"{worst.role} {worst.name}"
