"""The manifest inside a model package (``manifest.json``), and semantic versions.

Invariants:
- a manifest is frozen and ignores unknown fields, so an older agent can read a package
  written by a newer packager of the same ``format_version``; a larger ``format_version``
  means a reader must refuse the package (see `FORMAT_VERSION`);
- ``name``, ``model_file`` and the golden file name are plain file names (no path
  separators, no ``..``), so they are safe to join to a directory;
- ``version`` and ``min_agent_version`` are semantic versions (https://semver.org);
  `Version` orders them by semver precedence, which the agent uses to detect downgrades.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import total_ordering
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from edgefleet.shared.messages import WireModel
from edgefleet.shared.tensors import TensorSpec

FORMAT_VERSION = 1
RUNTIMES = ("onnx", "tflite")
MANIFEST_FILE = "manifest.json"
GOLDEN_FILE = "golden.npz"

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")

# semver.org's regular expression, split so that each part can be checked on its own.
_NUMERIC = r"0|[1-9]\d*"
_PRE_ID = r"(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)"
_SEMVER = re.compile(
    rf"^(?P<major>{_NUMERIC})\.(?P<minor>{_NUMERIC})\.(?P<patch>{_NUMERIC})"
    rf"(?:-(?P<pre>{_PRE_ID}(?:\.{_PRE_ID})*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


class VersionError(ValueError):
    """A string that is not a semantic version."""


@total_ordering
@dataclass(frozen=True, eq=False)
class Version:
    """A semantic version, ordered by semver precedence (build metadata is ignored).

    ``1.4.0-rc.1 < 1.4.0-rc.2 < 1.4.0-rc.10 < 1.4.0 < 1.4.1``; numeric pre-release
    identifiers sort numerically and before alphanumeric ones.
    """

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: tuple[str, ...] = field(default=())

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse ``"1.4.0"``, ``"1.4.0-rc.1"``, ``"1.4.0+build.7"``; raises `VersionError`."""
        match = _SEMVER.match(text) if isinstance(text, str) else None
        if match is None:
            raise VersionError(
                f"version {text!r} is not a semantic version; expected MAJOR.MINOR.PATCH "
                "with an optional -prerelease and +build, e.g. '1.4.0' or '1.4.0-rc.1'"
            )
        pre, build = match["pre"], match["build"]
        return cls(
            major=int(match["major"]),
            minor=int(match["minor"]),
            patch=int(match["patch"]),
            prerelease=tuple(pre.split(".")) if pre else (),
            build=tuple(build.split(".")) if build else (),
        )

    @property
    def is_prerelease(self) -> bool:
        return bool(self.prerelease)

    def _key(self) -> tuple[Any, ...]:
        # A release sorts after all of its pre-releases; tuple comparison gives semver's
        # "a shorter set of identifiers sorts first when all before are equal".
        pre: tuple[Any, ...] = (
            (1,)
            if not self.prerelease
            else (0, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease))
        )
        return (self.major, self.minor, self.patch, pre)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() == other._key()

    def __lt__(self, other: Version) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + ".".join(self.build)
        return text


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` precedes, equals or follows ``b``; raises `VersionError`."""
    va, vb = Version.parse(a), Version.parse(b)
    return (va > vb) - (va < vb)


def _check_semver(value: str) -> str:
    Version.parse(value)
    return value


def _check_file_name(value: str) -> str:
    if not _FILE_NAME.match(value) or ".." in value:
        raise ValueError(
            f"file name {value!r} must be a plain name of letters, digits, '.', '_' or '-' "
            "(no directories, no '..')"
        )
    return value


SemVer = Annotated[str, AfterValidator(_check_semver)]
FileName = Annotated[str, AfterValidator(_check_file_name)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Tolerance(WireModel):
    """How far an output may be from the expected one: ``|a - e| <= atol + rtol * |e|``."""

    atol: float = Field(default=1e-4, ge=0)
    rtol: float = Field(default=1e-4, ge=0)


class GoldenSpec(WireModel):
    """The golden samples shipped in the package, checked on the device before activating."""

    file: FileName = GOLDEN_FILE
    sha256: Sha256
    count: int = Field(ge=0)
    source: Literal["reference", "synthetic"] = Field(
        description="drawn from the reference data, or generated from the input schema"
    )
    tolerance: Tolerance = Field(default_factory=Tolerance)


class ProbationBudget(WireModel):
    """What a freshly activated model must stay within before the agent commits it."""

    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    max_latency_p95_ms: float = Field(default=250.0, gt=0)
    min_inferences: int = Field(default=50, ge=0)
    duration_s: float = Field(default=300.0, ge=0)


# MLflow's own bound on a param key is 250 characters; its values may be longer (6000),
# but a manifest is read by the fleet on every upload, so long values are cut when packed.
MAX_LINEAGE_PARAMS: Final = 200
MAX_PARAM_KEY_CHARS: Final = 250
MAX_PARAM_VALUE_CHARS: Final = 500
ParamKey = Annotated[str, Field(min_length=1, max_length=MAX_PARAM_KEY_CHARS)]
ParamValue = Annotated[str, Field(max_length=MAX_PARAM_VALUE_CHARS)]


class Lineage(WireModel):
    """Where a version came from: for governance, never read by the device.

    ``training_data_sha256`` stays on the manifest itself (older packages carry it
    there); the fleet's ``GET /v1/models/{name}/{version}/lineage`` shows both.
    """

    code_revision: str | None = Field(default=None, max_length=200, description="e.g. a git sha")
    run_uri: str | None = Field(
        default=None, max_length=1000, description="the experiment run, e.g. an MLflow runs:/ URI"
    )
    parent_version: SemVer | None = Field(default=None, description="the version it replaces")
    quantized_from: Sha256 | None = Field(
        default=None, description="sha256 of the float model file it was quantized from"
    )
    dataset_version: str | None = Field(default=None, max_length=200)
    params: dict[ParamKey, ParamValue] = Field(
        default_factory=dict,
        max_length=MAX_LINEAGE_PARAMS,
        description="training hyperparameters, as text (an MLflow run's params)",
    )
    source: str | None = Field(
        default=None, max_length=1000, description="where the model file came from"
    )


class ModelManifest(WireModel):
    """What a model package holds and how the device must check it."""

    format_version: int = Field(default=FORMAT_VERSION, ge=1)
    name: str = Field(pattern=NAME_PATTERN)
    version: SemVer
    runtime: Literal["onnx", "tflite"]
    model_file: FileName
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    sha256: Sha256 = Field(description="of the model file")
    size_bytes: int = Field(ge=0, description="of the model file")
    created_at: datetime
    training_data_sha256: Sha256 | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    min_agent_version: SemVer | None = None
    golden: GoldenSpec | None = None
    # Filled by the drift work (shared.drift.profile); opaque JSON here.
    reference_profile: dict[str, Any] | None = None
    probation: ProbationBudget = Field(default_factory=ProbationBudget)
    feature_names: list[str] | None = None
    lineage: Lineage | None = None

    @field_validator("feature_names")
    @classmethod
    def _unique_features(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"feature_names must be unique, found {value}")
        return value

    @model_validator(mode="after")
    def _distinct_members(self) -> ModelManifest:
        members = [MANIFEST_FILE, self.model_file] + ([self.golden.file] if self.golden else [])
        if len(set(members)) != len(members):
            raise ValueError(f"package member names must differ, found {members}")
        return self

    @property
    def semver(self) -> Version:
        """``version`` parsed for comparisons."""
        return Version.parse(self.version)

    @property
    def member_names(self) -> list[str]:
        """Every file a package with this manifest holds."""
        names = [MANIFEST_FILE, self.model_file]
        if self.golden is not None:
            names.append(self.golden.file)
        return sorted(names)


# --- target names ---------------------------------------------------------------------

# The fleet publishes a model version as the TUF target ``{name}-{version}.efpkg``: its
# package file name (`edgefleet.shared.package.format.PACKAGE_SUFFIX`; a test keeps
# the two equal). The agent learns a target's manifest name only once it has the
# package, yet every event about it, the download's too, names the model by manifest
# name: `name_of_target` reads it back from the signed target name.
TARGET_SUFFIX: Final = ".efpkg"


def target_name(name: str, version: str) -> str:
    """The TUF target name of a model version: its package file name."""
    return f"{name}-{version}{TARGET_SUFFIX}"


def name_of_target(target: str, version: str) -> str | None:
    """The manifest name in ``target`` if it is `target_name` of (name, ``version``).

    None for a target named otherwise (a repository this fleet did not fill): the
    caller then has only the target name to show.
    """
    tail = f"-{version}{TARGET_SUFFIX}"
    if len(target) > len(tail) and target.endswith(tail):
        return target[: -len(tail)]
    return None
