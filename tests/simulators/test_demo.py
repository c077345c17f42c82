"""`edgefleet demo` runs end to end from nothing but the install, and stops cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _demo(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "demo",
            "--devices",
            "3",
            "--port",
            "0",
            "--telemetry-interval",
            "1",
            "--data-dir",
            str(tmp_path / "demo"),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_demo_brings_simulated_devices_online_and_stops_after_its_duration(tmp_path: Path) -> None:
    process = _demo(tmp_path, "--duration", "6")
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0, out
    assert "admin token:" in out
    assert re.search(r"devices online 3/3 \| agents connected 3/3", out), out
    persisted = [int(n) for n in re.findall(r"messages persisted (\d+)", out)]
    assert persisted, out
    assert persisted[-1] > 0, out
    assert "dead-lettered 0" in out
    assert out.rstrip().endswith("demo stopped cleanly")


def test_ctrl_c_stops_the_demo_cleanly(tmp_path: Path) -> None:
    process = _demo(tmp_path)
    assert process.stdout is not None
    deadline = time.monotonic() + 90
    seen = ""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        seen += line
        if "devices online" in line:
            break
    else:
        process.kill()
        pytest.fail(f"the demo never printed a summary:\n{seen}")
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=60)
    assert process.returncode == 0, seen + rest
    assert "demo stopped cleanly" in rest
