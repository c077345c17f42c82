"""``edgefleet model package`` and ``edgefleet model inspect`` as a user runs them."""

from __future__ import annotations

import argparse
import hashlib
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edgefleet.shared.cli import CLIError, main
from edgefleet.shared.drift import ReferenceProfile
from edgefleet.shared.manifest import Lineage, ModelManifest, ProbationBudget
from edgefleet.shared.modeltools import cli
from edgefleet.shared.package.read import read_package
from edgefleet.simulators.models import TrainedModel


def _model_cli_loads() -> bool:
    # shared.modeltools.cli also imports the quantize and sign tools, written separately.
    import importlib

    try:
        for tool in ("quantize", "sign"):
            importlib.import_module(f"edgefleet.shared.modeltools.{tool}")
    except ImportError:
        return False
    return True


def _run(argv: list[str]) -> int:
    """Run through ``edgefleet``'s main when the model command loads, else our own parser."""
    if _model_cli_loads():
        return main(argv)
    parser = argparse.ArgumentParser(prog="edgefleet")
    model = parser.add_subparsers().add_parser("model")
    cli.add_package_commands(model.add_subparsers())
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except CLIError as e:  # what shared.cli.main does
        print(f"edgefleet: error: {e}", file=sys.stderr)
        return 2


def test_package_then_inspect(
    wine_model: TrainedModel,
    reference_npy: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = _run(
        [
            "model", "package", str(wine_model.path),
            "--name", "wine", "--version", "1.2.0-rc.1",
            "--reference", str(reference_npy), "--golden", "8", "--tolerance", "1e-3",
            "--metric", "accuracy=0.97", "--metric", "f1=0.95",
            "--training-data", str(reference_npy), "--min-agent-version", "0.1.0",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    built = tmp_path / "wine-1.2.0-rc.1.efpkg"
    assert out[0] == str(built)
    assert out[1] == f"sha256 {hashlib.sha256(built.read_bytes()).hexdigest()}"
    assert out[2].split() == ["size", str(built.stat().st_size)]

    assert _run(["model", "inspect", str(built)]) == 0
    shown = capsys.readouterr().out
    assert f"package {built}" in shown
    assert "model.onnx" in shown
    assert '"version": "1.2.0-rc.1"' in shown
    assert '"accuracy": 0.97' in shown

    assert _run(["model", "inspect", "--json", str(built)]) == 0
    manifest = ModelManifest.model_validate_json(capsys.readouterr().out)
    assert manifest.metrics == {"accuracy": 0.97, "f1": 0.95}
    assert manifest.min_agent_version == "0.1.0"
    assert manifest.golden is not None
    assert manifest.golden.count == 8
    assert manifest.golden.tolerance.atol == 1e-3


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        (["--version", "1.2"], "version '1.2' is not a semantic version"),
        (
            ["--version", "1.0.0", "--metric", "accuracy"],
            "--metric 'accuracy': expected NAME=NUMBER",
        ),
        (["--version", "1.0.0", "--golden", "-1"], "--golden -1: expected a count >= 0"),
        (["--version", "1.0.0", "--reference", "/nonexistent/ref.npy"], "cannot read reference"),
        (
            ["--version", "1.0.0", "--parent-version", "v1"],
            "--parent-version: version 'v1' is not a semantic version",
        ),
        (["--version", "1.0.0", "--param", "lr"], "--param 'lr': expected NAME=VALUE"),
        (["--version", "1.0.0", "--param", "=3"], "--param '=3': expected NAME=VALUE"),
        (["--version", "1.0.0", "--param", "a=1", "--param", "a=2"], "--param 'a' is given twice"),
        (["--version", "1.0.0", "--param", "a=" + "x" * 501], "lineage: params.a"),
        (["--version", "1.0.0", "--code-revision", "r" * 201], "lineage: code_revision"),
        (["--version", "1.0.0", "--quantized-from", "/nonexistent/f.onnx"], "--quantized-from"),
        (
            ["--version", "1.0.0", "--labels", "/nonexistent/y.npy"],
            "--labels needs --reference: one label per reference row",
        ),
        (
            ["--version", "1.0.0", "--probation-max-error-rate", "2"],
            "--probation-max-error-rate 2.0: Input should be less than or equal to 1",
        ),
        (
            ["--version", "1.0.0", "--probation-min-inferences", "-5"],
            "--probation-min-inferences -5: Input should be greater than or equal to 0",
        ),
    ],
)
def test_package_errors_are_one_clear_line(
    wine_model: TrainedModel,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    complaint: str,
) -> None:
    argv = ["model", "package", str(wine_model.path), "--name", "wine", "--out", str(tmp_path)]
    assert _run(argv + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("edgefleet: error: ")
    assert complaint in err[0]
    assert list(tmp_path.iterdir()) == []


def test_lineage_options_fill_the_manifest_lineage(
    wine_model: TrainedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    float_model = tmp_path / "float.onnx"
    float_model.write_bytes(b"the float model's bytes")
    code = _run(
        [
            "model", "package", str(wine_model.path), "--name", "wine", "--version", "1.3.0",
            "--golden", "4", "--out", str(tmp_path),
            "--code-revision", "9f1c2e7", "--run-uri", "runs:/4b1d",
            "--parent-version", "1.2.0", "--dataset-version", "wine-2024-05",
            "--param", "C=1.0", "--param", "solver=lbfgs", "--param", "note=a=b",
            "--quantized-from", str(float_model),
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    manifest, _ = read_package(tmp_path / "wine-1.3.0.efpkg")
    assert manifest.lineage == Lineage(
        code_revision="9f1c2e7",
        run_uri="runs:/4b1d",
        parent_version="1.2.0",
        dataset_version="wine-2024-05",
        params={"C": "1.0", "solver": "lbfgs", "note": "a=b"},
        quantized_from=hashlib.sha256(float_model.read_bytes()).hexdigest(),
    )


def test_labels_and_probation_options_fill_the_profile_and_the_budget(
    wine_model: TrainedModel,
    reference_npy: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without ``--labels`` a CLI package could never be sent feedback (the device said 409
    ``not_monitored``), and every CLI package held an update in a 300 s probation."""
    labels = tmp_path / "labels.csv"
    labels.write_text("class\n" + "\n".join(str(int(y)) for y in wine_model.y_train) + "\n")
    code = _run(
        [
            "model", "package", str(wine_model.path), "--name", "wine", "--version", "2.0.0",
            "--reference", str(reference_npy), "--golden", "4", "--out", str(tmp_path),
            "--labels", str(labels), "--task", "classification",
            "--probation-duration-s", "20", "--probation-min-inferences", "5",
            "--probation-max-latency-p95-ms", "40",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    manifest, _ = read_package(tmp_path / "wine-2.0.0.efpkg")
    assert manifest.probation == ProbationBudget(
        duration_s=20, min_inferences=5, max_latency_p95_ms=40, max_error_rate=0.01
    )
    assert manifest.reference_profile is not None
    profile = ReferenceProfile.model_validate(manifest.reference_profile)
    assert profile.labels is not None
    assert profile.labels.task == "classification"
    assert profile.labels.classes == ["0", "1", "2"]
    assert profile.labels.baseline["accuracy"] == pytest.approx(
        float(np.mean(_predicted(wine_model, wine_model.x_train) == wine_model.y_train))
    )


def test_labels_that_do_not_fit_the_reference_are_one_clear_line(
    wine_model: TrainedModel,
    reference_npy: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    short = tmp_path / "short.npy"
    np.save(short, wine_model.y_train[:10])
    two_columns = tmp_path / "two.csv"
    two_columns.write_text("1,2\n0,1\n")
    argv = ["model", "package", str(wine_model.path), "--name", "wine", "--version", "1.0.0"]
    argv += ["--reference", str(reference_npy), "--out", str(tmp_path / "out"), "--labels"]
    rows = len(wine_model.x_train)
    for path, complaint in [
        (short, f"10 labels for {rows} reference rows"),
        (two_columns, "cannot read labels: expected one column"),
    ]:
        assert _run([*argv, str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert complaint in err[0]


def _predicted(model: TrainedModel, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


def test_without_lineage_options_there_is_no_lineage(
    wine_model: TrainedModel, tmp_path: Path
) -> None:
    argv = ["model", "package", str(wine_model.path), "--name", "wine", "--version", "1.3.0"]
    assert _run([*argv, "--golden", "0", "--out", str(tmp_path)]) == 0
    manifest, _ = read_package(tmp_path / "wine-1.3.0.efpkg")
    assert manifest.lineage is None


def test_packaging_an_unloadable_file_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"garbage")
    code = _run(["model", "package", str(broken), "--name", "b", "--version", "1.0.0"])
    assert code == 2
    assert "broken.onnx: the onnx runtime cannot load it" in capsys.readouterr().err


def test_inspecting_a_tampered_package_fails(
    package_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with tarfile.open(package_copy) as tar:
        offset = tar.getmember("model.onnx").offset_data
    raw = bytearray(package_copy.read_bytes())
    raw[offset + 10] ^= 0xFF
    package_copy.write_bytes(bytes(raw))
    assert _run(["model", "inspect", str(package_copy)]) == 2
    assert "differs from the manifest's" in capsys.readouterr().err
