"""The ``edgefleet`` dispatcher: expected failures end in one line, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


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
