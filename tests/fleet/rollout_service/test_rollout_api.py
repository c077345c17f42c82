"""The rollout REST API: creation errors, overlap, roles, operator commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from edgefleet.fleet.service import FleetService
from tests.fleet.publisher import wait_until
from tests.fleet.rollout_service.conftest import FAST, StartDevices
from tests.support.fleet_fixtures import MakeFleet, admin_client, upload
from tests.support.people import user_token
from tests.support.rollouts import history, publish_and_approve, wait_status

LONG_SOAK = {"soak_s": 600, "timeout_s": 30}


def _viewer(fleet: FleetService) -> httpx.Client:
    token = user_token(fleet.engine, "viewer", "viewer")
    return httpx.Client(
        base_url=fleet.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=20
    )


def _create(api: httpx.Client, **body: Any) -> httpx.Response:
    return api.post("/v1/rollouts", json={"model": "wine", "version": "1.1.0"} | body)


def test_creation_errors_name_the_problem_and_store_nothing(
    make_fleet: MakeFleet,
    start_devices: StartDevices,
    wine_packages: dict[str, Path],
    unique_id: str,
) -> None:
    fleet = make_fleet(**FAST)
    tag = f"t-{unique_id}"
    with admin_client(fleet) as api:
        for package in wine_packages.values():
            assert upload(api, package).status_code == 201
        start_devices(fleet, api, 4)
        selector = {"tags": [tag]}

        unknown = _create(api, version="9.9.9", selector=selector)
        assert unknown.status_code == 404
        assert "9.9.9" in unknown.json()["error"]["message"]

        unpublished = _create(api, selector=selector)
        assert unpublished.status_code == 409
        assert "not published" in unpublished.json()["error"]["message"]

        assert api.post("/v1/models/wine/1.1.0/publish").status_code == 200
        last_wave_short = _create(api, selector=selector, waves=[{"fraction": 0.5}])
        assert last_wave_short.status_code == 422
        assert "last wave must be fraction=1.0" in last_wave_short.text
        drift = _create(api, selector=selector, gate={"max_drift_score": -0.2})
        assert drift.status_code == 422
        assert "max_drift_score" in drift.text
        assert _create(api, selector=selector, colour="red").status_code == 422

        nothing = _create(api, selector={"tags": ["no-such-tag"]})
        assert nothing.status_code == 422
        assert "matches none" in nothing.json()["error"]["message"]
        strangers = _create(api, selector={"device_ids": ["ghost-1"]})
        assert strangers.status_code == 422
        assert "ghost-1" in strangers.json()["error"]["message"]

        assert api.get("/v1/rollouts").json()["total"] == 0
        assert api.get("/v1/rollouts/ro-nothing").status_code == 404


def test_overlapping_rollout_is_refused_naming_devices_and_holder(
    make_fleet: MakeFleet,
    start_devices: StartDevices,
    wine_packages: dict[str, Path],
    unique_id: str,
) -> None:
    fleet = make_fleet(**FAST)
    tag = f"t-{unique_id}"
    with admin_client(fleet) as api:
        for version, package in wine_packages.items():
            assert upload(api, package).status_code == 201
            publish_and_approve(api, fleet.engine, "wine", version)
        devices = start_devices(fleet, api, 6)
        ids = sorted(devices.devices)
        first = _create(
            api, selector={"device_ids": ids[:3]}, waves=[{"fraction": 1.0}], gate=LONG_SOAK
        )
        assert first.status_code == 201, first.text
        holder = first.json()["id"]

        overlap = _create(api, selector={"tags": [tag]})
        assert overlap.status_code == 409
        error = overlap.json()["error"]
        assert error["code"] == "rollout_overlap"
        assert holder in error["message"]
        for device_id in ids[:3]:
            assert device_id in error["message"]
        assert ids[3] not in error["message"]

        disjoint = _create(api, selector={"device_ids": ids[3:]}, waves=[{"fraction": 1.0}])
        assert disjoint.status_code == 201, disjoint.text
        listed = api.get("/v1/rollouts").json()
        assert listed["total"] == 2
        # Once the holder is finished its devices are free again.
        assert api.post(f"/v1/rollouts/{holder}/abort").status_code == 200
        wait_status(api, disjoint.json()["id"], {"completed"})
        again = _create(api, selector={"device_ids": ids[:3]}, waves=[{"fraction": 1.0}])
        assert again.status_code == 201, again.text


def test_viewer_reads_but_cannot_create_or_command(
    make_fleet: MakeFleet,
    start_devices: StartDevices,
    wine_packages: dict[str, Path],
    unique_id: str,
) -> None:
    fleet = make_fleet(**FAST)
    with admin_client(fleet) as api, _viewer(fleet) as viewer:
        for version, package in wine_packages.items():
            assert upload(api, package).status_code == 201
            publish_and_approve(api, fleet.engine, "wine", version)
        start_devices(fleet, api, 2)
        body = {"selector": {"tags": [f"t-{unique_id}"]}, "gate": LONG_SOAK}
        denied = viewer.post("/v1/rollouts", json={"model": "wine", "version": "1.1.0"} | body)
        assert denied.status_code == 403
        created = _create(api, **body)
        assert created.status_code == 201
        rollout_id = created.json()["id"]
        assert viewer.get(f"/v1/rollouts/{rollout_id}").status_code == 200
        assert viewer.get(f"/v1/rollouts/{rollout_id}/history").status_code == 200
        assert viewer.post(f"/v1/rollouts/{rollout_id}/pause").status_code == 403
        assert httpx.get(f"{fleet.base_url}/v1/rollouts").status_code == 401


def test_pause_resume_abort_rollback_through_the_api(
    make_fleet: MakeFleet,
    start_devices: StartDevices,
    wine_packages: dict[str, Path],
    unique_id: str,
) -> None:
    fleet = make_fleet(**FAST)
    with admin_client(fleet) as api:
        for version, package in wine_packages.items():
            assert upload(api, package).status_code == 201
            publish_and_approve(api, fleet.engine, "wine", version)
        devices = start_devices(fleet, api, 6)
        created = _create(
            api,
            selector={"tags": [f"t-{unique_id}"]},
            waves=[{"count": 2, "gate": LONG_SOAK}, {"fraction": 1.0}],
        )
        assert created.status_code == 201, created.text
        rollout_id = created.json()["id"]
        url = f"/v1/rollouts/{rollout_id}"
        soaking = wait_status(api, rollout_id, {"soaking"})
        assert soaking["waves"][0]["counts"]["healthy"] == 2

        paused = api.post(url + "/pause")
        assert paused.status_code == 200
        assert paused.json()["status"] == "paused"
        assert api.post(url + "/pause").json()["status"] == "paused"  # repeat: no-op
        assert api.post(url + "/resume").json()["status"] in {"running", "soaking"}
        aborted = api.post(url + "/abort")
        assert aborted.json()["status"] == "aborted"
        refused = api.post(url + "/resume")
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "rollout_command_rejected"
        assert "aborted" in refused.json()["error"]["message"]

        assert api.post(url + "/rollback").json()["status"] == "rolling_back"
        done = wait_status(api, rollout_id, {"rolled_back"})
        assert done["counts"]["rolled_back"] == 2
        touched = [d for d in devices.devices if devices.accepted(d)]
        assert len(touched) == 2
        for device_id in touched:
            assert [b.rollback for b in devices.accepted(device_id)] == [False, True]
            assert devices.devices[device_id].version == "1.0.0"

        commands = [line["detail"]["command"] for line in history(api, rollout_id, kind="command")]
        assert commands == ["pause", "pause", "resume", "abort", "rollback"]
        wait_until(lambda: api.get(url).json()["status"] == "rolled_back")
