"""Real models and a real package for the model-package tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgefleet.shared.modeltools.builder import build_package
from edgefleet.simulators.models import INPUT_NAME, TrainedModel, train_wine_classifier

NARROW_FEATURES = 4


def _graph_model(path: Path, *, op: str, dtype: int, width: int) -> Path:
    """A one-op ONNX graph over ``input`` [N, width]: Identity, or Sqrt(Neg(x))."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info(INPUT_NAME, dtype, [None, width])
    y = helper.make_tensor_value_info("output", dtype, [None, width])
    if op == "identity":
        nodes = [helper.make_node("Identity", [INPUT_NAME], ["output"])]
    else:
        nodes = [
            helper.make_node("Neg", [INPUT_NAME], ["negated"]),
            helper.make_node("Sqrt", ["negated"], ["output"]),
        ]
    graph = helper.make_graph(nodes, "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert dtype in (TensorProto.FLOAT, TensorProto.INT64)
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("modelpkg-models")


@pytest.fixture(scope="session")
def narrow_model(models_dir: Path) -> Path:
    """A real logistic regression on only the first 4 wine features: input [N, 4]."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression

    data = load_wine()
    x = data.data[:, :NARROW_FEATURES].astype(np.float32)
    clf = LogisticRegression(max_iter=300).fit(x, data.target)
    onnx_model = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    path = models_dir / "narrow.onnx"
    path.write_bytes(onnx_model.SerializeToString())
    return path


@pytest.fixture(scope="session")
def other_wine_model(models_dir: Path) -> TrainedModel:
    """A second wine classifier, trained on another split: same schema, other outputs."""
    return train_wine_classifier(models_dir / "wine-other.onnx", seed=7, max_iter=20)


@pytest.fixture(scope="session")
def int_model(models_dir: Path) -> Path:
    from onnx import TensorProto

    return _graph_model(models_dir / "ints.onnx", op="identity", dtype=TensorProto.INT64, width=13)


@pytest.fixture(scope="session")
def nan_model(models_dir: Path) -> Path:
    """sqrt(-x): NaN on every positive input, as wine measurements are."""
    from onnx import TensorProto

    return _graph_model(models_dir / "nan.onnx", op="nan", dtype=TensorProto.FLOAT, width=13)


@pytest.fixture(scope="session")
def reference_npy(wine_model: TrainedModel, models_dir: Path) -> Path:
    path = models_dir / "wine-reference.npy"
    np.save(path, wine_model.x_train)
    return path


@pytest.fixture(scope="session")
def built_package(
    wine_model: TrainedModel, reference_npy: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """One wine package per session; tests that alter it work on a copy."""
    return build_package(
        wine_model.path,
        name="wine",
        version="1.0.0",
        out_dir=tmp_path_factory.mktemp("built"),
        reference_data=reference_npy,
        golden_count=16,
        feature_names=wine_model.feature_names,
        metrics={"accuracy": wine_model.accuracy},
    )


@pytest.fixture
def package_copy(built_package: Path, tmp_path: Path) -> Path:
    return Path(shutil.copy(built_package, tmp_path / built_package.name))
