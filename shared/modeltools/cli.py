"""``edgefleet model ...``: workstation tooling for model files, never run on a device.

``package`` (build, `edgefleet.shared.modeltools.builder`) is defined here; the other tools
(``inspect``, ``quantize``, ``sign``) each add their own subcommand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgefleet.shared.cli import CLIError
from edgefleet.shared.manifest import Tolerance
from edgefleet.shared.modeltools import inspect
from edgefleet.shared.modeltools.builder import build_package
from edgefleet.shared.package.format import PackageError
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
