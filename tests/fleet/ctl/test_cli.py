"""The ``edgefleet ctl`` parser: its help documents every exit code, a command needs
its words, and bad input is refused before anything is sent."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from edgefleet.fleet.ctl.commands import read_rollout_file
from edgefleet.fleet.ctl.errors import EXIT_CODES_HELP, ExitCode
from edgefleet.shared.cli import main
from tests.fleet.ctl.conftest import Ctl

README = Path(__file__).resolve().parents[3] / "README.md"


def test_help_lists_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["ctl", "--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert EXIT_CODES_HELP in shown
    listed = {
        int(line.split()[0]) for line in EXIT_CODES_HELP.splitlines()[1:] if line[2].isdigit()
    }
    assert listed == {int(code) for code in ExitCode if code != ExitCode.OK} | {0}


def test_the_readme_documents_every_exit_code() -> None:
    text = README.read_text()
    for code in ExitCode:
        assert f"| {int(code)} |" in text, f"README has no row for exit code {int(code)}"


def test_a_group_without_a_command_prints_its_help_with_the_usage_code(
    ctl: Ctl, capsys: pytest.CaptureFixture[str]
) -> None:
    result = ctl("rollouts")
    assert result.code == ExitCode.USAGE
    assert "rollouts commands" in result.out
    assert "watch" in result.out


def test_bad_arguments_exit_with_the_usage_code(clean_env: None) -> None:
    for argv in (["ctl", "rollouts", "create"], ["ctl", "devices", "list", "--limit", "0"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == ExitCode.USAGE


def test_no_url_anywhere_is_a_usage_error(ctl: Ctl) -> None:
    result = ctl("devices", "list")
    assert result.code == ExitCode.USAGE
    assert result.err.startswith(
        "edgefleet ctl: error: no fleet URL: pass --url, set EDGEFLEET_URL"
    )


def test_a_bad_rollout_file_is_refused_before_anything_is_sent(ctl: Ctl, tmp_path: Path) -> None:
    spec = tmp_path / "rollout.json"
    spec.write_text("{not json")
    # Nothing listens at this URL: the file is refused before any request.
    result = ctl("rollouts", "create", "-f", str(spec), url="http://127.0.0.1:9")
    assert result.code == ExitCode.USAGE
    assert f"rollout file {spec}: not valid JSON: " in result.err


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("r.json", "[1, 2]", "expected an object, got list"),
        ("r.json", "", "not valid JSON"),
        ("r.toml", "model = ", "not valid TOML"),
        ("missing.json", None, "No such file or directory"),
    ],
)
def test_rollout_file_errors_name_the_file(
    tmp_path: Path, name: str, text: str | None, message: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(Exception, match=message) as raised:
        read_rollout_file(path, io.StringIO())
    assert str(path) in str(raised.value)


def test_rollout_file_is_json_toml_or_stdin(tmp_path: Path) -> None:
    body = {"model": "wine", "version": "1.1.0", "waves": [{"count": 1}, {"fraction": 1.0}]}
    as_json = tmp_path / "r.json"
    as_json.write_text(json.dumps(body))
    as_toml = tmp_path / "r.toml"
    as_toml.write_text(
        'model = "wine"\nversion = "1.1.0"\nwaves = [{count = 1}, {fraction = 1.0}]\n'
    )
    assert read_rollout_file(as_json, io.StringIO()) == body
    assert read_rollout_file(as_toml, io.StringIO()) == body
    assert read_rollout_file(Path("-"), io.StringIO(json.dumps(body))) == body
