"""Models taken straight from MLflow for ``edgefleet model package --from-mlflow URI``.

`parse_uri` (pure) accepts ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` and
``runs:/RUN_ID/PATH``; `fetch_model` downloads the artifacts with MLflow (imported
lazily: ``pip install 'edgefleet[mlflow]'``) and returns an ONNX file plus what the run
says about it: params (as bounded text), metrics, the run URI and the signature.

Invariants: the ONNX model is the onnx flavor's file, else the one ``.onnx`` file among
the artifacts, else a scikit-learn flavor model converted with skl2onnx (float32
inputs named ``input``, class scores as a plain tensor, not a ZipMap), like every
edgefleet test model. Nothing is written outside the caller's ``work_dir``. MLflow
resolves ``models:/`` and ``runs:/`` through its process-wide tracking and registry URIs
whatever its download function is passed, so a given tracking URI is set there for the
fetch only, and the environment is put back afterwards (`_store`).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from edgefleet.shared.manifest import (
    MAX_LINEAGE_PARAMS,
    MAX_PARAM_KEY_CHARS,
    MAX_PARAM_VALUE_CHARS,
)

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'edgefleet[mlflow]'"
ONNX_INPUT_NAME = "input"
_TRUNCATED = "..."
# A registered model name may hold most characters, but not the URI's separators.
_MODELS = re.compile(
    r"^models:/(?P<name>[^/@]{1,256})(?:/(?P<version>[1-9]\d{0,9})|@(?P<alias>[\w-]{1,256}))$"
)
_RUNS = re.compile(r"^runs:/(?P<run_id>[0-9A-Za-z_-]{1,64})/(?P<path>[^\s]{1,500})$")


class MlflowSourceError(Exception):
    """The URI, the MLflow store or the model it names cannot be used; says which and why."""


@dataclass(frozen=True)
class MlflowUri:
    """A parsed ``models:/`` or ``runs:/`` URI."""

    text: str
    kind: Literal["models", "runs"]
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class MlflowModel:
    """An ONNX file from MLflow and what its run records about it."""

    model_file: Path
    run_uri: str | None
    created_at: datetime | None
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    signature: dict[str, Any] | None = None
    feature_names: list[str] | None = None
    flavor: str = "onnx"


def parse_uri(text: str) -> MlflowUri:
    """Parse ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or ``runs:/RUN_ID/PATH``.

    Raises `MlflowSourceError` for any other scheme or shape.
    """
    if match := _MODELS.match(text):
        return MlflowUri(
            text=text,
            kind="models",
            name=match["name"],
            version=match["version"],
            alias=match["alias"],
        )
    if match := _RUNS.match(text):
        return MlflowUri(text=text, kind="runs", run_id=match["run_id"], path=match["path"])
    raise MlflowSourceError(
        f"--from-mlflow {text!r}: expected models:/NAME/VERSION, models:/NAME@ALIAS or "
        "runs:/RUN_ID/PATH"
    )


def bounded_params(params: dict[str, str]) -> dict[str, str]:
    """Params that fit a manifest's lineage: at most 200, keys and values cut to length.

    A run with more params keeps the first ones in key order (the rest are logged).
    """
    kept: dict[str, str] = {}
    for key in sorted(params):
        if len(kept) == MAX_LINEAGE_PARAMS:
            log.warning(
                "the run has %d params; the manifest keeps the first %d by name",
                len(params),
                MAX_LINEAGE_PARAMS,
            )
            break
        name = key[:MAX_PARAM_KEY_CHARS]
        value = str(params[key])
        if len(value) > MAX_PARAM_VALUE_CHARS:
            value = value[: MAX_PARAM_VALUE_CHARS - len(_TRUNCATED)] + _TRUNCATED
        if name:
            kept[name] = value
    return kept


def finite_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The run's metrics without NaN or infinite values, which JSON cannot carry."""
    kept = {k: float(v) for k, v in metrics.items() if math.isfinite(v)}
    if len(kept) != len(metrics):
        log.warning("left out non-finite metrics %s", sorted(set(metrics) - set(kept)))
    return kept


def feature_names_of(signature: dict[str, Any] | None) -> list[str] | None:
    """Column names of a column-based (tabular) signature's inputs; None for tensors."""
    if not signature:
        return None
    inputs = signature.get("inputs") or []
    names = [col.get("name") for col in inputs if isinstance(col, dict)]
    if not names or any(not isinstance(n, str) or not n for n in names):
        return None
    if any(col.get("type") == "tensor" for col in inputs):
        return None
    return [str(n) for n in names]


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError as e:
        raise MlflowSourceError(f"--from-mlflow needs MLflow: {INSTALL_HINT} ({e})") from e
    return mlflow


@contextmanager
def _store(mlflow: Any, tracking_uri: str | None) -> Iterator[None]:
    """MLflow's process-wide tracking and registry URIs set to ``tracking_uri`` for a while.

    Afterwards both are unset again (MLflow then reads ``MLFLOW_TRACKING_URI`` as before);
    a library caller that set them in-process itself should pass ``tracking_uri=None``.
    """
    if tracking_uri is None:
        yield
        return
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {name: os.environ.get(name) for name in names}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        for name, value in saved.items():  # set_tracking_uri also exported them
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def fetch_model(uri: str, *, tracking_uri: str | None, work_dir: Path) -> MlflowModel:
    """Download the model ``uri`` names into ``work_dir`` and make it an ONNX file there.

    ``tracking_uri`` (``MLFLOW_TRACKING_URI`` when None) is used for the registry too.
    Raises `MlflowSourceError` for a bad URI, MLflow missing, a model or run that the
    store does not have, and artifacts with neither an ONNX nor a scikit-learn model.
    """
    parsed = parse_uri(uri)
    mlflow = _mlflow()
    with _store(mlflow, tracking_uri):
        return _fetch(mlflow, parsed, work_dir)


def _fetch(mlflow: Any, parsed: MlflowUri, work_dir: Path) -> MlflowModel:
    from mlflow.exceptions import MlflowException

    uri = parsed.text
    client = mlflow.MlflowClient()
    where = client.tracking_uri
    dst = work_dir / "artifacts"
    dst.mkdir(parents=True, exist_ok=True)
    try:
        run_id, created_ms = _resolve(client, parsed)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
        run = client.get_run(run_id) if run_id else None
    except MlflowException as e:
        raise MlflowSourceError(f"{uri}: not found in the MLflow store at {where}: {e}") from e
    except OSError as e:
        raise MlflowSourceError(f"{uri}: cannot download it from {where}: {e}") from e
    if run is not None and created_ms is None:
        created_ms = run.info.end_time or run.info.start_time
    signature = _signature(local)
    model_file, flavor = _onnx_file(local, signature, work_dir, uri)
    return MlflowModel(
        model_file=model_file,
        run_uri=f"runs:/{run_id}" if run_id else None,
        created_at=datetime.fromtimestamp(created_ms / 1000, UTC) if created_ms else None,
        params=bounded_params(dict(run.data.params)) if run is not None else {},
        metrics=finite_metrics(dict(run.data.metrics)) if run is not None else {},
        signature=signature,
        feature_names=feature_names_of(signature),
        flavor=flavor,
    )


def _resolve(client: Any, uri: MlflowUri) -> tuple[str | None, int | None]:
    """The run id behind ``uri`` and, for a registered version, when it was created."""
    if uri.kind == "runs":
        return uri.run_id, None
    if uri.alias is not None:
        version = client.get_model_version_by_alias(uri.name, uri.alias)
    else:
        version = client.get_model_version(uri.name, uri.version)
    return version.run_id or None, version.creation_timestamp


def _signature(local: Path) -> dict[str, Any] | None:
    """The MLmodel signature as JSON-ready lists, or None without an MLmodel or signature."""
    if not (local / "MLmodel").is_file():
        return None
    from mlflow.models import Model

    signature = Model.load(str(local)).signature
    if signature is None:
        return None
    dumped: dict[str, Any] = signature.to_dict()
    import json

    return {
        key: json.loads(value) if isinstance(value, str) else value
        for key, value in dumped.items()
        if value is not None
    }


def _onnx_file(
    local: Path, signature: dict[str, Any] | None, work_dir: Path, uri: str
) -> tuple[Path, str]:
    if local.is_file():
        if local.suffix.lower() == ".onnx":
            return local, "onnx"
        raise MlflowSourceError(f"{uri}: names the file {local.name}, not an .onnx model")
    flavors: dict[str, Any] = {}
    if (local / "MLmodel").is_file():
        from mlflow.models import Model

        flavors = dict(Model.load(str(local)).flavors)
    onnx_data = (flavors.get("onnx") or {}).get("data")
    if isinstance(onnx_data, str) and (local / onnx_data).is_file():
        return local / onnx_data, "onnx"
    found = sorted(local.rglob("*.onnx"))
    if len(found) == 1:
        return found[0], "onnx"
    if len(found) > 1:
        names = [str(p.relative_to(local)) for p in found]
        raise MlflowSourceError(f"{uri}: more than one ONNX model among the artifacts: {names}")
    if "sklearn" in flavors:
        return _convert_sklearn(local, signature, work_dir / "model.onnx", uri), "sklearn"
    raise MlflowSourceError(
        f"{uri}: no ONNX model and no scikit-learn model among the artifacts "
        f"(flavors: {sorted(flavors) or 'none, no MLmodel file'})"
    )


def _input_width(model: Any, signature: dict[str, Any] | None, uri: str) -> int:
    """Features per row: from the signature, else the estimator's ``n_features_in_``."""
    inputs = (signature or {}).get("inputs") or []
    if len(inputs) == 1 and inputs[0].get("type") == "tensor":
        shape = inputs[0].get("tensor-spec", {}).get("shape") or []
        if len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0:
            return shape[1]
    elif inputs and all(col.get("type") != "tensor" for col in inputs):
        return len(inputs)
    width = getattr(model, "n_features_in_", None)
    if isinstance(width, int) and width > 0:
        return width
    raise MlflowSourceError(
        f"{uri}: cannot tell how many features the scikit-learn model takes; log it "
        "with a signature (mlflow.models.infer_signature)"
    )


def _convert_sklearn(local: Path, signature: dict[str, Any] | None, out: Path, uri: str) -> Path:
    try:
        import mlflow.sklearn
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import FloatTensorType
    except ImportError as e:
        raise MlflowSourceError(
            f"{uri}: converting a scikit-learn model needs scikit-learn and skl2onnx: "
            f"pip install 'edgefleet[tools,mlflow]' ({e})"
        ) from e
    try:
        model = mlflow.sklearn.load_model(str(local))
    except Exception as e:  # unpickling and skops raise anything
        raise MlflowSourceError(f"{uri}: MLflow cannot load the scikit-learn model: {e}") from e
    width = _input_width(model, signature, uri)
    try:
        onnx_model = to_onnx(
            model,
            initial_types=[(ONNX_INPUT_NAME, FloatTensorType([None, width]))],
            # Scores as one [N, classes] tensor: the agent and quantize read tensors.
            options={"zipmap": False} if hasattr(model, "predict_proba") else None,
            target_opset=17,
        )
    except Exception as e:  # skl2onnx raises RuntimeError, NameError, ... on models it lacks
        raise MlflowSourceError(
            f"{uri}: skl2onnx cannot convert {type(model).__name__}: {e}"
        ) from e
    out.write_bytes(onnx_model.SerializeToString())
    return out
