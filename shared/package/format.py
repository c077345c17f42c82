"""The model package format (``<name>-<version>.efpkg``), its limits and its errors.

A package is an uncompressed tar of flat regular files: ``manifest.json`` (an
`edgefleet.shared.manifest.ModelManifest` in the canonical form of `manifest_bytes`), the
model file and, unless built without, ``golden.npz`` (inputs and the outputs the model
gave for them at build time). The reader (`edgefleet.shared.package.read`) enforces the
limits here on untrusted archives; the builder (`edgefleet.shared.modeltools.builder`,
off-device) writes packages within them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pydantic import ValidationError

from edgefleet.shared.manifest import ModelManifest

PACKAGE_SUFFIX = ".efpkg"
# Limits a reader applies before reading a member's content.
DEFAULT_MAX_MEMBER_BYTES = 1 << 30
MAX_MANIFEST_BYTES = 16 << 20
MAX_MEMBERS = 16
# A flat, plain file name: no directory part, no leading dot or dash.
MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class PackageError(Exception):
    """Base of every model-package error."""


class ManifestError(PackageError):
    """A manifest that is invalid or unsupported: bad name, version, runtime, format."""


class PackageFormatError(PackageError):
    """A file that is not a readable package: not a tar, truncated, members missing."""


class UnsafeMemberError(PackageError):
    """An archive member that could escape or abuse the destination: links, devices, ``..``."""


class DataError(PackageError):
    """Reference or golden data that cannot be read."""


@dataclass(frozen=True)
class PackageMember:
    """One file in a package, as verified by `read_package`."""

    name: str
    size_bytes: int
    sha256: str


def manifest_problem(error: ValidationError) -> str:
    """The first few problems pydantic found in a manifest, as one line for an error."""
    return "; ".join(
        f"{'.'.join(str(p) for p in item['loc']) or 'manifest'}: {item['msg']}"
        for item in error.errors()[:5]
    )


def manifest_bytes(manifest: ModelManifest) -> bytes:
    """The canonical ``manifest.json`` bytes: sorted keys, so equal manifests hash equal."""
    return (json.dumps(manifest.model_dump(mode="json"), sort_keys=True, indent=2) + "\n").encode()
