"""``edgefleet fleet migrate``: the schema step as an operator runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.fleet.store.migrate import head_revision, history
from edgefleet.fleet.store.migrate_cli import NOT_AT_HEAD_EXIT
from edgefleet.shared.cli import main


def test_upgrade_then_current_then_history(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fleet", "migrate", "current", "--database-url", database_url]) == (
        NOT_AT_HEAD_EXIT
    )
    out, err = capsys.readouterr()
    assert "current: none" in out
    assert "edgefleet fleet migrate upgrade" in err

    assert main(["fleet", "migrate", "upgrade", "--database-url", database_url]) == 0
    out, _ = capsys.readouterr()
    assert [line.split(":")[0] for line in out.splitlines()] == [
        f"applied {r.revision}" for r in history()
    ]

    assert main(["fleet", "migrate", "upgrade", "--database-url", database_url]) == 0
    assert "nothing to do" in capsys.readouterr().out

    assert main(["fleet", "migrate", "current", "--database-url", database_url]) == 0
    assert f"current: {head_revision()}" in capsys.readouterr().out

    assert main(["fleet", "migrate", "history"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [r.revision for r in history()]
    assert lines[-1].endswith("(head)")


def test_the_default_database_is_the_fleets_own_sqlite_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGEFLEET_FLEET_DATABASE_URL", raising=False)
    assert main(["fleet", "migrate", "upgrade", "--data-dir", str(tmp_path / "fleet")]) == 0
    assert (tmp_path / "fleet" / "fleet.db").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--database-url", "mysql://x/y"], "sqlite:// or postgresql://"),
        (["--database-url", "postgresql://fleet@127.0.0.1:1/none"], "migration failed"),
        (["--revision", "9999"], "9999"),
    ],
)
def test_bad_input_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code = main(["fleet", "migrate", "upgrade", "--data-dir", str(tmp_path), *argv])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_serve_on_a_database_that_is_behind_exits_with_the_command_to_run(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet.shared.cli", "fleet", "serve", "--port", "0"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "EDGEFLEET_FLEET_DATA_DIR": str(tmp_path / "fleet")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "is empty: run `edgefleet fleet migrate upgrade --database-url sqlite:///" in (
        result.stderr
    )


def test_revision_refuses_when_the_models_match_head(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet", "migrate", "revision", "-m", "nothing"]) == 2
    assert "the models match head" in capsys.readouterr().err
