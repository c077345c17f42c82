"""``edgefleet model ...``: workstation tooling for model files, never run on a device.

``package`` (build, `edgefleet.shared.modeltools.builder`) is defined here; the other tools
(``inspect``, ``quantize``, ``sign``) each add their own subcommand. ``package`` takes a
model file, or a model straight from MLflow (``--from-mlflow``,
`edgefleet.shared.modeltools.mlflow_source`), and the lineage options fill the
manifest's `Lineage`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from edgefleet.shared.cli import CLIError
from edgefleet.shared.hashing import sha256_file
from edgefleet.shared.manifest import Lineage, ProbationBudget, Tolerance, Version, VersionError
from edgefleet.shared.modeltools import inspect, mlflow_source
from edgefleet.shared.modeltools.builder import build_package
from edgefleet.shared.package.format import PackageError, manifest_problem
from edgefleet.shared.package.read import package_digest


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``edgefleet model`` and its subcommands."""
    from edgefleet.shared.modeltools import quantize, sign

    parser = subparsers.add_parser("model", help="package, quantize and sign model files")
    commands = parser.add_subparsers(title="model commands", metavar="COMMAND")
    add_package_commands(commands)
    for module in (quantize, sign):
        module.add_command(commands)


def add_package_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``edgefleet model package`` and ``edgefleet model inspect``."""
    p = commands.add_parser("package", help="build a model package (.efpkg) from a model file")
    p.add_argument(
        "model_file",
        type=Path,
        nargs="?",
        metavar="MODEL_FILE",
        help=".onnx or .tflite file (or give --from-mlflow)",
    )
    p.add_argument("--name", required=True, help="model name (letters, digits, . _ -)")
    p.add_argument("--version", required=True, help="semantic version, e.g. 1.4.0 or 1.4.0-rc.1")
    p.add_argument("--reference", type=Path, metavar="DATA", help=".npy, .npz or .csv data")
    p.add_argument("--golden", type=int, default=32, metavar="N", help="golden samples (32)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="abs and rel tolerance (1e-4)")
    p.add_argument("--metric", action="append", default=[], metavar="K=V", help="repeatable")
    p.add_argument("--training-data", type=Path, metavar="FILE", help="hashed for lineage")
    p.add_argument("--min-agent-version", metavar="V", help="oldest agent that may run it")
    p.add_argument("--out", type=Path, default=Path(), metavar="DIR", help="output directory")
    lab = p.add_argument_group(
        "labels",
        "so the device joins late labels (POST /v1/feedback) and the fleet sees a performance drop",
    )
    lab.add_argument(
        "--labels", type=Path, metavar="FILE", help="one label per --reference row (.npy or .csv)"
    )
    lab.add_argument(
        "--task", choices=["classification", "regression"], help="how to read the labels"
    )
    pr = p.add_argument_group(
        "probation", "what a new version must stay within on a device before it is kept"
    )
    defaults = ProbationBudget()
    pr.add_argument(
        "--probation-duration-s",
        type=float,
        metavar="S",
        help=f"at least this long ({defaults.duration_s:g})",
    )
    pr.add_argument(
        "--probation-min-inferences",
        type=int,
        metavar="N",
        help=f"and at least this many inferences ({defaults.min_inferences})",
    )
    pr.add_argument(
        "--probation-max-error-rate",
        type=float,
        metavar="R",
        help=f"error rate at most (0 to 1, {defaults.max_error_rate:g})",
    )
    pr.add_argument(
        "--probation-max-latency-p95-ms",
        type=float,
        metavar="MS",
        help=f"p95 latency at most ({defaults.max_latency_p95_ms:g})",
    )
    g = p.add_argument_group("lineage", "where the model came from (kept in the manifest)")
    g.add_argument("--code-revision", metavar="REV", help="e.g. the training code's git sha")
    g.add_argument("--run-uri", metavar="URI", help="the experiment run, e.g. runs:/<id>")
    g.add_argument("--parent-version", metavar="V", help="the version this one replaces")
    g.add_argument("--dataset-version", metavar="V", help="the training dataset's version")
    g.add_argument("--param", action="append", default=[], metavar="K=V", help="repeatable")
    g.add_argument("--quantized-from", type=Path, metavar="FILE", help="the float model (hashed)")
    m = p.add_argument_group("MLflow", f"package a logged model ({mlflow_source.INSTALL_HINT})")
    m.add_argument(
        "--from-mlflow",
        metavar="URI",
        help="models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/PATH",
    )
    m.add_argument(
        "--mlflow-tracking-uri",
        metavar="URI",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="tracking and registry store (default: $MLFLOW_TRACKING_URI)",
    )
    p.set_defaults(handler=_package_command)
    inspect.add_command(commands)


def _parse_metrics(items: list[str]) -> dict[str, float]:
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


def _parse_params(items: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CLIError(f"--param {item!r}: expected NAME=VALUE, e.g. max_depth=6")
        if key in params:
            raise CLIError(f"--param {key!r} is given twice")
        params[key] = value
    return params


LineageOptions = tuple[dict[str, str], dict[str, str]]


def _lineage_options(args: argparse.Namespace) -> LineageOptions:
    """The lineage fields and params the options give, checked; raises `CLIError`."""
    if args.parent_version is not None:
        try:
            Version.parse(args.parent_version)
        except VersionError as e:
            raise CLIError(f"--parent-version: {e}") from None
    quantized_from = None
    if args.quantized_from is not None:
        try:
            quantized_from = sha256_file(args.quantized_from)
        except OSError as e:
            raise CLIError(f"--quantized-from {args.quantized_from}: {e.strerror or e}") from e
    given = {
        "code_revision": args.code_revision,
        "run_uri": args.run_uri,
        "parent_version": args.parent_version,
        "dataset_version": args.dataset_version,
        "quantized_from": quantized_from,
    }
    options = ({k: v for k, v in given.items() if v is not None}, _parse_params(args.param))
    _lineage(options)  # fail on a bad value before anything is downloaded
    return options


def _lineage(options: LineageOptions, base: Lineage | None = None) -> Lineage | None:
    """The options over ``base`` (what MLflow said); None when both are empty."""
    fields, params = options
    merged: dict[str, object] = base.model_dump() if base is not None else {}
    merged.update(fields)
    merged["params"] = {**(base.params if base is not None else {}), **params}
    if not any(merged.values()):
        return None
    try:
        return Lineage.model_validate(merged)
    except ValidationError as e:
        raise CLIError(f"lineage: {manifest_problem(e)}") from e


PROBATION_OPTIONS = {
    "duration_s": "--probation-duration-s",
    "min_inferences": "--probation-min-inferences",
    "max_error_rate": "--probation-max-error-rate",
    "max_latency_p95_ms": "--probation-max-latency-p95-ms",
}


def _probation(args: argparse.Namespace) -> ProbationBudget | None:
    """The budget the options give over the defaults (None: none given); raises `CLIError`."""
    given = {
        field: getattr(args, option.removeprefix("--").replace("-", "_"))
        for field, option in PROBATION_OPTIONS.items()
    }
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return None
    try:
        return ProbationBudget.model_validate(given)
    except ValidationError as e:
        error = e.errors()[0]
        option = PROBATION_OPTIONS[str(error["loc"][0])]
        raise CLIError(f"{option} {given[str(error['loc'][0])]}: {error['msg']}") from None


def _check_source(args: argparse.Namespace) -> None:
    if args.from_mlflow is not None and args.model_file is not None:
        raise CLIError(f"give MODEL_FILE or --from-mlflow, not both ({args.model_file})")
    if args.from_mlflow is None and args.model_file is None:
        raise CLIError("give a MODEL_FILE to package, or --from-mlflow URI")


def _package_command(args: argparse.Namespace) -> int:
    if args.golden < 0:
        raise CLIError(f"--golden {args.golden}: expected a count >= 0")
    if args.tolerance < 0:
        raise CLIError(f"--tolerance {args.tolerance}: expected a value >= 0")
    _check_source(args)
    if args.labels is not None and args.reference is None:
        raise CLIError("--labels needs --reference: one label per reference row")
    probation = _probation(args)
    metrics = _parse_metrics(args.metric)
    given = _lineage_options(args)
    if args.from_mlflow is None:
        out = _build(
            args, args.model_file, lineage=_lineage(given), metrics=metrics, probation=probation
        )
    else:
        with tempfile.TemporaryDirectory(prefix="edgefleet-mlflow-") as work:
            try:
                fetched = mlflow_source.fetch_model(
                    args.from_mlflow, tracking_uri=args.mlflow_tracking_uri, work_dir=Path(work)
                )
            except mlflow_source.MlflowSourceError as e:
                raise CLIError(str(e)) from e
            base = Lineage(run_uri=fetched.run_uri, params=fetched.params, source=args.from_mlflow)
            out = _build(
                args,
                fetched.model_file,
                lineage=_lineage(given, base),
                metrics=fetched.metrics | metrics,
                probation=probation,
                feature_names=fetched.feature_names,
                created_at=fetched.created_at,
            )
    sha256, size = package_digest(out)
    print(out)
    print(f"sha256 {sha256}")
    print(f"size   {size}")
    return 0


def _build(
    args: argparse.Namespace,
    model_file: Path,
    *,
    lineage: Lineage | None,
    metrics: dict[str, float],
    probation: ProbationBudget | None,
    feature_names: list[str] | None = None,
    created_at: datetime | None = None,
) -> Path:
    try:
        return build_package(
            model_file,
            name=args.name,
            version=args.version,
            out_dir=args.out,
            reference_data=args.reference,
            golden_count=args.golden,
            tolerance=Tolerance(atol=args.tolerance, rtol=args.tolerance),
            metrics=metrics,
            min_agent_version=args.min_agent_version,
            training_data=args.training_data,
            lineage=lineage,
            feature_names=feature_names,
            created_at=created_at,
            probation=probation,
            labels=args.labels,
            task=args.task,
        )
    except (PackageError, OSError) as e:
        raise CLIError(str(e)) from e
