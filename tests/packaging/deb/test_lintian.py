"""lintian passes on the package, with only the committed overrides, all of them used."""

from __future__ import annotations

import pytest

from tests.packaging.deb.conftest import Debs


@pytest.mark.slow
def test_lintian_passes_with_only_the_committed_overrides(debs: Debs) -> None:
    if debs.lintian is None:
        pytest.skip("lintian is not installed (NEED_DEB=1 packaging/dev/bootstrap.sh installs it)")
    out, _ = debs.lintian.communicate(timeout=300)
    findings = [line for line in out.splitlines() if line[:2] in ("E:", "W:")]
    assert debs.lintian.returncode == 0, out[-4000:]
    assert not findings, "\n".join(findings)
    # An override that matches nothing is one the package no longer needs (or one whose
    # path no longer matches: a tag then fires elsewhere and shows as a warning above).
    stale = [
        line
        for line in out.splitlines()
        if "unused-override" in line or "mismatched-override" in line
    ]
    assert not stale, "\n".join(stale)
