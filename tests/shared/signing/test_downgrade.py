"""A device never moves to an older model unless the director signed a rollback."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.shared.signing.errors import Downgrade, Malformed
from edgefleet.shared.signing.versions import Version, check_downgrade


def test_downgrade_not_signed_as_rollback_is_rejected():
    with pytest.raises(
        Downgrade,
        match=r"model 1\.4\.0 is older than the active 1\.5\.2 and the desired state is not a "
        "signed rollback",
    ):
        check_downgrade("1.5.2", "1.4.0", rollback=False)


def test_signed_rollback_to_an_older_model_is_allowed():
    check_downgrade("1.5.2", "1.4.0", rollback=True)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (None, "0.1.0"),
        ("1.4.0", "1.4.0"),
        ("1.4.0", "1.4.1"),
        ("1.9.0", "1.10.0"),
        ("2.0.0-rc.1", "2.0.0"),
    ],
)
def test_upgrades_and_reinstalls_are_not_downgrades(current: str | None, new: str):
    check_downgrade(current, new, rollback=False)


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("1.0.0-alpha", "1.0.0-alpha.1"),
        ("1.0.0-alpha.1", "1.0.0-alpha.beta"),
        ("1.0.0-beta.2", "1.0.0-beta.11"),
        ("1.0.0-rc.1", "1.0.0"),
        ("1.0.0", "1.0.1"),
        ("1.2.9", "1.10.0"),
    ],
)
def test_semver_precedence(lower: str, higher: str):
    assert Version.parse(lower) < Version.parse(higher)
    with pytest.raises(Downgrade):
        check_downgrade(higher, lower, rollback=False)


def test_build_metadata_does_not_change_precedence():
    assert Version.parse("1.0.0+abc") == Version.parse("1.0.0+def")


@pytest.mark.parametrize("bad", ["1.4", "v1.4.0", "01.4.0", "1.4.0-", ""])
def test_version_that_is_not_semver_is_malformed(bad: str):
    with pytest.raises(Malformed, match="not a semantic version"):
        check_downgrade("1.0.0", bad, rollback=True)


versions = st.builds(
    lambda a, b, c: f"{a}.{b}.{c}",
    st.integers(0, 50),
    st.integers(0, 50),
    st.integers(0, 50),
)


@given(versions, versions)
def test_downgrade_rule_matches_numeric_order(current: str, new: str):
    older = tuple(map(int, new.split("."))) < tuple(map(int, current.split(".")))
    if older:
        with pytest.raises(Downgrade):
            check_downgrade(current, new, rollback=False)
    else:
        check_downgrade(current, new, rollback=False)
    check_downgrade(current, new, rollback=True)
    assert str(Version.parse(new)) == new
