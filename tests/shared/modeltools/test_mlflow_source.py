"""``edgefleet model package --from-mlflow`` against a real, local MLflow tracking store.

The store is MLflow's file store in a temporary directory (MLflow 3 wants
``MLFLOW_ALLOW_FILE_STORE`` for it); one scikit-learn model is logged in the sklearn
flavor and one, converted with skl2onnx, in the onnx flavor, each registered.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from edgefleet.shared.cli import main
from edgefleet.shared.manifest import MAX_LINEAGE_PARAMS, MAX_PARAM_VALUE_CHARS
from edgefleet.shared.modeltools import mlflow_source
from edgefleet.shared.modeltools.mlflow_source import MlflowSourceError, parse_uri
from edgefleet.shared.package.read import extract_package, read_package

FEATURES = ["alcohol", "acidity", "ash", "colour"]


@dataclass(frozen=True)
class Store:
    uri: str
    x: NDArray[np.float32]
    sklearn_proba: NDArray[np.float64]
    sklearn_run_id: str
    onnx_run_id: str
    onnx_registered_ms: int


def _train() -> tuple[object, NDArray[np.float32], NDArray[np.int64]]:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, len(FEATURES))).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    return LogisticRegression(max_iter=300).fit(x, y), x, y


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        import mlflow
        import mlflow.onnx
        import mlflow.sklearn
        from mlflow.models import infer_signature
        from skl2onnx import to_onnx

        uri = (tmp_path_factory.mktemp("mlflow") / "store").as_uri()
        # Only while logging: the command must find the store from its own option.
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        model, x, _ = _train()
        import pandas as pd

        table = pd.DataFrame(x, columns=FEATURES)
        with mlflow.start_run() as sk_run:
            mlflow.log_params({"C": 1.0, "max_iter": 300, "notes": "n" * 1000})
            mlflow.log_metrics({"accuracy": 0.93, "f1": 0.91})
            mlflow.sklearn.log_model(
                model,
                name="model",
                signature=infer_signature(table, model.predict(x)),  # type: ignore[attr-defined]
                serialization_format="cloudpickle",
                pip_requirements=[],
                registered_model_name="wine-sk",
            )
            # The same model with a tensor signature: no column names, only a width.
            mlflow.sklearn.log_model(
                model,
                name="tensor-model",
                signature=infer_signature(x, model.predict(x)),  # type: ignore[attr-defined]
                serialization_format="cloudpickle",
                pip_requirements=[],
            )
        onnx_model = to_onnx(model, x[:1], options={id(model): {"zipmap": False}}, target_opset=17)
        with mlflow.start_run() as onnx_run:
            mlflow.log_params({"C": 2.0})
            mlflow.log_metric("accuracy", 0.88)
            mlflow.onnx.log_model(
                onnx_model, name="model", pip_requirements=[], registered_model_name="wine-onnx"
            )
        client = mlflow.MlflowClient()
        client.set_registered_model_alias("wine-sk", "production", "1")
        registered = client.get_model_version("wine-onnx", "1")
        mp.delenv("MLFLOW_TRACKING_URI")
        yield Store(
            uri=uri,
            x=x,
            sklearn_proba=model.predict_proba(x),  # type: ignore[attr-defined]
            sklearn_run_id=sk_run.info.run_id,
            onnx_run_id=onnx_run.info.run_id,
            onnx_registered_ms=int(registered.creation_timestamp),
        )


def _package(store: Store, uri: str, out: Path, *extra: str) -> tuple[int, Path]:
    code = main(
        [
            "model", "package", "--from-mlflow", uri, "--mlflow-tracking-uri", store.uri,
            "--name", "wine", "--version", "2.0.0", "--golden", "4", "--out", str(out),
            *extra,
        ]
    )  # fmt: skip
    return code, out / "wine-2.0.0.efpkg"


def _scores(package: Path, tmp_path: Path, x: NDArray[np.float32]) -> NDArray[np.float32]:
    """Class scores of the packaged model, run by the real onnxruntime."""
    import onnxruntime as ort

    manifest, _ = read_package(package)  # verifies every member's digest
    extract_package(package, tmp_path / "extracted")
    model = tmp_path / "extracted" / manifest.model_file
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    score_name = next(o.name for o in session.get_outputs() if len(o.shape) == 2)
    result: NDArray[np.float32] = session.run([score_name], {session.get_inputs()[0].name: x})[0]
    return result


def test_registered_sklearn_model_is_converted_with_its_run_lineage(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, built = _package(store, "models:/wine-sk/1", tmp_path, "--code-revision", "abc123")
    assert code == 0, capsys.readouterr().err
    # The store was set for the fetch only: nothing is left in the environment.
    assert "MLFLOW_TRACKING_URI" not in os.environ
    manifest, _ = read_package(built)
    assert manifest.lineage is not None
    assert manifest.lineage.run_uri == f"runs:/{store.sklearn_run_id}"
    assert manifest.lineage.source == "models:/wine-sk/1"
    assert manifest.lineage.code_revision == "abc123"
    assert manifest.lineage.params["C"] == "1.0"
    assert manifest.lineage.params["max_iter"] == "300"
    # MLflow keeps long values; the manifest cuts them to its bound.
    assert len(manifest.lineage.params["notes"]) == MAX_PARAM_VALUE_CHARS
    assert manifest.metrics == {"accuracy": 0.93, "f1": 0.91}
    # A column-based signature names the features.
    assert manifest.feature_names == FEATURES
    np.testing.assert_allclose(_scores(built, tmp_path, store.x), store.sklearn_proba, atol=1e-5)


def test_onnx_flavor_run_uri_is_packaged_as_logged(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"runs:/{store.onnx_run_id}/model"
    code, built = _package(store, uri, tmp_path, "--metric", "accuracy=0.9", "--param", "C=3")
    assert code == 0, capsys.readouterr().err
    manifest, _ = read_package(built)
    assert manifest.lineage is not None
    assert manifest.lineage.run_uri == f"runs:/{store.onnx_run_id}"
    assert manifest.lineage.source == uri
    # What the command line says wins over what the run recorded.
    assert manifest.metrics == {"accuracy": 0.9}
    assert manifest.lineage.params == {"C": "3"}
    np.testing.assert_allclose(_scores(built, tmp_path, store.x), store.sklearn_proba, atol=1e-5)


def test_registered_onnx_model_is_stamped_with_its_registration_time(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store from $MLFLOW_TRACKING_URI when the option is not given.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    argv = ["model", "package", "--from-mlflow", "models:/wine-onnx/1", "--golden", "4"]
    assert main([*argv, "--name", "wine", "--version", "2.0.0", "--out", str(tmp_path)]) == 0
    built = tmp_path / "wine-2.0.0.efpkg"
    manifest, _ = read_package(built)
    # created_at is MLflow's, not the download's mtime, so a rebuild gives the same bytes.
    assert manifest.created_at == datetime.fromtimestamp(store.onnx_registered_ms / 1000, UTC)
    assert main([*argv, "--name", "wine", "--version", "2.0.0", "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / built.name).read_bytes() == built.read_bytes()
    assert manifest.lineage is not None
    assert manifest.lineage.run_uri == f"runs:/{store.onnx_run_id}"
    assert manifest.lineage.params == {"C": "2.0"}


def test_sklearn_model_with_a_tensor_signature_takes_its_width_from_it(
    store: Store, tmp_path: Path
) -> None:
    code, built = _package(store, f"runs:/{store.sklearn_run_id}/tensor-model", tmp_path)
    assert code == 0
    manifest, _ = read_package(built)
    assert manifest.feature_names is None
    assert [(s.name, s.shape) for s in manifest.inputs] == [("input", [None, len(FEATURES)])]
    np.testing.assert_allclose(_scores(built, tmp_path, store.x), store.sklearn_proba, atol=1e-5)


def test_artifacts_without_a_model_are_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no model here")
    with pytest.raises(MlflowSourceError, match="no ONNX model and no scikit-learn model"):
        mlflow_source._onnx_file(tmp_path, None, tmp_path, "runs:/r/p")
    (tmp_path / "a.onnx").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.onnx").write_bytes(b"")
    with pytest.raises(MlflowSourceError, match=r"more than one ONNX model.*'a\.onnx', 'sub/b"):
        mlflow_source._onnx_file(tmp_path, None, tmp_path, "runs:/r/p")


def test_a_missing_model_version_is_a_clear_error(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, built = _package(store, "models:/wine-sk/9", tmp_path)
    err = capsys.readouterr().err
    assert code == 2
    assert "models:/wine-sk/9: not found in the MLflow store at" in err
    assert not built.exists()


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("runs:/0123456789abcdef/model", "Run '0123456789abcdef' not found"),
        ("models:/no-such-model/1", "no-such-model"),
        ("models:/wine-sk@staging", "alias staging not found"),
    ],
)
def test_a_missing_run_model_or_alias_is_a_clear_error(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str], uri: str, reason: str
) -> None:
    code, _ = _package(store, uri, tmp_path)
    err = capsys.readouterr().err
    assert code == 2
    assert f"{uri}: not found in the MLflow store at {store.uri}" in err
    assert reason in err


def test_a_run_path_without_a_model_is_a_clear_error(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"runs:/{store.onnx_run_id}/no-such-path"
    code, _ = _package(store, uri, tmp_path)
    assert code == 2
    assert f"{uri}: not found in the MLflow store" in capsys.readouterr().err


def test_an_alias_resolves_to_its_version_and_sklearn_builds_are_reproducible(
    store: Store, tmp_path: Path
) -> None:
    code, built = _package(store, "models:/wine-sk@production", tmp_path)
    assert code == 0
    manifest, _ = read_package(built)
    assert manifest.lineage is not None
    assert manifest.lineage.run_uri == f"runs:/{store.sklearn_run_id}"
    assert manifest.lineage.source == "models:/wine-sk@production"
    code, again = _package(store, "models:/wine-sk@production", tmp_path / "again")
    assert code == 0
    assert again.read_bytes() == built.read_bytes()


@pytest.mark.parametrize(
    "uri",
    ["s3://bucket/model", "models:/wine", "models:/wine/one", "runs:/abc", "models:/a/b/1", ""],
)
def test_a_uri_of_another_scheme_or_shape_is_refused(
    uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["model", "package", "--from-mlflow", uri, "--name", "w", "--version", "1.0.0"])
    assert code == 2
    assert "expected models:/NAME/VERSION" in capsys.readouterr().err


def test_model_file_and_from_mlflow_together_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["model", "package", "m.onnx", "--from-mlflow", "models:/w/1"]
    assert main([*argv, "--name", "w", "--version", "1.0.0"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["model", "package", "--name", "w", "--version", "1.0.0"]) == 2
    assert "give a MODEL_FILE to package, or --from-mlflow URI" in capsys.readouterr().err


def test_a_bad_lineage_option_fails_before_anything_is_downloaded(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The version does not exist: the error must be about the option, not the store.
    code, _ = _package(store, "models:/wine-sk/9", tmp_path, "--parent-version", "1.0")
    err = capsys.readouterr().err
    assert code == 2
    assert "--parent-version: version '1.0' is not a semantic version" in err
    assert "not found" not in err


def test_without_mlflow_installed_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what an absent package looks like
    with pytest.raises(MlflowSourceError, match=r"pip install 'edgefleet\[mlflow\]'"):
        mlflow_source.fetch_model("models:/w/1", tracking_uri=None, work_dir=tmp_path)


def test_uri_forms() -> None:
    assert parse_uri("models:/wine/12").version == "12"
    aliased = parse_uri("models:/wine@production")
    assert (aliased.name, aliased.alias, aliased.version) == ("wine", "production", None)
    run = parse_uri("runs:/a1b2/models/clf")
    assert (run.kind, run.run_id, run.path) == ("runs", "a1b2", "models/clf")


def test_params_are_bounded_in_count_and_length() -> None:
    params = {f"p{i:04d}": "v" for i in range(MAX_LINEAGE_PARAMS + 5)} | {"long": "x" * 9000}
    kept = mlflow_source.bounded_params(params)
    assert len(kept) == MAX_LINEAGE_PARAMS
    assert kept["long"] == "x" * (MAX_PARAM_VALUE_CHARS - 3) + "..."


def test_non_finite_metrics_are_left_out() -> None:
    assert mlflow_source.finite_metrics({"a": 1.0, "b": float("nan"), "c": float("inf")}) == {
        "a": 1.0
    }


def test_tensor_signatures_name_no_features() -> None:
    tensor = {"inputs": [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}}]}
    assert mlflow_source.feature_names_of(tensor) is None
    columns = {"inputs": [{"type": "double", "name": "a"}, {"type": "double", "name": "b"}]}
    assert mlflow_source.feature_names_of(columns) == ["a", "b"]
    assert json.loads(json.dumps(columns)) == columns
