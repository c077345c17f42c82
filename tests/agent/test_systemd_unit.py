from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.agent import REPO

UNIT = REPO / "packaging" / "systemd" / "edgefleet-agent.service"


def test_unit_is_a_hardened_notify_service_with_a_watchdog() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "DynamicUser=yes",
        "StateDirectory=edgefleet-agent",
        "ExecStart=/usr/bin/edgefleet agent run --config /etc/edgefleet/agent.toml",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ProtectKernelTunables=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "MemoryMax=",
    ):
        assert line in text, line


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package 'systemd')",
)
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart exists; point it at this checkout's console script.
    edgefleet = Path(sys.executable).parent / "edgefleet"
    assert edgefleet.exists(), f"{edgefleet} missing: pip install -e . first"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/bin/edgefleet", str(edgefleet)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [line for line in result.stderr.splitlines() if UNIT.name in line]
    assert result.returncode == 0, result.stderr
    assert not problems, result.stderr
