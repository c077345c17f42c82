"""Semantic versions as the device compares them to detect downgrades."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from edgefleet.shared.manifest import Version, VersionError, compare_versions

# Each version precedes the next one (the example chain from semver.org, extended).
ORDERED = [
    "0.9.9",
    "1.0.0-0.3.7",
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0-rc.2",
    "1.0.0-rc.10",
    "1.0.0",
    "1.0.1-rc.1",
    "1.0.1",
    "1.2.0",
    "1.10.0",
    "2.0.0",
]


@pytest.mark.parametrize(("lower", "higher"), itertools.pairwise(ORDERED))
def test_semver_precedence(lower: str, higher: str) -> None:
    assert Version.parse(lower) < Version.parse(higher)
    assert Version.parse(higher) > Version.parse(lower)
    assert compare_versions(lower, higher) == -1
    assert compare_versions(higher, lower) == 1


def test_sorting_shuffled_versions_restores_semver_order() -> None:
    shuffled = sorted(ORDERED, key=lambda v: v[::-1])
    assert sorted(shuffled, key=Version.parse) == ORDERED


def test_build_metadata_does_not_change_precedence() -> None:
    assert Version.parse("1.4.0+build.7") == Version.parse("1.4.0+other")
    assert compare_versions("1.4.0+a", "1.4.0") == 0
    assert hash(Version.parse("1.4.0+a")) == hash(Version.parse("1.4.0"))


@pytest.mark.parametrize(
    "text", ["1.4.0", "1.4.0-rc.1", "0.0.1-alpha-2.x", "10.20.30+build.1", "1.0.0-0"]
)
def test_version_round_trips_through_str(text: str) -> None:
    assert str(Version.parse(text)) == text


@pytest.mark.parametrize(
    "text", ["1.4", "v1.4.0", "01.4.0", "1.4.0-", "1.4.0-rc..1", "1.4.0-01", "1.4.0 ", "", "1.a.0"]
)
def test_non_semver_strings_are_rejected_with_an_example(text: str) -> None:
    with pytest.raises(VersionError, match=r"is not a semantic version; expected MAJOR\.MINOR"):
        Version.parse(text)


triples = st.tuples(*(st.integers(min_value=0, max_value=10_000) for _ in range(3)))


@given(triples, triples)
def test_release_order_matches_numeric_tuple_order(a: tuple[int, ...], b: tuple[int, ...]) -> None:
    va, vb = (Version.parse(".".join(map(str, t))) for t in (a, b))
    assert (va < vb) == (a < b)
    assert (va == vb) == (a == b)


@given(triples, st.from_regex(r"[0-9A-Za-z-]{1,8}(\.[0-9A-Za-z-]{1,8}){0,2}", fullmatch=True))
def test_a_prerelease_precedes_its_release(t: tuple[int, ...], pre: str) -> None:
    release = ".".join(map(str, t))
    # Numeric identifiers with leading zeros are not valid semver.
    assume(not any(p.isdigit() and len(p) > 1 and p.startswith("0") for p in pre.split(".")))
    assert Version.parse(f"{release}-{pre}") < Version.parse(release)
