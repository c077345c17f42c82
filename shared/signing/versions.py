"""The downgrade rule: a device never installs an older model unless the director signed
a rollback. Versions are `edgefleet.shared.manifest.Version` (semantic versioning 2.0.0), the same
type the model packages use, so the two can never disagree on ordering.
"""

from __future__ import annotations

from edgefleet.shared.manifest import Version, VersionError
from edgefleet.shared.signing.errors import Downgrade, Malformed

__all__ = ["Version", "check_downgrade", "parse_version"]


def parse_version(text: str) -> Version:
    """`Version.parse`, raising `Malformed` (the peer sent bad data) instead of ValueError."""
    try:
        return Version.parse(text)
    except VersionError as e:
        raise Malformed(str(e)) from e


def check_downgrade(current_version: str | None, new_version: str, rollback: bool) -> None:
    """Refuse to install an older model unless the director signed it as a rollback.

    ``current_version`` None means nothing is active (any version is fine). Reinstalling
    the same version is not a downgrade. Raises `Downgrade`, or `Malformed` for a version
    that is not semver.
    """
    new = parse_version(new_version)
    if current_version is None:
        return
    current = parse_version(current_version)
    if new < current and not rollback:
        raise Downgrade(
            f"model {new} is older than the active {current} "
            "and the desired state is not a signed rollback"
        )
