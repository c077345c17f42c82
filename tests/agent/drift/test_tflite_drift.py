"""The drift path works for TFLite models exactly as for ONNX: real int8 models, real broker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.shared.drift import ReferenceProfile, evaluate
from edgefleet.shared.modeltools.builder import build_package
from edgefleet.shared.package.read import read_package
from edgefleet.simulators.models import SensorFeed
from edgefleet.simulators.tflite_models.catalog import model_path
from edgefleet.simulators.tflite_models.datasets import digits_split, wine_split
from tests.agent.drift.conftest import profiled_config, wait_drift
from tests.e2e.updates.support import Pkg


def _package(tmp_path: Path, file: str, reference: np.ndarray) -> Pkg:
    np.save(tmp_path / "reference.npy", reference)
    path = build_package(
        model_path(file),
        name="tflite-model",
        version="1.0.0",
        out_dir=tmp_path / "pkg",
        reference_data=tmp_path / "reference.npy",
        golden_count=8,
    )
    return Pkg(path, "1.0.0")


def _profile(pkg: Pkg) -> ReferenceProfile:
    manifest = read_package(pkg.path)[0]
    assert manifest.reference_profile is not None
    return ReferenceProfile.model_validate(manifest.reference_profile)


def test_int8_tflite_tabular_model_publishes_windows_that_show_a_shift(
    tmp_path, mosquitto, start_agent, drift_of, unique_id
) -> None:
    split = wine_split()
    pkg = _package(tmp_path, "wine_int8.tflite", split.x_train)
    device = f"tflite-wine-{unique_id}"
    sub = drift_of(device)
    agent = start_agent(
        profiled_config(tmp_path, mosquitto, device, pkg, window_count=400, window_s=3600)
    )
    assert agent.model_host.active is not None
    assert agent.model_host.active.runtime.runtime == "tflite"
    feed = SensorFeed(split.x_train, seed=5)
    for _ in range(4):
        agent.infer({"input": feed.sample(100)})
    feed.shift = 2.0
    for _ in range(4):
        agent.infer({"input": feed.sample(100)})
    calm, shifted = wait_drift(sub, device, 800)
    profile = _profile(pkg)
    assert calm.sketch is not None
    assert shifted.sketch is not None
    assert not evaluate(profile, calm.sketch).data_drift
    assert evaluate(profile, shifted.sketch).data_drift
    # The outputs are profiled as the float probabilities the runtime exposes.
    assert {f.tensor for f in profile.outputs} == {"probabilities"}


@pytest.mark.parametrize("file", ["digits_cnn_int8.tflite", "digits_cnn_float.tflite"])
def test_tflite_image_model_folds_every_pixel_into_its_windows(
    tmp_path, mosquitto, start_agent, drift_of, unique_id, file: str
) -> None:
    split = digits_split()
    pkg = _package(tmp_path, file, split.x_train)
    device = f"tflite-digits-{unique_id}"
    sub = drift_of(device)
    agent = start_agent(
        profiled_config(tmp_path, mosquitto, device, pkg, window_count=60, window_s=3600)
    )
    for start in range(0, 60, 20):
        agent.infer({"input": split.x_test[start : start + 20]})
    [window] = wait_drift(sub, device, 60)
    assert window.sketch is not None
    assert window.sketch.count == 60
    # One feature per pixel, as the package's profile defines them, every row folded.
    assert len(window.sketch.inputs) == len(_profile(pkg).inputs) == 64
    assert agent.model_host.drift_monitor is not None
    assert agent.model_host.drift_monitor.rejected_rows == 0
