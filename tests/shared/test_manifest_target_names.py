"""Target names: the fleet's ``{name}-{version}.efpkg`` and its inverse, round trip.

(The manifest model itself is tested in tests/shared/test_manifest.py.)
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.shared.manifest import TARGET_SUFFIX, name_of_target, target_name
from edgefleet.shared.package.format import PACKAGE_SUFFIX

NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,30}", fullmatch=True)
VERSIONS = st.from_regex(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(-rc\.[0-9])?", fullmatch=True)


def test_a_target_is_named_like_its_package_file() -> None:
    assert TARGET_SUFFIX == PACKAGE_SUFFIX
    assert target_name("wine", "1.1.0") == "wine-1.1.0.efpkg"


@given(NAMES, VERSIONS)
def test_the_manifest_name_reads_back_from_the_target_name(name: str, version: str) -> None:
    assert name_of_target(target_name(name, version), version) == name


@pytest.mark.parametrize(
    ("target", "version"),
    [
        ("wine-1.1.0.efpkg", "1.2.0"),  # another version
        ("wine-1.1.0.tar", "1.1.0"),  # another suffix
        ("-1.1.0.efpkg", "1.1.0"),  # no name left
        ("wine.efpkg", "1.1.0"),
    ],
)
def test_a_target_named_otherwise_has_no_manifest_name(target: str, version: str) -> None:
    assert name_of_target(target, version) is None
