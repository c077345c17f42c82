"""Building model packages (``<name>-<version>.efpkg``) on a workstation: `build_package`.

Building loads the model (`edgefleet.shared.runtime`), takes golden samples from the
reference data (`edgefleet.shared.modeltools.reference`) and profiles that data for drift
(`edgefleet.shared.drift.builder`). The device never imports this module: it reads
packages with `edgefleet.shared.package`.

Invariants: building is deterministic: sorted members, fixed mtimes, owners and modes,
golden arrays in a zip with fixed timestamps, ``created_at`` from the inputs (see
`build_package`), so the same inputs give the same bytes and the same sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tarfile
import zipfile
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ValidationError

from edgefleet.shared.durable import atomic_write_bytes
from edgefleet.shared.hashing import sha256_file
from edgefleet.shared.manifest import (
    FORMAT_VERSION,
    GOLDEN_FILE,
    MANIFEST_FILE,
    NAME_PATTERN,
    RUNTIMES,
    GoldenSpec,
    Lineage,
    ModelManifest,
    ProbationBudget,
    Tolerance,
    Version,
    VersionError,
)
from edgefleet.shared.modeltools.quantize import QUANTIZED_FROM_KEY, QuantizeError, quantized_from
from edgefleet.shared.modeltools.reference import (
    SchemaMismatchError,
    load_labels,
    load_reference,
)
from edgefleet.shared.package.format import (
    PACKAGE_SUFFIX,
    DataError,
    ManifestError,
    PackageError,
    manifest_bytes,
    manifest_problem,
)
from edgefleet.shared.package.golden import (
    Predictor,
    Tensors,
    run_model,
)
from edgefleet.shared.runtime import RuntimeLoadError, load_runtime
from edgefleet.shared.runtime.loader import RUNTIME_BY_SUFFIX
from edgefleet.shared.tensors import TensorSpec

log = logging.getLogger(__name__)


ProfileBuilder = Callable[[Tensors, Tensors, "list[str] | None"], "Mapping[str, Any] | BaseModel"]
Task = Literal["classification", "regression"]
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class ModelLoadError(PackageError):
    """A model file that its runtime cannot load."""


class GoldenFailureError(PackageError):
    """The model itself fails on its golden samples (exception, NaN or infinite outputs)."""


def _synthetic_inputs(specs: list[TensorSpec], count: int) -> Tensors:
    """Seeded inputs drawn from the schema alone, for packages built without data."""
    rng = np.random.default_rng(0)
    inputs: Tensors = {}
    for spec in specs:
        shape = (count, *(1 if d is None else d for d in spec.shape[1:]))
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            inputs[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            high = min(int(np.iinfo(dtype).max), 255)
            low = max(int(np.iinfo(dtype).min), -high)
            inputs[spec.name] = rng.integers(low, high, size=shape, endpoint=True).astype(dtype)
        elif dtype.kind == "b":
            inputs[spec.name] = rng.integers(0, 1, size=shape, endpoint=True).astype(bool)
        else:
            raise SchemaMismatchError(
                f"input {spec.name!r} has dtype {spec.dtype}: "
                "give reference data to take golden samples from"
            )
    return inputs


def _golden_rows(rows: int, count: int) -> NDArray[np.intp]:
    # Evenly spread, not random: reproducible across numpy versions and covers the data.
    if count >= rows:
        return np.arange(rows)
    return np.unique(np.linspace(0, rows - 1, count).round().astype(np.intp))


def _checked_outputs(outputs: Tensors, what: str) -> Tensors:
    for name, value in outputs.items():
        if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
            rows = value.reshape(len(value), -1) if value.ndim else value.reshape(1, 1)
            bad = [int(i) for i in np.flatnonzero(~np.isfinite(rows).all(axis=1))]
            raise GoldenFailureError(
                f"the model gives NaN or infinite {name!r} outputs on {what} "
                f"(samples {bad[:10]}{'...' if len(bad) > 10 else ''})"
            )
    return outputs


def _npz_bytes(arrays: Mapping[str, NDArray[Any]]) -> bytes:
    """An ``.npz`` with fixed timestamps (``np.savez`` stamps the current time)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[key]), allow_pickle=False)
    return buf.getvalue()


def _tar_bytes(members: Mapping[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(members[name]))
    return buf.getvalue()


def _default_created_at(model_file: Path) -> datetime:
    # Reproducible builds: SOURCE_DATE_EPOCH if set, else when the model file was written.
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    seconds = int(epoch) if epoch and epoch.isdigit() else int(model_file.stat().st_mtime)
    return datetime.fromtimestamp(seconds, UTC)


def _default_profile_builder(
    labels: NDArray[Any] | None = None, task: Task | None = None
) -> ProfileBuilder | None:
    try:
        from edgefleet.shared.drift.builder import build_profile
    except ImportError as e:
        log.info("packaging without a reference profile: shared.drift.builder: %s", e)
        return None

    def builder(inputs: Tensors, outputs: Tensors, names: list[str] | None) -> BaseModel:
        return build_profile(inputs, outputs, feature_names=names, labels=labels, task=task)

    return builder


def build_package(
    model_file: Path,
    *,
    name: str,
    version: str,
    out_dir: Path,
    reference_data: Path | None = None,
    golden_count: int = 32,
    tolerance: Tolerance | None = None,
    metrics: Mapping[str, float] | None = None,
    min_agent_version: str | None = None,
    training_data: Path | None = None,
    lineage: Lineage | None = None,
    feature_names: list[str] | None = None,
    probation: ProbationBudget | None = None,
    runtime: str | None = None,
    created_at: datetime | None = None,
    profile_builder: ProfileBuilder | None = None,
    labels: Path | None = None,
    task: Task | None = None,
) -> Path:
    """Write ``out_dir/<name>-<version>.efpkg`` and return its path.

    Golden samples are ``golden_count`` rows spread evenly over ``reference_data`` (or
    seeded synthetic inputs without it), with the outputs the model gives for them now.
    The reference profile is built from ``reference_data`` by ``profile_builder`` (by
    default `edgefleet.shared.drift.builder.build_profile` when that module exists). ``created_at``
    defaults to ``SOURCE_DATE_EPOCH`` or the model file's mtime, so rebuilding the same
    inputs gives byte-identical packages. ``labels`` (one per ``reference_data`` row, see
    `load_labels`) go into the profile with the baseline metrics on that data, which the
    device needs to join late labels (``POST /v1/feedback``) and the fleet to see a
    performance drop; ``task`` says how to read them (inferred when None). ``lineage``
    goes into the manifest as given, with ``quantized_from`` filled in from an ONNX model
    that `quantize_onnx <edgefleet.shared.modeltools.quantize.quantize_onnx>` wrote.

    Raises `ManifestError` (bad name, version, runtime, lineage that contradicts the
    model's quantization stamp, ...), `ModelLoadError`,
    `DataError`/`SchemaMismatchError` (reference data or labels) and `GoldenFailureError`.
    """
    runtime_name = _check_identity(model_file, name, version, min_agent_version, runtime)
    if labels is not None and (reference_data is None or profile_builder is not None):
        raise DataError(f"{labels}: labels need reference data and the default profile builder")

    try:
        model = load_runtime(model_file, runtime=runtime_name)
    except RuntimeLoadError as e:
        raise ModelLoadError(f"{model_file}: the {runtime_name} runtime cannot load it: {e}") from e
    try:
        specs = list(model.inputs)
        if reference_data is not None:
            reference, csv_names = load_reference(reference_data, specs)
            feature_names = feature_names or csv_names
        else:
            reference = None
        if reference is not None:
            rows = _golden_rows(len(next(iter(reference.values()))), golden_count)
            golden_in = {k: v[rows] for k, v in reference.items()}
        else:
            golden_in = _synthetic_inputs(specs, golden_count)
        golden_out = _predict(model, golden_in, "its golden samples") if golden_count else {}
        if labels is not None and reference is not None:
            row_count = len(next(iter(reference.values())))
            profile_builder = _default_profile_builder(load_labels(labels, row_count), task)
        elif task is not None and profile_builder is None:
            raise DataError(f"a task ({task}) needs labels to describe")
        profile = _reference_profile(
            model, reference, feature_names, profile_builder, source=str(reference_data)
        )
        outputs = list(model.outputs)
    finally:
        model.close()

    lineage = _with_quantized_from(model_file, runtime_name, lineage, f"{name} {version}")
    model_bytes = model_file.read_bytes()
    model_member = f"model{model_file.suffix.lower() or '.' + runtime_name}"
    members = {model_member: model_bytes}
    golden = None
    if golden_count:
        golden_bytes = _npz_bytes(
            {f"in:{k}": v for k, v in golden_in.items()}
            | {f"out:{k}": v for k, v in golden_out.items()}
        )
        members[GOLDEN_FILE] = golden_bytes
        golden = GoldenSpec(
            sha256=hashlib.sha256(golden_bytes).hexdigest(),
            count=len(next(iter(golden_in.values()))),
            source="reference" if reference is not None else "synthetic",
            tolerance=tolerance or Tolerance(),
        )
    try:
        manifest = ModelManifest(
            format_version=FORMAT_VERSION,
            name=name,
            version=version,
            runtime=runtime_name,  # type: ignore[arg-type]  # checked by _check_identity
            model_file=model_member,
            inputs=specs,
            outputs=outputs,
            sha256=hashlib.sha256(model_bytes).hexdigest(),
            size_bytes=len(model_bytes),
            created_at=created_at or _default_created_at(model_file),
            training_data_sha256=_training_data_sha256(training_data),
            metrics=dict(metrics or {}),
            min_agent_version=min_agent_version,
            golden=golden,
            reference_profile=profile,
            probation=probation or ProbationBudget(),
            feature_names=feature_names,
            lineage=lineage,
        )
    except ValidationError as e:
        raise ManifestError(f"{name} {version}: invalid manifest: {manifest_problem(e)}") from e
    members[MANIFEST_FILE] = manifest_bytes(manifest)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}-{version}{PACKAGE_SUFFIX}"
    atomic_write_bytes(out, _tar_bytes(members))
    log.info("packaged %s %s as %s", name, version, out)
    return out


def _with_quantized_from(
    model_file: Path, runtime: str, lineage: Lineage | None, what: str
) -> Lineage | None:
    """``lineage`` with ``quantized_from`` taken from the model's quantization stamp."""
    if runtime != "onnx":
        return lineage
    try:
        stamp = quantized_from(model_file)
    except QuantizeError as e:  # the runtime loaded it, so this is not expected
        raise ModelLoadError(str(e)) from e
    if stamp is None:
        return lineage
    given = lineage.quantized_from if lineage is not None else None
    if given is not None and given != stamp:
        raise ManifestError(
            f"{what}: lineage says quantized from {given}, but {model_file.name} was "
            f"quantized from {stamp} (its {QUANTIZED_FROM_KEY} metadata)"
        )
    fields = lineage.model_dump() if lineage is not None else {}
    try:
        return Lineage.model_validate({**fields, "quantized_from": stamp})
    except ValidationError as e:
        raise ManifestError(f"{what}: bad quantization stamp: {manifest_problem(e)}") from e


def _training_data_sha256(training_data: Path | None) -> str | None:
    if training_data is None:
        return None
    try:
        return sha256_file(training_data)
    except OSError as e:
        raise DataError(f"{training_data}: cannot read training data: {e.strerror or e}") from e


def _check_identity(
    model_file: Path, name: str, version: str, min_agent_version: str | None, runtime: str | None
) -> str:
    """Fail fast, before loading anything, on names the manifest would refuse."""
    if not re.match(NAME_PATTERN, name):
        raise ManifestError(
            f"model name {name!r} must be 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    try:
        Version.parse(version)
        if min_agent_version is not None:
            Version.parse(min_agent_version)
    except VersionError as e:
        raise ManifestError(str(e)) from e
    if runtime is None:
        runtime = RUNTIME_BY_SUFFIX.get(model_file.suffix.lower())
        if runtime is None:
            raise ManifestError(
                f"{model_file}: cannot tell the runtime from the suffix {model_file.suffix!r}; "
                f"expected .onnx or .tflite, or name the runtime ({', '.join(RUNTIMES)})"
            )
    if runtime not in RUNTIMES:
        raise ManifestError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
    return runtime


def _predict(model: Predictor, inputs: Tensors, what: str) -> Tensors:
    try:
        outputs = run_model(model, inputs)
    except Exception as e:  # the runtimes raise InferenceError; anything else is as fatal
        raise GoldenFailureError(f"the model fails on {what}: {e}") from e
    return _checked_outputs(outputs, what)


def _reference_profile(
    model: Predictor,
    reference: Tensors | None,
    feature_names: list[str] | None,
    builder: ProfileBuilder | None,
    *,
    source: str,
) -> dict[str, Any] | None:
    if reference is None:
        return None
    builder = builder or _default_profile_builder()
    if builder is None:
        return None
    outputs = _predict(model, reference, "the reference data")
    try:
        profile = builder(reference, outputs, feature_names)
    except ValueError as e:  # the drift library's errors are ValueErrors
        raise DataError(f"{source}: cannot build the reference profile: {e}") from e
    if isinstance(profile, BaseModel):
        dumped: dict[str, Any] = profile.model_dump(mode="json")
        return dumped
    return json.loads(json.dumps(dict(profile)))  # type: ignore[no-any-return]
