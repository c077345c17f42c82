"""``edgefleet ctl`` end to end: the real entry point against a running fleet (SQLite,
Mosquitto, lab keys) with protocol-level devices; tables for people, JSON for scripts,
and the exit codes a CI job relies on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlmodel import Session

from edgefleet.fleet.ctl.errors import ExitCode
from edgefleet.fleet.service import FleetService
from edgefleet.fleet.store.drift_tables import DriftAlert
from edgefleet.shared.messages import utcnow
from tests.fleet.ctl.conftest import Ctl, StartDevices
from tests.support.fleet_fixtures import ADMIN_TOKEN, MakeFleet, admin_client
from tests.support.people import user_token

FAST = {"rollout_tick_interval_s": 0.1, "rollout_lease_s": 1.5}


def _push_both(ctl: Ctl, fleet: FleetService, packages: dict[str, Path]) -> None:
    """Push, publish and (as a second person) approve wine 1.0.0 and 1.1.0."""
    approver = user_token(fleet.engine, "approver", "approver")
    for version, package in packages.items():
        pushed = ctl("models", "push", str(package), "--publish", url=fleet.base_url)
        assert pushed.code == ExitCode.OK, pushed.err
        approved = ctl("models", "approve", "wine", version, url=fleet.base_url, token=approver)
        assert approved.code == ExitCode.OK, approved.err


def _rollout_file(tmp_path: Path, tag: str, **overrides: object) -> Path:
    spec = {
        "model": "wine",
        "version": "1.1.0",
        "selector": {"tags": [tag]},
        "waves": [{"count": 1}, {"fraction": 1.0}],
        "gate": {"soak_s": 0, "timeout_s": 30},
    } | overrides
    path = tmp_path / "rollout.json"
    path.write_text(json.dumps(spec))
    return path


def test_devices_models_and_alerts_as_tables_and_json(
    make_fleet: MakeFleet,
    start_devices: StartDevices,
    ctl: Ctl,
    wine_packages: dict[str, Path],
    unique_id: str,
) -> None:
    fleet = make_fleet()
    url = fleet.base_url
    devices = sorted(start_devices(fleet, 2).devices)

    listed = ctl("devices", "list", "--tag", f"t-{unique_id}", url=url)
    assert listed.code == ExitCode.OK, listed.err
    header, *rows = listed.out.splitlines()
    assert header.split() == ["DEVICE", "ONLINE", "MODEL", "HARDWARE", "TAGS", "LAST", "SEEN"]
    assert [row.split()[:4] for row in rows] == [[d, "yes", "wine", "1.0.0"] for d in devices]
    # Shared options go before or after the command words; JSON is the API's objects.
    for argv in (("-o", "json", "devices", "list"), ("devices", "list", "--output", "json")):
        as_json = ctl(*argv, url=url).json()
        assert [d["device_id"] for d in as_json] == devices
        assert as_json[0]["runtimes"] == ["onnx"]  # a field the tables do not show
    shown = ctl("devices", "show", devices[0], url=url)
    assert f"device:         {devices[0]}" in shown.out
    assert "online:         yes" in shown.out
    enroll = ctl("devices", "enroll-token", "--device-id", "cam-1", url=url)
    assert enroll.code == ExitCode.OK, enroll.err
    assert enroll.out.startswith("efe_")
    assert enroll.out.count("\n") == 1
    assert "one-time enrollment token for cam-1, expires" in enroll.err
    missing = ctl("devices", "show", "ghost-1", url=url)
    assert missing.code == ExitCode.API
    assert missing.err.startswith(
        "edgefleet ctl: error: GET /v1/devices/ghost-1: HTTP 404 not_found:"
    )

    new = wine_packages["1.1.0"]
    pushed = ctl("models", "push", str(new), "--code-revision", "abc123", url=url)
    assert pushed.code == ExitCode.OK, pushed.err
    assert pushed.out.startswith("uploaded wine 1.1.0 (")
    assert "wine 1.1.0: review uploaded, published no" in pushed.out
    again = ctl("models", "push", str(new), "--publish", "-o", "json", url=url)
    assert "already in the registry" in again.err  # notes go to stderr under json
    assert again.json()["published"] is True
    with admin_client(fleet) as api:
        lineage = api.get("/v1/models/wine/1.1.0/lineage").json()
    assert lineage["code_revision"] == "abc123"

    # Four eyes: the uploader may not approve; a second person may.
    own = ctl("models", "approve", "wine", "1.1.0", url=url)
    assert own.code == ExitCode.AUTH
    assert "HTTP 403 four_eyes" in own.err
    approver = user_token(fleet.engine, "approver", "approver")
    approved = ctl("models", "approve", "wine", "1.1.0", "--remark", "ok", url=url, token=approver)
    assert approved.code == ExitCode.OK, approved.err
    assert approved.out.strip() == "wine 1.1.0: approved (ok)"
    assigned = ctl("devices", "assign", devices[1], "wine", "1.1.0", url=url)
    assert assigned.code == ExitCode.OK, assigned.err
    assert (
        assigned.out.strip() == f"device {devices[1]} should run wine 1.1.0 (desired state seq 1)"
    )
    deployments = ctl("devices", "deployments", devices[1], "-o", "json", url=url).json()
    assert deployments["desired"]["target"]["version"] == "1.1.0"
    assert ctl("models", "push", str(wine_packages["1.0.0"]), url=url).code == ExitCode.OK
    retired = ctl("models", "retire", "wine", "1.0.0", "--remark", "old", url=url, token=approver)
    assert retired.code == ExitCode.OK, retired.err
    states = {
        m["version"]: m["review"]["state"]
        for m in ctl("models", "list", "-o", "json", url=url).json()
    }
    assert states == {"1.0.0": "retired", "1.1.0": "approved"}
    assert "wine  1.1.0" in ctl("models", "list", url=url).out

    with Session(fleet.engine) as session:
        session.add(
            DriftAlert(
                id=f"al-{unique_id}",
                kind="data_drift",
                severity="warning",
                model_name="wine",
                model_version="1.1.0",
                slice_key="tag:site-b",
                message="input drift on wine 1.1.0 on tag:site-b: alcohol",
                created_at=utcnow(),
            )
        )
        session.commit()
    alerts = ctl("alerts", "list", url=url)
    assert alerts.code == ExitCode.OK, alerts.err
    assert alerts.out.splitlines()[1].split()[:5] == [
        f"al-{unique_id}",
        "data_drift",
        "warning",
        "wine",
        "1.1.0",
    ]
    acked = ctl("alerts", "ack", f"al-{unique_id}", "--remark", "looking", url=url)
    assert acked.code == ExitCode.OK, acked.err
    [alert] = ctl("alerts", "list", "--kind", "data_drift", "-o", "json", url=url).json()
    assert alert["acknowledged"]["remark"] == "looking"

    # Credentials: a wrong token, none, and one that may not do this.
    wrong = ctl("devices", "list", url=url, token="ef_0000000000000000_wrong")
    assert wrong.code == ExitCode.AUTH
    assert "GET /v1/devices: HTTP 401 unauthenticated" in wrong.err
    assert "check EDGEFLEET_TOKEN" in wrong.err
    assert ctl("devices", "list", url=url, token=None).code == ExitCode.AUTH
    viewer = user_token(fleet.engine, "viewer", "viewer")
    assert ctl("whoami", "-o", "json", url=url, token=viewer).json()["name"] == "viewer"
    refused = ctl("models", "push", str(new), url=url, token=viewer)
    assert refused.code == ExitCode.AUTH
    assert "POST /v1/models: HTTP 403 forbidden" in refused.err


def test_rollout_from_a_file_is_watched_to_completion(
    make_fleet: MakeFleet,
    start_devices: StartDevices,
    ctl: Ctl,
    fast_wine_packages: dict[str, Path],
    unique_id: str,
    tmp_path: Path,
) -> None:
    fleet = make_fleet(**FAST)
    url = fleet.base_url
    _push_both(ctl, fleet, fast_wine_packages)
    start_devices(fleet, 3)
    spec = _rollout_file(tmp_path, f"t-{unique_id}")

    created = ctl("rollouts", "create", "-f", str(spec), "--watch", "--interval", "0.1", url=url)
    assert created.code == ExitCode.OK, created.out + created.err
    lines = created.out.splitlines()
    assert lines[0].startswith("created rollout ro-")
    assert lines[0].endswith("wine 1.1.0 to 3 device(s) in 2 wave(s) (1, 2), status created")
    assert lines[-1].startswith("[")
    assert "completed, wave 2/2, 3/3 healthy | healthy 3 | wave 2 gate passed" in lines[-1]
    assert "\x1b" not in created.out  # not a terminal: plain lines, one per change
    assert len(lines) == len(set(line.split("] ", 1)[-1] for line in lines))

    # A script reads the same rollout from a separate process, the way CI runs it.
    env = os.environ | {"EDGEFLEET_URL": url, "EDGEFLEET_TOKEN": ADMIN_TOKEN}
    smoke = subprocess.run(
        [sys.executable, "-m", "edgefleet.shared.cli", "ctl", "rollouts", "list", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert smoke.returncode == 0, smoke.stderr
    [listed] = json.loads(smoke.stdout)
    assert listed["status"] == "completed"
    assert listed["counts"]["healthy"] == 3

    shown = ctl("rollouts", "show", listed["id"], url=url)
    assert shown.out.splitlines()[0] == (
        f"rollout {listed['id']}: wine 1.1.0 completed, wave 2/2, 3/3 healthy"
    )
    # Watching a finished rollout answers at once, with its outcome.
    assert ctl("rollouts", "watch", listed["id"], url=url).code == ExitCode.OK


def test_a_rollout_that_rolls_back_exits_non_zero(
    make_fleet: MakeFleet,
    start_devices: StartDevices,
    ctl: Ctl,
    fast_wine_packages: dict[str, Path],
    unique_id: str,
    tmp_path: Path,
) -> None:
    fleet = make_fleet(**FAST)
    url = fleet.base_url
    _push_both(ctl, fleet, fast_wine_packages)
    devices = start_devices(fleet, 2)
    for device_id in devices.devices:
        devices.fail(device_id, "1.1.0")
    spec = tmp_path / "rollout.toml"  # TOML works as well as JSON
    spec.write_text(
        f'model = "wine"\nversion = "0.0.0"\nfailure_policy = "rollback_all"\n'
        f"waves = [{{count = 1}}, {{fraction = 1.0}}]\n"
        f'[selector]\ntags = ["t-{unique_id}"]\n[gate]\nsoak_s = 0\ntimeout_s = 30\n'
    )

    result = ctl(
        "rollouts",
        "create",
        "-f",
        str(spec),
        "--version",
        "1.1.0",
        "--watch",
        "--interval",
        "0.1",
        "-o",
        "json",
        url=url,
    )
    assert result.code == ExitCode.ROLLED_BACK, result.err
    final = result.json()  # the last state, for the script; progress went to stderr
    assert final["status"] == "rolled_back"
    assert final["version"] == "1.1.0"
    assert "gate failed" in result.err
    assert "rollout ro-" in result.err
    assert "rolled_back" in result.err


def test_pause_resume_and_abort_from_the_command_line(
    make_fleet: MakeFleet,
    start_devices: StartDevices,
    ctl: Ctl,
    fast_wine_packages: dict[str, Path],
    unique_id: str,
    tmp_path: Path,
) -> None:
    fleet = make_fleet(**FAST)
    url = fleet.base_url
    _push_both(ctl, fleet, fast_wine_packages)
    start_devices(fleet, 2)
    # A long soak holds the rollout after its canary: time to command it.
    spec = _rollout_file(tmp_path, f"t-{unique_id}", gate={"soak_s": 600, "timeout_s": 30})
    created = ctl("rollouts", "create", "-f", str(spec), "-o", "json", url=url)
    assert created.code == ExitCode.OK, created.err
    rollout_id = created.json()["id"]

    paused = ctl("rollouts", "pause", rollout_id, url=url)
    assert paused.code == ExitCode.OK, paused.err
    assert paused.out.startswith(f"rollout {rollout_id}: wine 1.1.0 paused")
    watched = ctl("rollouts", "watch", rollout_id, "--exit-on-pause", url=url)
    assert watched.code == ExitCode.PAUSED
    assert f"rollout {rollout_id} ended paused" in watched.out
    resumed = ctl("rollouts", "resume", rollout_id, "-o", "json", url=url)
    assert resumed.json()["status"] in {"created", "running", "soaking"}
    timed_out = ctl(
        "rollouts", "watch", rollout_id, "--interval", "0.1", "--timeout", "0.3", url=url
    )
    assert timed_out.code == ExitCode.TIMEOUT
    assert "gave up after --timeout 0.3s" in timed_out.out

    aborted = ctl("rollouts", "abort", rollout_id, url=url)
    assert aborted.code == ExitCode.OK, aborted.err
    assert ctl("rollouts", "watch", rollout_id, url=url).code == ExitCode.ABORTED
    again = ctl("rollouts", "pause", rollout_id, url=url)
    assert again.code == ExitCode.API
    assert f"POST /v1/rollouts/{rollout_id}/pause: HTTP 409" in again.err
    [listed] = ctl("rollouts", "list", "--status", "aborted", "-o", "json", url=url).json()
    assert listed["id"] == rollout_id
