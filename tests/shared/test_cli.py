"""The ``edgefleet`` dispatcher: expected failures end in one line, never a traceback; a
named subcommand loads only its own registrar."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.shared.cli import build_parser


def _edgefleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.shared.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_an_os_error_is_one_line_with_the_hint(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = _edgefleet("fleet", "lab-keys", "--dir", str(blocker / "keys"))
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("edgefleet: error: ")
    assert "--log-level DEBUG shows the traceback" in result.stderr


def test_a_command_error_under_python_dash_m_is_one_line(tmp_path: Path) -> None:
    # Under -m the dispatcher is __main__; the error class must still be the commands' one.
    result = _edgefleet("agent", "check-config", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert "config file not found" in result.stderr


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(sub.choices)


@pytest.mark.parametrize(
    "argv",
    [
        ["agent", "run"],
        ["--log-level", "WARNING", "agent", "run"],
        ["--log-format=json", "agent", "check-config"],
        ["--log-format", "json", "--log-level", "DEBUG", "agent"],
    ],
)
def test_a_named_subcommand_loads_only_its_own_registrar(argv: list[str]) -> None:
    # The other registrars import SQLAlchemy, Alembic and the model tooling (~33 MiB the
    # agent never uses); the option values before the command are not taken for it.
    assert _commands(build_parser(argv)) == {"agent"}


@pytest.mark.parametrize("argv", [None, [], ["--help"], ["no-such-command"], ["--", "agent"]])
def test_without_a_known_subcommand_every_registrar_is_loaded(argv: list[str] | None) -> None:
    assert {"agent", "fleet", "model", "keys", "ctl"} <= _commands(build_parser(argv))
