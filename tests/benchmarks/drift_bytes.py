"""Bytes of one drift report (the DriftMessage JSON): version 1 against the compact form.

Run: .venv/bin/python tests/benchmarks/drift_bytes.py

The model: a three-class logistic regression (ONNX, through onnxruntime) on 16 synthetic
sensor channels (scikit-learn's ``make_classification``, rescaled to sensor-like ranges
and named like sensors). Every channel varies, and nothing drops features: the profile
builder keeps a constant column too (as one bin and its two outer bins), so the report
carries the 16 inputs the script asserts, plus the model's outputs (the predicted label
and three class probabilities) and, as a device with late feedback would, labels for a
tenth of the rows (confusion matrix and per-class score histograms).

Both forms are measured on the same windows in the same run: the version-1 payload as
agents before the compact form send it (full-precision floats, long keys), and the
compact payload the agent sends now (bin counts packed as base64 of varints, floats
rounded by ``quantize`` first; see ``shared/drift/compact.py`` for what each step saves,
measured with this script). Also shown:
the compact form without the rounding (what the format alone saves) and zlib level 9
of both (the wire stays plain JSON; this is for comparison). Target: at most 2 KB
(2,048 bytes) for 16 features and 10,000 rows.
"""

from __future__ import annotations

import tempfile
import zlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from edgefleet.shared.drift import ReferenceProfile, WindowAccumulator, WindowSketch, build_profile
from edgefleet.shared.drift.compact import quantize
from edgefleet.shared.messages import DriftMessage, ModelRef, encode
from edgefleet.simulators.models import SensorFeed

TARGET_BYTES = 2048
SENSORS = [
    "temperature_c",
    "humidity_pct",
    "pressure_hpa",
    "vibration_rms",
    "current_a",
    "voltage_v",
    "rpm",
    "flow_lpm",
    "torque_nm",
    "noise_db",
    "co2_ppm",
    "pm25_ugm3",
    "light_lux",
    "battery_v",
    "rssi_dbm",
    "latency_ms",
]


def train_sensor_classifier(
    path: Path, *, seed: int = 0
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """A 16-input, 3-class ONNX classifier saved at ``path``; returns its training data."""
    from skl2onnx import to_onnx
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = make_classification(
        n_samples=2000, n_features=len(SENSORS), n_informative=8, n_classes=3, random_state=seed
    )
    rng = np.random.default_rng(seed)
    # Sensor-like scales and offsets, so the floats on the wire look like real readings.
    x = (x * rng.uniform(0.5, 50, x.shape[1]) + rng.uniform(-100, 1000, x.shape[1])).astype(
        np.float32
    )
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    onnx_model = to_onnx(
        pipeline, x[:1], options={id(pipeline.steps[-1][1]): {"zipmap": False}}, target_opset=17
    )
    graph = onnx_model.graph
    old = graph.input[0].name
    graph.input[0].name = "input"
    for node in graph.node:
        node.input[:] = ["input" if name == old else name for name in node.input]
    path.write_bytes(onnx_model.SerializeToString())
    return x, y.astype(np.int64)


def version1_payload(message: DriftMessage) -> bytes:
    """``message`` as agents before the compact form send it (as in tests.support)."""
    envelope = encode(message.model_copy(update={"sketch": None}))
    assert message.sketch is not None
    assert envelope.endswith(b'"sketch":null}')
    return envelope[: -len(b"null}")] + message.sketch.model_dump_json().encode() + b"}"


def window(
    session: ort.InferenceSession, profile: ReferenceProfile, x: NDArray[np.float32]
) -> WindowSketch:
    label, probabilities = session.run(None, {"input": x})
    outputs = {"label": label, "probabilities": probabilities}
    accumulator = WindowAccumulator(profile)
    accumulator.add(x, outputs)
    labelled = slice(0, len(x) // 10)
    accumulator.add_labels({k: v[labelled] for k, v in outputs.items()}, label[labelled].copy())
    return accumulator.snapshot()


def main() -> None:
    path = Path(tempfile.mkdtemp()) / "sensors.onnx"
    x_train, y_train = train_sensor_classifier(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"input": x_train})
    profile = build_profile(
        x_train,
        {"label": label, "probabilities": probabilities},
        feature_names=SENSORS,
        labels=y_train,
    )
    assert len(profile.inputs) == 16, [f.name for f in profile.inputs]
    print(
        f"{len(profile.inputs)} input features, {len(profile.outputs)} output features "
        f"({', '.join(f.name for f in profile.outputs)}), labels on 10 % of the rows"
    )
    feed = SensorFeed(x_train, seed=3)
    now = datetime.now(UTC)
    header = ("rows", "v1 B", "compact B", "ratio", "unrounded", "zlib v1", "zlib compact")
    print("{:>6} {:>6} {:>10} {:>6} {:>10} {:>8} {:>13}".format(*header))
    verdict_bytes = 0
    for rows in (1_000, 10_000):
        sketch = window(session, profile, feed.sample(rows))

        def message(s: WindowSketch, rows: int = rows) -> DriftMessage:
            return DriftMessage(
                device_id="device-0001",
                seq=1_733_000_000_000_000,
                model=ModelRef(name="sensors", version="1.0.0", sha256="0" * 64),
                window_start=now,
                window_end=now,
                count=rows,
                sketch=s,
            )

        old = version1_payload(message(sketch))
        new = encode(message(quantize(sketch, profile)))
        unrounded = encode(message(sketch))
        print(
            f"{rows:>6} {len(old):>6} {len(new):>10} {len(old) / len(new):>5.2f}x "
            f"{len(unrounded):>10} {len(zlib.compress(old, 9)):>8} "
            f"{len(zlib.compress(new, 9)):>13}"
        )
        verdict_bytes = len(new)
    met = verdict_bytes <= TARGET_BYTES
    print(
        f"target: <= {TARGET_BYTES} B for 16 features x 10,000 rows; compact: {verdict_bytes} B "
        f"({verdict_bytes / TARGET_BYTES:.3f}x the target, {TARGET_BYTES - verdict_bytes:+d} B "
        f"to spare): {'MET' if met else 'NOT MET'}"
    )


if __name__ == "__main__":
    main()
