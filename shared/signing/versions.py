"""Model versions (semantic versioning 2.0.0) and the downgrade rule.

A minimal `Version` of our own: ``shared/manifest.py`` did not exist yet when this was
written; if it grows a version type, this one should become an alias of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering
from typing import Final

from shared.signing.errors import Downgrade, Malformed

_SEMVER: Final = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


@total_ordering
@dataclass(frozen=True)
class Version:
    """A semantic version; ordering follows semver precedence (build metadata ignored)."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str = ""

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse ``MAJOR.MINOR.PATCH[-PRE][+BUILD]``; raises `Malformed` otherwise."""
        match = _SEMVER.match(text)
        if not match:
            raise Malformed(f"version {text!r} is not a semantic version like 1.4.0")
        major, minor, patch, pre, build = match.groups()
        return cls(
            int(major), int(minor), int(patch), tuple(pre.split(".")) if pre else (), build or ""
        )

    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
        # A release sorts after its pre-releases; numeric identifiers sort before alphanumeric.
        pre = tuple((0, int(p)) if p.isdigit() else (1, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + self.build
        return text


def check_downgrade(current_version: str | None, new_version: str, rollback: bool) -> None:
    """Refuse to install an older model unless the director signed it as a rollback.

    ``current_version`` None means nothing is active (any version is fine). Reinstalling
    the same version is not a downgrade. Raises `Downgrade`, or `Malformed` for a version
    that is not semver.
    """
    new = Version.parse(new_version)
    if current_version is None:
        return
    current = Version.parse(current_version)
    if new < current and not rollback:
        raise Downgrade(
            f"model {new} is older than the active {current} "
            "and the desired state is not a signed rollback"
        )
