"""Small real models trained on the spot from datasets that scikit-learn ships.

The demo, the simulators and the tests all use these, so every run exercises a real
ONNX model (trained, converted with skl2onnx, executed by onnxruntime) without
downloading anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

INPUT_NAME = "input"


@dataclass(frozen=True)
class TrainedModel:
    """An ONNX model file and the data it was trained and checked on."""

    path: Path
    n_features: int
    feature_names: list[str]
    x_train: NDArray[np.float32]
    y_train: NDArray[np.int64]
    x_test: NDArray[np.float32]
    y_test: NDArray[np.int64]
    accuracy: float


def train_wine_classifier(out_path: Path, *, seed: int = 0, max_iter: int = 500) -> TrainedModel:
    """Train a scaled logistic regression on scikit-learn's bundled wine data, save as ONNX.

    The 13 chemical measurements stand in for a sensor box's readings. The ONNX graph
    takes ``input`` float32 ``[N, 13]`` and returns ``label`` int64 ``[N]`` and
    ``probabilities`` float32 ``[N, 3]``.
    """
    from skl2onnx import to_onnx
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_wine()
    x = data.data.astype(np.float32)
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.3, random_state=seed, stratify=y
    )
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    pipeline.fit(x_train, y_train)
    accuracy = float(pipeline.score(x_test, y_test))
    onnx_model = to_onnx(
        pipeline,
        x_train[:1],
        options={id(pipeline.steps[-1][1]): {"zipmap": False}},
        initial_types=None,
        target_opset=17,
    )
    # skl2onnx names the input "X"; rename it so every edgefleet test model agrees.
    graph = onnx_model.graph
    old = graph.input[0].name
    graph.input[0].name = INPUT_NAME
    for node in graph.node:
        node.input[:] = [INPUT_NAME if name == old else name for name in node.input]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(onnx_model.SerializeToString())
    return TrainedModel(
        path=out_path,
        n_features=x.shape[1],
        feature_names=[str(n) for n in data.feature_names],
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        accuracy=accuracy,
    )


class SensorFeed:
    """Synthetic sensor readings drawn around the training data, optionally shifted.

    ``shift`` is in units of each feature's standard deviation, so a simulated device
    can start drifting partway through a demo.
    """

    def __init__(self, reference: NDArray[np.float32], *, seed: int = 0) -> None:
        self._mean = reference.mean(axis=0)
        self._std = reference.std(axis=0) + 1e-6
        self._reference = reference
        self._rng = np.random.default_rng(seed)
        self.shift = 0.0

    def sample(self, n: int = 1) -> NDArray[np.float32]:
        """``n`` readings: real training rows with a little noise, plus the current shift."""
        rows = self._reference[self._rng.integers(0, len(self._reference), size=n)]
        noise = self._rng.normal(0.0, 0.05, size=rows.shape) * self._std
        shifted: NDArray[np.float32] = (rows + noise + self.shift * self._std).astype(np.float32)
        return shifted
