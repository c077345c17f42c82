"""``edgefleet fleet audit verify|export``, run as the console script runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine

from edgefleet.fleet.audit.checkpoint import KEY_NAME, load_or_create_key
from edgefleet.fleet.audit.checkpointer import AuditCheckpointer
from edgefleet.shared.cli import main
from edgefleet.shared.signing import keys
from tests.fleet.audit.conftest import fill, sql


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


@pytest.fixture
def signed(engine: Engine, tmp_path: Path) -> tuple[Path, Path]:
    """Five entries and a checkpoint of them: (checkpoint file, public key file)."""
    fill(engine, 5)
    checkpoints = tmp_path / "cp.jsonl"
    AuditCheckpointer(
        engine,
        load_or_create_key(tmp_path / "keys", None),
        path=checkpoints,
        fleet_id="lab",
        interval_s=60,
    ).checkpoint_now()
    return checkpoints, keys.public_key_path(tmp_path / "keys", KEY_NAME)


def verify(engine: Engine, signed: tuple[Path, Path], *extra: str) -> int:
    checkpoints, public = signed
    return main(
        [
            "fleet",
            "audit",
            "verify",
            "--database-url",
            _url(engine),
            "--checkpoints",
            str(checkpoints),
            "--public-key",
            str(public),
            *extra,
        ]
    )


def test_a_sound_log_prints_ok_with_count_and_head(
    engine: Engine, signed: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert verify(engine, signed) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: 5 entries, head ")
    assert "1 signed checkpoint(s)" in out


def test_a_changed_row_is_named_and_exits_1(
    engine: Engine, signed: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    sql(engine, "UPDATE audit_log SET action = 'model.approve' WHERE seq = 3")
    assert verify(engine, signed) == 1
    assert capsys.readouterr().out.startswith("BAD: entry 3: hash:")


def test_a_cut_tail_is_named_and_exits_1(
    engine: Engine, signed: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    sql(engine, "DELETE FROM audit_log WHERE seq > 3")
    sql(engine, "UPDATE audit_head SET seq = 3, hash = (SELECT hash FROM audit_log WHERE seq = 3)")
    assert verify(engine, signed) == 1
    assert capsys.readouterr().out.startswith("BAD: entry 4: tail_missing:")


def test_a_forged_checkpoint_line_is_refused_with_2(
    engine: Engine, signed: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoints, _ = signed
    doc = json.loads(checkpoints.read_text())
    doc["count"] = 4
    checkpoints.write_text(json.dumps(doc) + "\n")
    assert verify(engine, signed) == 2
    err = capsys.readouterr().err
    assert "refused checkpoint" in err
    assert "line 1: the signature does not verify" in err


def test_a_missing_checkpoint_file_or_key_is_an_error(
    engine: Engine, signed: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoints, public = signed
    assert verify(engine, (tmp_path / "none.jsonl", public)) == 2
    assert "does not exist" in capsys.readouterr().err
    assert verify(engine, (checkpoints, tmp_path / "none.pub.json")) == 2
    assert "does not exist" in capsys.readouterr().err


def test_no_checkpoints_checks_the_chain_alone_and_warns(
    engine: Engine, signed: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["fleet", "audit", "verify", "--database-url", _url(engine), "--no-checkpoints"]) == 0
    )
    assert "warning: no signed checkpoints" in capsys.readouterr().out


def test_the_defaults_come_from_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgefleet.fleet.settings import FleetSettings
    from edgefleet.fleet.store.engine import make_engine
    from edgefleet.fleet.store.migrate import create_all

    monkeypatch.setenv("EDGEFLEET_FLEET_DATA_DIR", str(tmp_path / "data"))
    settings = FleetSettings()
    engine = make_engine(settings.database_url)
    create_all(engine)
    fill(engine, 2)
    AuditCheckpointer(
        engine,
        load_or_create_key(settings.resolved_audit_key_dir, None),
        path=settings.resolved_audit_checkpoint_file,
        fleet_id="lab",
        interval_s=60,
    ).checkpoint_now()
    engine.dispose()
    assert main(["fleet", "audit", "verify"]) == 0
    assert capsys.readouterr().out.startswith("OK: 2 entries")


def test_export_writes_jsonl_and_csv(engine: Engine, tmp_path: Path) -> None:
    fill(engine, 3)
    out = tmp_path / "audit.jsonl"
    assert (
        main(["fleet", "audit", "export", "--database-url", _url(engine), "--output", str(out)])
        == 0
    )
    assert [json.loads(line)["seq"] for line in out.read_text().splitlines()] == [1, 2, 3]
    out_csv = tmp_path / "audit.csv"
    args = ["fleet", "audit", "export", "--database-url", _url(engine), "--format", "csv"]
    assert main([*args, "--output", str(out_csv)]) == 0
    assert len(out_csv.read_text().splitlines()) == 4  # header and three entries
