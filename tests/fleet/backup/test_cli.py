"""``edgefleet fleet backup`` and ``restore`` as an operator runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.fleet.store import make_engine
from edgefleet.fleet.store.migrate import create_all
from edgefleet.shared.cli import main


def test_backup_then_restore_prints_how_to_serve_the_restored_fleet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGEFLEET_FLEET_DATABASE_URL", raising=False)
    data = tmp_path / "data"
    engine = make_engine(f"sqlite:///{data / 'fleet.db'}")
    create_all(engine)
    engine.dispose()
    (data / "audit-keys").mkdir()
    (data / "audit-keys" / "audit.pub.json").write_text("{}")

    assert main(["fleet", "backup", str(tmp_path / "b"), "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert "backed up the database" in out
    assert "backup complete" in out

    assert main(["fleet", "restore", str(tmp_path / "b"), "--data-dir", str(tmp_path / "n")]) == 0
    out = capsys.readouterr().out
    assert f"edgefleet fleet serve --data-dir {tmp_path / 'n'}" in out
    assert (tmp_path / "n" / "fleet.db").exists()
    assert (tmp_path / "n" / "audit-keys" / "audit.pub.json").read_text() == "{}"


def test_a_failure_is_one_line_naming_the_cause(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fleet", "restore", str(tmp_path), "--data-dir", str(tmp_path / "n")]) == 2
    err = capsys.readouterr().err
    assert "not a complete backup" in err
    assert "Traceback" not in err
