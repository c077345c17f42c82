"""``edgefleet model inspect PACKAGE``: verify a package and show what it holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgefleet.shared.manifest import ModelManifest
from edgefleet.shared.package.format import PackageError, PackageMember
from edgefleet.shared.package.read import package_digest, read_package
from edgefleet.shared.signing.errors import DigestMismatch


def describe(path: Path, manifest: ModelManifest, members: list[PackageMember]) -> str:
    """A human-readable account of a verified package (the reference profile elided)."""
    sha256, size = package_digest(path)
    shown = manifest.model_dump(mode="json")
    if shown.get("reference_profile") is not None:
        shown["reference_profile"] = "(present; edgefleet model inspect --json shows it)"
    lines = [
        f"package {path}",
        f"sha256  {sha256}",
        f"size    {size}",
        "members (verified against the manifest):",
        *(f"  {m.name:<16} {m.size_bytes:>12} bytes  sha256 {m.sha256}" for m in members),
        "manifest:",
        json.dumps(shown, indent=2, sort_keys=True),
    ]
    return "\n".join(lines)


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``edgefleet model inspect``."""
    p = commands.add_parser("inspect", help="verify a model package and print its manifest")
    p.add_argument("package", type=Path, metavar="PACKAGE", help="an .efpkg file")
    p.add_argument("--json", action="store_true", help="print only the full manifest as JSON")
    p.set_defaults(handler=_inspect_command)


def _inspect_command(args: argparse.Namespace) -> int:
    from edgefleet.shared.cli import CLIError

    try:
        manifest, members = read_package(args.package)
    except (PackageError, DigestMismatch) as e:
        raise CLIError(str(e)) from e
    if args.json:
        print(manifest.model_dump_json(indent=2))
    else:
        print(describe(args.package, manifest, members))
    return 0
