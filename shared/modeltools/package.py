"""Model packages (``<name>-<version>.efpkg``): build, read safely, extract, golden checks.

A package is an uncompressed tar of flat regular files: ``manifest.json``, the model
file and ``golden.npz`` (inputs and the outputs the model gave for them at build time).

Invariants:
- building is deterministic: sorted members, fixed mtimes, owners and modes, golden
  arrays in a zip with fixed timestamps, ``created_at`` from the inputs (see
  `build_package`), so the same inputs give the same bytes and the same sha256;
- reading trusts nothing in the archive: only plain-named regular files, no links,
  devices, directories, duplicates or oversized members, exactly the members the
  manifest names, and the model and golden files must match the manifest's sha256 and
  size before anything is reported as valid or left extracted.

Building runs the model, so it needs the agent's runtimes (`edgefleet.shared.runtime`), imported
lazily: this is off-device tooling, and reading/extracting/checking needs only numpy.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import re
import tarfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ValidationError

from edgefleet.shared.atomicio import atomic_write
from edgefleet.shared.manifest import (
    FORMAT_VERSION,
    GOLDEN_FILE,
    MANIFEST_FILE,
    NAME_PATTERN,
    RUNTIMES,
    GoldenSpec,
    ModelManifest,
    ProbationBudget,
    Tolerance,
    Version,
    VersionError,
)
from edgefleet.shared.messages import WireModel
from edgefleet.shared.tensors import TensorSpec

log = logging.getLogger(__name__)

Tensors = dict[str, NDArray[Any]]
ProfileBuilder = Callable[[Tensors, Tensors, "list[str] | None"], "Mapping[str, Any] | BaseModel"]

PACKAGE_SUFFIX = ".efpkg"
DEFAULT_MAX_MEMBER_BYTES = 1 << 30
MAX_MANIFEST_BYTES = 16 << 20
MAX_MEMBERS = 16
_SUFFIX_RUNTIME = {".onnx": "onnx", ".tflite": "tflite"}
_MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class PackageError(Exception):
    """Base of every model-package error."""


class ManifestError(PackageError):
    """A manifest that is invalid or unsupported: bad name, version, runtime, format."""


class PackageFormatError(PackageError):
    """A file that is not a readable package: not a tar, truncated, members missing."""


class UnsafeMemberError(PackageError):
    """An archive member that could escape or abuse the destination: links, devices, ``..``."""


class DigestMismatchError(PackageError):
    """A member whose sha256 or size differs from the manifest's (tampered or corrupt)."""


class ModelLoadError(PackageError):
    """A model file that its runtime cannot load."""


class DataError(PackageError):
    """Reference or golden data that cannot be read."""


class SchemaMismatchError(DataError):
    """Data whose shape, feature count or dtype differs from the model's input schema."""


class GoldenFailureError(PackageError):
    """The model itself fails on its golden samples (exception, NaN or infinite outputs)."""


class Predictor(Protocol):
    """What golden checks need from a loaded model; `edgefleet.shared.runtime.ModelRuntime` fits."""

    @property
    def inputs(self) -> list[TensorSpec]: ...

    def predict(self, inputs: Tensors) -> Tensors: ...


@dataclass(frozen=True)
class PackageMember:
    """One file in a package, as verified by `read_package`."""

    name: str
    size_bytes: int
    sha256: str


# ---------------------------------------------------------------------------- golden checks


class OutputComparison(WireModel):
    """How one output compared with its golden values."""

    name: str
    max_abs_error: float
    max_rel_error: float
    failed_samples: list[int]


class GoldenResult(WireModel):
    """The outcome of running a model on its golden samples."""

    passed: bool
    samples: int
    outputs: list[OutputComparison]
    failed_samples: list[int]
    problems: list[str]

    def summary(self) -> str:
        """One line for logs and deployment events."""
        if self.passed:
            return f"all {self.samples} golden samples within tolerance"
        worst = ", ".join(
            f"{o.name}: max abs error {o.max_abs_error:.3g}"
            for o in self.outputs
            if o.failed_samples
        )
        return "; ".join(
            [f"{len(self.failed_samples)} of {self.samples} golden samples failed", *self.problems]
            + ([worst] if worst else [])
        )


def compare_golden(expected: Tensors, actual: Tensors, tolerance: Tolerance) -> GoldenResult:
    """Compare outputs with golden ones: ``|a - e| <= atol + rtol * |e|`` element-wise.

    Pure. A missing output, a different shape, or a NaN where a number was expected
    fails; row ``i`` of every output is golden sample ``i``.
    """
    samples = max((len(v) if v.ndim else 1 for v in expected.values()), default=0)
    failed: set[int] = set()
    problems: list[str] = []
    comparisons: list[OutputComparison] = []
    for name in sorted(expected):
        want = expected[name]
        got = actual.get(name)
        if got is None or got.shape != want.shape:
            found = "missing" if got is None else f"shape {list(got.shape)}"
            problems.append(f"output {name!r}: expected shape {list(want.shape)}, found {found}")
            failed.update(range(samples))
            continue
        if want.dtype.kind in "biuf" and got.dtype.kind in "biuf":
            e, a = want.astype(np.float64), got.astype(np.float64)
            diff = np.abs(a - e)
            bad = ~(diff <= tolerance.atol + tolerance.rtol * np.abs(e))
            diff = np.where(np.isnan(diff), np.inf, diff)
            rel = diff / np.maximum(np.abs(e), np.finfo(np.float64).tiny)
        else:
            bad = want != got
            diff = rel = bad.astype(np.float64)
        rows = bad.reshape(len(bad), -1).any(axis=1) if bad.ndim else np.array([bool(bad)])
        bad_rows = [int(i) for i in np.flatnonzero(rows)]
        failed.update(bad_rows)
        comparisons.append(
            OutputComparison(
                name=name,
                max_abs_error=float(diff.max()) if diff.size else 0.0,
                max_rel_error=float(rel.max()) if rel.size else 0.0,
                failed_samples=bad_rows,
            )
        )
    return GoldenResult(
        passed=not failed and not problems,
        samples=samples,
        outputs=comparisons,
        failed_samples=sorted(failed),
        problems=problems,
    )


def load_golden(golden: Path | bytes) -> tuple[Tensors, Tensors]:
    """The golden inputs and expected outputs from a ``golden.npz``; raises `DataError`."""
    source = "golden data" if isinstance(golden, bytes) else str(golden)
    try:
        with np.load(
            io.BytesIO(golden) if isinstance(golden, bytes) else golden, allow_pickle=False
        ) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{source}: cannot read golden samples: {e}") from e
    inputs = {k.removeprefix("in:"): v for k, v in arrays.items() if k.startswith("in:")}
    outputs = {k.removeprefix("out:"): v for k, v in arrays.items() if k.startswith("out:")}
    if not inputs or not outputs:
        raise DataError(f"{source}: expected 'in:*' and 'out:*' arrays, found {sorted(arrays)}")
    return inputs, outputs


def run_model(runtime: Predictor, inputs: Tensors) -> Tensors:
    """Run ``inputs`` (rows along axis 0) through the model, in batches it accepts.

    Models with a fixed batch size (common for TFLite) get that many rows per call.
    Raises whatever ``runtime.predict`` raises.
    """
    rows = len(next(iter(inputs.values())))
    fixed = [s.shape[0] for s in runtime.inputs if s.shape and s.shape[0] is not None]
    batch = fixed[0] if fixed else max(rows, 1)
    parts = [
        runtime.predict({k: v[i : i + batch] for k, v in inputs.items()})
        for i in range(0, rows, batch)
    ]
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def check_golden(runtime: Predictor, golden: Path | bytes, tolerance: Tolerance) -> GoldenResult:
    """Run the golden inputs through ``runtime`` and compare with the expected outputs.

    A model that raises on the golden inputs gives a failed result naming the error.
    Raises `DataError` only if the golden file itself cannot be read.
    """
    inputs, expected = load_golden(golden)
    try:
        actual = run_model(runtime, inputs)
    except Exception as e:  # any runtime failure is a failed check, not a crash
        samples = len(next(iter(inputs.values())))
        return GoldenResult(
            passed=False,
            samples=samples,
            outputs=[],
            failed_samples=list(range(samples)),
            problems=[f"the model failed on the golden inputs: {e}"],
        )
    return compare_golden(expected, actual, tolerance)


# --------------------------------------------------------------------- reference data


def load_reference(path: Path, specs: list[TensorSpec]) -> tuple[Tensors, list[str] | None]:
    """Read reference data (``.npy``, ``.npz`` or ``.csv``) as model inputs.

    A ``.npy``, a single-array ``.npz`` or a ``.csv`` feeds a single-input model; a
    multi-input model needs an ``.npz`` with one array per input name. A CSV whose first
    row is not numeric gives the feature names. Returns the inputs, conformed to the
    schema, and the feature names if the file had them. Raises `DataError` if the file
    cannot be read and `SchemaMismatchError` if it does not fit ``specs``.
    """
    suffix = path.suffix.lower()
    names: list[str] | None = None
    lenient = False
    try:
        if suffix == ".npy":
            arrays = {"": np.load(path, allow_pickle=False)}
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        elif suffix == ".csv":
            table, names = _read_csv(path)
            arrays = {"": table}
            lenient = True
        else:
            raise DataError(f"{path}: unsupported reference data format; expected .npy, .npz, .csv")
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read reference data: {e}") from e
    wanted = [s.name for s in specs]
    if len(arrays) == 1 and len(specs) == 1:
        by_input = {specs[0].name: next(iter(arrays.values()))}
    elif sorted(arrays) == sorted(wanted):
        by_input = arrays
    else:
        raise SchemaMismatchError(
            f"{path}: the model takes inputs {wanted}, found arrays {sorted(arrays) or ['(one)']}"
        )
    inputs = {s.name: _conform(by_input[s.name], s, str(path), lenient=lenient) for s in specs}
    rows = {len(v) for v in inputs.values()}
    if len(rows) != 1 or 0 in rows:
        raise SchemaMismatchError(f"{path}: inputs need the same, non-zero row count; found {rows}")
    return inputs, names


def _read_csv(path: Path) -> tuple[NDArray[np.float64], list[str] | None]:
    with path.open(encoding="utf-8") as f:
        first = f.readline().strip().split(",")
    try:
        [float(x) for x in first]
        header = None
    except ValueError:
        header = [x.strip() for x in first]
    data = np.loadtxt(path, delimiter=",", skiprows=1 if header else 0, ndmin=2, dtype=np.float64)
    return data, header


def _conform(array: NDArray[Any], spec: TensorSpec, source: str, *, lenient: bool) -> NDArray[Any]:
    """``array`` cast to ``spec``'s dtype if that loses nothing; raises `SchemaMismatchError`."""
    shape = spec.shape
    fixed_ok = all(
        want is None or want == got for want, got in zip(shape[1:], array.shape[1:], strict=False)
    )
    if array.ndim != len(shape) or not shape or not fixed_ok:
        detail = ""
        if len(shape) == 2 and array.ndim == 2 and shape[1] is not None:
            detail = f" ({shape[1]} features per row, found {array.shape[1]})"
        raise SchemaMismatchError(
            f"{source}: input {spec.name!r} expects shape {_show(shape)}, "
            f"found {list(array.shape)}{detail}"
        )
    try:
        want = np.dtype(spec.dtype)
    except TypeError as e:
        raise SchemaMismatchError(f"input {spec.name!r} has unsupported dtype {spec.dtype}") from e
    if array.dtype == want:
        return array
    mismatch = SchemaMismatchError(
        f"{source}: input {spec.name!r} expects dtype {want.name}, found {array.dtype.name}"
    )
    if want.kind in "iu" and array.dtype.kind in "iuf":
        if array.dtype.kind == "f" and not (lenient and np.all(np.mod(array, 1) == 0)):
            raise mismatch
        info = np.iinfo(want)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise mismatch
        return array.astype(want)
    if np.can_cast(array.dtype, want, casting="same_kind"):
        return array.astype(want)
    raise mismatch


def _show(shape: list[int | None]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


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


# ----------------------------------------------------------------------------- building


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


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _default_created_at(model_file: Path) -> datetime:
    # Reproducible builds: SOURCE_DATE_EPOCH if set, else when the model file was written.
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    seconds = int(epoch) if epoch and epoch.isdigit() else int(model_file.stat().st_mtime)
    return datetime.fromtimestamp(seconds, UTC)


def _default_profile_builder() -> ProfileBuilder | None:
    try:
        from edgefleet.shared.drift.profile import build_profile
    except ImportError as e:
        log.info("packaging without a reference profile: shared.drift.profile: %s", e)
        return None

    def builder(inputs: Tensors, outputs: Tensors, names: list[str] | None) -> BaseModel:
        return build_profile(inputs, outputs, feature_names=names)

    return builder


def _manifest_problem(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in item['loc']) or 'manifest'}: {item['msg']}"
        for item in error.errors()[:5]
    )


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
    feature_names: list[str] | None = None,
    probation: ProbationBudget | None = None,
    runtime: str | None = None,
    created_at: datetime | None = None,
    profile_builder: ProfileBuilder | None = None,
) -> Path:
    """Write ``out_dir/<name>-<version>.efpkg`` and return its path.

    Golden samples are ``golden_count`` rows spread evenly over ``reference_data`` (or
    seeded synthetic inputs without it), with the outputs the model gives for them now.
    The reference profile is built from ``reference_data`` by ``profile_builder`` (by
    default `edgefleet.shared.drift.profile.build_profile` when that module exists). ``created_at``
    defaults to ``SOURCE_DATE_EPOCH`` or the model file's mtime, so rebuilding the same
    inputs gives byte-identical packages.

    Raises `ManifestError` (bad name, version, runtime, ...), `ModelLoadError`,
    `DataError`/`SchemaMismatchError` (reference data) and `GoldenFailureError`.
    """
    runtime_name = _check_identity(model_file, name, version, min_agent_version, runtime)
    from edgefleet.shared.runtime import RuntimeLoadError, load_runtime

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
        profile = _reference_profile(
            model, reference, feature_names, profile_builder, source=str(reference_data)
        )
        outputs = list(model.outputs)
    finally:
        model.close()

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
            training_data_sha256=_lineage(training_data),
            metrics=dict(metrics or {}),
            min_agent_version=min_agent_version,
            golden=golden,
            reference_profile=profile,
            probation=probation or ProbationBudget(),
            feature_names=feature_names,
        )
    except ValidationError as e:
        raise ManifestError(f"{name} {version}: invalid manifest: {_manifest_problem(e)}") from e
    members[MANIFEST_FILE] = manifest_bytes(manifest)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}-{version}{PACKAGE_SUFFIX}"
    atomic_write(out, _tar_bytes(members))
    log.info("packaged %s %s as %s", name, version, out)
    return out


def _lineage(training_data: Path | None) -> str | None:
    if training_data is None:
        return None
    try:
        return sha256_file(training_data)
    except OSError as e:
        raise DataError(f"{training_data}: cannot read training data: {e.strerror or e}") from e


def manifest_bytes(manifest: ModelManifest) -> bytes:
    """The canonical ``manifest.json`` bytes: sorted keys, so equal manifests hash equal."""
    return (json.dumps(manifest.model_dump(mode="json"), sort_keys=True, indent=2) + "\n").encode()


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
        runtime = _SUFFIX_RUNTIME.get(model_file.suffix.lower())
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


# ------------------------------------------------------------------------------ reading


def _safe_infos(tar: tarfile.TarFile, source: str, max_member_bytes: int) -> list[tarfile.TarInfo]:
    """Every header, checked before any content is read; raises `UnsafeMemberError`."""
    infos: list[tarfile.TarInfo] = []
    seen: set[str] = set()
    for info in tar:
        if len(infos) >= MAX_MEMBERS:
            raise UnsafeMemberError(f"{source}: more than {MAX_MEMBERS} members")
        name = info.name
        if not _MEMBER_NAME.match(name) or ".." in name:
            raise UnsafeMemberError(
                f"{source}: member {name!r} is not a plain file name "
                "(absolute path, directory part or '..')"
            )
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            kind = (
                "a link"
                if info.issym() or info.islnk()
                else "a directory"
                if info.isdir()
                else "a device or fifo"
                if info.isdev()
                else f"of tar type {info.type!r}"
            )
            raise UnsafeMemberError(f"{source}: member {name!r} is {kind}, not a regular file")
        if name in seen:
            raise UnsafeMemberError(f"{source}: member {name!r} appears twice")
        limit = MAX_MANIFEST_BYTES if name == MANIFEST_FILE else max_member_bytes
        if info.size > limit:
            raise UnsafeMemberError(
                f"{source}: member {name!r} is {info.size} bytes, over the {limit}-byte limit"
            )
        seen.add(name)
        infos.append(info)
    return infos


@dataclass(frozen=True)
class _Opened:
    manifest: ModelManifest
    infos: dict[str, tarfile.TarInfo]


def _open_manifest(tar: tarfile.TarFile, source: str, max_member_bytes: int) -> _Opened:
    infos = {i.name: i for i in _safe_infos(tar, source, max_member_bytes)}
    if MANIFEST_FILE not in infos:
        raise PackageFormatError(f"{source}: no {MANIFEST_FILE}; found {sorted(infos)}")
    raw = _read_member(tar, infos[MANIFEST_FILE])
    try:
        data = json.loads(raw)
        found_format = data.get("format_version") if isinstance(data, dict) else None
        if isinstance(found_format, int) and found_format > FORMAT_VERSION:
            raise ManifestError(
                f"{source}: package format {found_format} is newer than the "
                f"supported {FORMAT_VERSION}; upgrade edgefleet"
            )
        manifest = ModelManifest.model_validate(data)
    except (ValueError, ValidationError) as e:
        if isinstance(e, ManifestError):
            raise
        detail = _manifest_problem(e) if isinstance(e, ValidationError) else str(e)
        raise ManifestError(f"{source}: invalid {MANIFEST_FILE}: {detail}") from e
    expected, found = manifest.member_names, sorted(infos)
    if expected != found:
        raise PackageFormatError(f"{source}: expected members {expected}, found {found}")
    return _Opened(manifest, infos)


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(info)
    if f is None:  # pragma: no cover - _safe_infos admits regular files only
        raise UnsafeMemberError(f"member {info.name!r} has no content")
    with f:
        return f.read()


def _expected_digest(manifest: ModelManifest, name: str) -> tuple[str, int | None]:
    if name == manifest.model_file:
        return manifest.sha256, manifest.size_bytes
    if manifest.golden is not None and name == manifest.golden.file:
        return manifest.golden.sha256, None
    raise PackageFormatError(f"member {name!r} is not described by the manifest")


def _copy_verified(
    tar: tarfile.TarFile, info: tarfile.TarInfo, manifest: ModelManifest, sink: IO[bytes] | None
) -> PackageMember:
    """Stream a member (into ``sink`` if given), then check it; raises `DigestMismatchError`."""
    want_sha, want_size = _expected_digest(manifest, info.name)
    if want_size is not None and info.size != want_size:
        raise DigestMismatchError(
            f"{info.name}: manifest says {want_size} bytes, the package holds {info.size}"
        )
    digest = hashlib.sha256()
    f = tar.extractfile(info)
    assert f is not None  # regular files only, see _safe_infos
    with f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            if sink is not None:
                sink.write(chunk)
    if digest.hexdigest() != want_sha:
        raise DigestMismatchError(
            f"{info.name}: sha256 {digest.hexdigest()} differs from the manifest's {want_sha}"
        )
    return PackageMember(name=info.name, size_bytes=info.size, sha256=want_sha)


@dataclass
class _TarSource:
    path: Path

    def __enter__(self) -> tarfile.TarFile:
        try:
            # "r:" = uncompressed only: what we build, and no decompression bombs.
            self._tar = tarfile.open(self.path, mode="r:")
        except OSError as e:
            raise PackageFormatError(f"{self.path}: cannot open: {e.strerror or e}") from e
        except tarfile.TarError as e:
            raise PackageFormatError(f"{self.path}: not a model package (a tar): {e}") from e
        return self._tar

    def __exit__(self, *exc: object) -> None:
        self._tar.close()


def read_package(
    path: Path, *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
) -> tuple[ModelManifest, list[PackageMember]]:
    """Validate a package without extracting it: members, manifest, digests.

    Raises `PackageFormatError`, `UnsafeMemberError`, `ManifestError` or
    `DigestMismatchError`.
    """
    try:
        with _TarSource(path) as tar:
            opened = _open_manifest(tar, str(path), max_member_bytes)
            raw = _read_member(tar, opened.infos[MANIFEST_FILE])
            members = [
                PackageMember(MANIFEST_FILE, len(raw), hashlib.sha256(raw).hexdigest()),
                *(
                    _copy_verified(tar, info, opened.manifest, None)
                    for name, info in sorted(opened.infos.items())
                    if name != MANIFEST_FILE
                ),
            ]
    except tarfile.TarError as e:
        raise PackageFormatError(f"{path}: damaged package: {e}") from e
    return opened.manifest, sorted(members, key=lambda m: m.name)


def read_package_manifest(
    path: Path, *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
) -> ModelManifest:
    """The manifest of a package, with its members checked for names, types and sizes.

    Unlike `read_package` it does not read or hash the members' contents: for a package
    whose bytes already matched a signed hash, which `extract_package` checks again
    member by member anyway. Raises `PackageFormatError`, `UnsafeMemberError` or
    `ManifestError`.
    """
    try:
        with _TarSource(path) as tar:
            return _open_manifest(tar, str(path), max_member_bytes).manifest
    except tarfile.TarError as e:
        raise PackageFormatError(f"{path}: damaged package: {e}") from e


def extract_package(
    path: Path, dest_dir: Path, *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
) -> ModelManifest:
    """Extract a package into ``dest_dir`` (created; must be empty) and verify it.

    Only the members the manifest names are written, each as a new regular file; if
    anything fails, the files written so far are removed. Raises the errors of
    `read_package`, or `PackageError` if ``dest_dir`` is not empty.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    if any(dest_dir.iterdir()):
        raise PackageError(f"{dest_dir}: extraction directory is not empty")
    written: list[Path] = []
    try:
        with _TarSource(path) as tar:
            opened = _open_manifest(tar, str(path), max_member_bytes)
            for name, info in sorted(opened.infos.items()):
                target = dest_dir / name
                written.append(target)
                with target.open("xb") as sink:
                    if name == MANIFEST_FILE:
                        sink.write(_read_member(tar, info))
                    else:
                        _copy_verified(tar, info, opened.manifest, sink)
                    sink.flush()
                    os.fsync(sink.fileno())
        _fsync_dir(dest_dir)
    except tarfile.TarError as e:
        _remove(written)
        raise PackageFormatError(f"{path}: damaged package: {e}") from e
    except BaseException:
        _remove(written)
        raise
    return opened.manifest


def _remove(paths: list[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def package_digest(path: Path) -> tuple[str, int]:
    """The package file's sha256 and size: what a TUF target and a desired state name."""
    return sha256_file(path), path.stat().st_size


# ---------------------------------------------------------------------------------- CLI


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``edgefleet model package`` and ``edgefleet model inspect``."""
    from edgefleet.shared.modeltools import inspect

    p = commands.add_parser("package", help="build a model package (.efpkg) from a model file")
    p.add_argument("model_file", type=Path, metavar="MODEL_FILE", help=".onnx or .tflite file")
    p.add_argument("--name", required=True, help="model name (letters, digits, . _ -)")
    p.add_argument("--version", required=True, help="semantic version, e.g. 1.4.0 or 1.4.0-rc.1")
    p.add_argument("--reference", type=Path, metavar="DATA", help=".npy, .npz or .csv data")
    p.add_argument("--golden", type=int, default=32, metavar="N", help="golden samples (32)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="abs and rel tolerance (1e-4)")
    p.add_argument("--metric", action="append", default=[], metavar="K=V", help="repeatable")
    p.add_argument("--training-data", type=Path, metavar="FILE", help="hashed for lineage")
    p.add_argument("--min-agent-version", metavar="V", help="oldest agent that may run it")
    p.add_argument("--out", type=Path, default=Path(), metavar="DIR", help="output directory")
    p.set_defaults(handler=_package_command)
    inspect.add_command(commands)


def _parse_metrics(items: list[str]) -> dict[str, float]:
    from edgefleet.shared.cli import CLIError

    metrics: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep or not key:
                raise ValueError
            metrics[key.strip()] = float(value)
        except ValueError:
            raise CLIError(f"--metric {item!r}: expected NAME=NUMBER, e.g. accuracy=0.97") from None
    return metrics


def _package_command(args: argparse.Namespace) -> int:
    from edgefleet.shared.cli import CLIError

    if args.golden < 0:
        raise CLIError(f"--golden {args.golden}: expected a count >= 0")
    if args.tolerance < 0:
        raise CLIError(f"--tolerance {args.tolerance}: expected a value >= 0")
    try:
        out = build_package(
            args.model_file,
            name=args.name,
            version=args.version,
            out_dir=args.out,
            reference_data=args.reference,
            golden_count=args.golden,
            tolerance=Tolerance(atol=args.tolerance, rtol=args.tolerance),
            metrics=_parse_metrics(args.metric),
            min_agent_version=args.min_agent_version,
            training_data=args.training_data,
        )
    except (PackageError, OSError) as e:
        raise CLIError(str(e)) from e
    sha256, size = package_digest(out)
    print(out)
    print(f"sha256 {sha256}")
    print(f"size   {size}")
    return 0
