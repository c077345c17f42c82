"""``edgefleet agent --version`` and ``edgefleet agent restart-check``."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.agent.update.machine import Phase, UpdateState
from edgefleet.agent.update.wiring import STATE_FILE
from edgefleet.shared import __version__
from edgefleet.shared.cli import main


def test_agent_version_names_the_agent_and_its_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["agent", "--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"edgefleet agent {__version__}"


def test_restart_check_prints_the_verdict_for_the_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["agent", "restart-check", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "restart: no update state yet\n"
    (tmp_path / STATE_FILE).write_text(UpdateState(phase=Phase.VERIFYING).model_dump_json())
    assert main(["agent", "restart-check", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "defer: update phase verifying is mid-update\n"


def test_restart_check_takes_the_data_dir_from_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / STATE_FILE).write_text(UpdateState(phase=Phase.COMMITTED).model_dump_json())
    config = tmp_path / "agent.toml"
    config.write_text(
        f'device_id = "cli-1"\ndata_dir = "{data}"\n[broker]\nurl = "mqtt://127.0.0.1:1"\n'
    )
    assert main(["agent", "restart-check", "--config", str(config)]) == 0
    assert capsys.readouterr().out == "restart: update phase committed\n"


def test_restart_check_with_a_bad_config_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("device_id = [")
    assert main(["agent", "restart-check", "--config", str(config)]) == 2
    assert str(config) in capsys.readouterr().err
