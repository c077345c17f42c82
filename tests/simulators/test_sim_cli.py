"""`edgefleet sim` refuses bad arguments with one clear line, before it starts anything."""

from __future__ import annotations

import pytest

from edgefleet.shared.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--devices", "0"], "--devices must be at least 1"),
        (["--update-slots", "-1"], "--update-slots must be 0 (no limit) or more, got -1"),
        (["--repository-url", "http://127.0.0.1:1/v1/repository"], "go together"),
    ],
)
def test_bad_sim_arguments_are_refused(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sim", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgefleet: error: ")
    assert message in err
