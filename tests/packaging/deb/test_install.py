"""The package's life on a real Debian system: install, run, upgrade, remove, purge.

These tests install the package with dpkg on this machine (root, no running systemd, as
in CI's container), so the maintainer scripts run for real. They are steps of one life
cycle, in file order, on one module-scoped install: install (the fixture), then the
installed agent, its units, an upgrade over an edited config and a model update in
progress, and last removal and purge. The fixture purges whatever a failed run left, and
purges again when the module ends, pass or fail.

Safe on a shared CI machine: a lock file serialises concurrent runs of this module; dpkg
waits for another package manager's lock instead of failing; and on a machine where
systemd runs (so postinst would start a real agent against the example config) the tests
skip. dpkg runs with --force-unsafe-io (no fsync per file: ~10 s per install instead of
~20 s); what it installs is the same.
"""

from __future__ import annotations

import fcntl
import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.update.machine import Phase, UpdateState
from edgefleet.agent.update.types import UpdateTarget
from tests.packaging.deb.conftest import Debs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("dpkg") is None,
        reason="installs a package: needs root and dpkg",
    ),
    pytest.mark.skipif(
        Path("/run/systemd/system").is_dir(),
        reason="systemd runs here: installing the package would start a real agent",
    ),
]

PACKAGE = "edgefleet-agent"
CONFIG = Path("/etc/edgefleet/agent.toml")
STATE = Path("/var/lib/edgefleet-agent")
VENV = Path("/usr/lib/edgefleet-agent")
UNITS = Path("/lib/systemd/system")
UPGRADE_RESTART = Path("/usr/libexec/edgefleet-agent/upgrade-restart")
LOCK = Path("/run/lock/edgefleet-agent-deb-tests.lock")
# dpkg's words when another dpkg or apt holds its lock.
DPKG_LOCKED = ("lock was locked by another process", "database is locked by another process")
TARGET = UpdateTarget(desired_seq=4, name="wine", version="1.1.0", sha256="cd" * 32, length=9)


def sh(*command: str | Path, lock_wait_s: float = 300) -> str:
    """Run a command without input; return stdout and stderr, or fail with them.

    A dpkg that finds another package manager's lock is tried again for ``lock_wait_s``.
    """
    deadline = time.monotonic() + lock_wait_s
    while True:
        result = subprocess.run(
            [str(c) for c in command],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=300,
            check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        out = result.stdout + result.stderr
        locked = result.returncode != 0 and any(words in out for words in DPKG_LOCKED)
        if not locked or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{out[-4000:]}"
    return out


def dpkg(*args: str | Path) -> str:
    return sh("dpkg", "--force-unsafe-io", *args)


def installed_version() -> str | None:
    result = subprocess.run(
        ["dpkg-query", "--show", "--showformat=${db:Status-Status} ${Version}", PACKAGE],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return None
    status, _, version = result.stdout.partition(" ")
    return None if status == "not-installed" else version


def persist_state(phase: Phase) -> None:
    """What the running agent leaves in its state directory, owned by its user."""
    path = STATE / "update-state.json"
    path.write_text(UpdateState(phase=phase, target=TARGET).model_dump_json())
    shutil.chown(path, "edgefleet-agent", "edgefleet-agent")


@pytest.fixture(scope="module")
def installed(debs: Debs) -> Iterator[Debs]:
    with LOCK.open("w") as lock:
        # Another run of this module (another checkout, CI) has the package: wait for it.
        fcntl.flock(lock, fcntl.LOCK_EX)
        prior = installed_version()
        if prior is not None and "~test" not in prior:
            pytest.skip(f"{PACKAGE} {prior} is installed here; this test would replace it")
        dpkg("--purge", PACKAGE)  # a failed run's leftover
        try:
            dpkg("--install", debs.old)
            yield debs
        finally:
            dpkg("--purge", PACKAGE)


def test_install_makes_the_user_the_state_dir_and_a_private_config(installed: Debs) -> None:
    assert installed_version() == installed.old_version
    assert sh("dpkg", "--verify", PACKAGE) == "", "installed files differ from md5sums"
    user = pwd.getpwnam("edgefleet-agent")
    assert user.pw_dir == str(STATE)
    assert user.pw_uid < 1000, "a system user"
    state = STATE.stat()
    assert (state.st_uid, stat.S_IMODE(state.st_mode)) == (user.pw_uid, 0o700)
    config = CONFIG.stat()
    assert stat.S_IMODE(config.st_mode) == 0o640
    assert (config.st_uid, grp.getgrgid(config.st_gid).gr_name) == (0, "edgefleet-agent")
    # Enabled without a running systemd, as deb-systemd-helper does it.
    assert Path("/etc/systemd/system/multi-user.target.wants/edgefleet-agent.service").is_symlink()


def test_the_installed_agent_reports_its_version_and_checks_its_config(installed: Debs) -> None:
    version = sh("/usr/bin/edgefleet", "--version")
    assert version.startswith("edgefleet ")
    assert sh("/usr/bin/edgefleet", "agent", "--version").startswith("edgefleet agent ")
    # As the service runs it: its own user, the packaged config, the venv's interpreter.
    out = sh("runuser", "-u", "edgefleet-agent", "--", "/usr/bin/edgefleet", "agent",
             "check-config", "--config", CONFIG)  # fmt: skip
    effective = json.loads(out)
    assert effective["data_dir"] == str(STATE)
    probe = sh(VENV / "bin/python3", "-c", "import sys, onnxruntime; print(sys.prefix)")
    assert probe.strip() == str(VENV), "the venv's interpreter uses the venv"


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package 'systemd')",
)
def test_systemd_analyze_verifies_the_installed_units(installed: Debs) -> None:
    units = [UNITS / f"{PACKAGE}{suffix}" for suffix in (".service", "-restart.path",
                                                          "-restart.service")]  # fmt: skip
    result = subprocess.run(
        ["systemd-analyze", "verify", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = [line for line in result.stderr.splitlines() if PACKAGE in line]
    assert result.returncode == 0, result.stderr
    assert not problems, result.stderr


def test_an_upgrade_keeps_the_edited_config_and_defers_a_restart_mid_update(
    installed: Debs,
) -> None:
    edited = CONFIG.read_text().replace('device_id = "pi-greenhouse-01"', 'device_id = "edited-1"')
    assert "edited-1" in edited
    CONFIG.write_text(edited)
    persist_state(Phase.PROBATION)
    out = dpkg("--install", installed.new)
    assert installed_version() == installed.new_version
    assert CONFIG.read_text() == edited, "dpkg replaced the edited conffile"
    assert not list(CONFIG.parent.glob("agent.toml.dpkg-*"))
    assert stat.S_IMODE(CONFIG.stat().st_mode) == 0o640, "the statoverride holds on upgrade"
    check = json.loads(sh("/usr/bin/edgefleet", "agent", "check-config", "--config", CONFIG))
    assert check["device_id"] == "edited-1"
    assert "defer: update phase probation (wine 1.1.0) is mid-update" in out
    assert "systemd is not running, nothing to restart" in out
    # The state the upgrade judged is the agent's, untouched.
    assert json.loads((STATE / "update-state.json").read_text())["phase"] == "probation"


def test_the_upgrade_restart_goes_ahead_once_the_update_is_at_rest(installed: Debs) -> None:
    persist_state(Phase.COMMITTED)
    assert "restart: update phase committed (wine 1.1.0)" in sh(UPGRADE_RESTART, "now")
    # Nothing pending: the watcher's service has nothing to do.
    assert sh(UPGRADE_RESTART, "pending") == ""


def test_remove_keeps_config_and_state_and_purge_removes_them(installed: Debs) -> None:
    dpkg("--remove", PACKAGE)
    assert not VENV.exists(), "the virtualenv is left behind"
    assert not Path("/usr/bin/edgefleet").exists()
    assert CONFIG.exists()
    assert (STATE / "update-state.json").exists()
    dpkg("--purge", PACKAGE)
    assert installed_version() is None
    assert not CONFIG.exists()
    assert not STATE.exists()
    assert not (UNITS / f"{PACKAGE}.service").exists()
    overrides = sh("dpkg-statoverride", "--list")
    assert str(CONFIG) not in overrides
