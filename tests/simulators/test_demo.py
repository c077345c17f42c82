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
            "edgefleet.shared.cli",
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


def test_demo_brings_devices_online_raises_drift_alerts_for_the_drifting_site_and_stops(
    tmp_path: Path,
) -> None:
    # 2 drifting devices x 10/s fill the fleet's 30 s drift lookback with ~600 rows, well
    # above the 200 a verdict needs.
    process = _demo(
        tmp_path, "--devices", "4", "--rate", "10", "--duration", "45", "--drift-after", "5"
    )
    out, _ = process.communicate(timeout=180)
    assert process.returncode == 0, out
    assert "admin token:" in out
    assert re.search(r"devices online 4/4 \| agents connected 4/4", out), out
    persisted = [int(n) for n in re.findall(r"messages persisted (\d+)", out)]
    assert persisted, out
    assert persisted[-1] > 0, out
    assert "dead-lettered 0" in out
    assert "site-b's sensors start drifting" in out
    assert re.search(r"ALERT data_drift \(\w+\) on tag:site-b", out), out
    assert "on tag:site-a" not in out, out
    assert out.rstrip().endswith("demo stopped cleanly")


def test_ctrl_c_stops_the_demo_cleanly(tmp_path: Path) -> None:
    process = _demo(tmp_path, "--drift-after", "-1")
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


def test_a_second_run_on_the_same_data_dir_starts_where_the_first_stopped(
    tmp_path: Path,
) -> None:
    for run in ("first", "second"):
        out, _ = _demo(tmp_path, "--duration", "2", "--drift-after", "-1").communicate(timeout=180)
        assert "Traceback" not in out, f"{run} run:\n{out}"
        assert out.rstrip().endswith("demo stopped cleanly"), f"{run} run:\n{out}"
        # The summary is readable: twenty agents' INFO lines stay out of it.
        assert " INFO edgefleet." not in out, f"{run} run:\n{out}"
    assert "reusing wine-classifier-1.0.0.efpkg" in out


def test_a_conflicting_model_ends_in_one_line_not_a_traceback(tmp_path: Path) -> None:
    out, _ = _demo(tmp_path, "--duration", "2", "--drift-after", "-1").communicate(timeout=180)
    assert out.rstrip().endswith("demo stopped cleanly"), out
    # Different bytes under the version the fleet already holds: the registry's 409.
    (tmp_path / "demo" / "models" / "wine-classifier-1.0.0.efpkg").write_bytes(b"damaged")
    process = _demo(tmp_path, "--duration", "2", "--drift-after", "-1")
    out, _ = process.communicate(timeout=180)
    assert process.returncode == 2, out
    assert "Traceback" not in out, out
    assert "edgefleet: error: the fleet refused the demo model (409:" in out, out


def test_demo_with_identities_enrolls_every_device_behind_a_closed_broker_and_restarts(
    tmp_path: Path,
) -> None:
    # The second run on the same data dir: the devices keep their identities, the broker
    # gets new ports and the same CA, and everything comes back online.
    for run in (1, 2):
        process = _demo(tmp_path, "--identities", "--duration", "6", "--drift-after", "-1")
        out, _ = process.communicate(timeout=180)
        assert process.returncode == 0, f"run {run}:\n{out}"
        assert "a device certificate of the fleet CA required" in out, out
        assert re.search(r"devices online 3/3 \| agents connected 3/3", out), out
        assert "dead-lettered 0" in out, out
        assert out.rstrip().endswith("demo stopped cleanly")
    identity_dirs = sorted((tmp_path / "demo" / "devices").glob("*/identity"))
    assert len(identity_dirs) == 3
    assert all((d / "device.cert.pem").exists() for d in identity_dirs)
    config = (tmp_path / "demo" / "broker" / "mosquitto.conf").read_text()
    assert "require_certificate true" in config
    assert "use_identity_as_username true" in config


def test_demo_refuses_identities_with_an_outside_broker(tmp_path: Path) -> None:
    process = _demo(tmp_path, "--identities", "--broker", "mqtt://127.0.0.1:1883")
    out, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "--identities runs its own Mosquitto" in out, out
