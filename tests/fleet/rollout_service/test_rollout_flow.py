"""Staged rollouts through the running fleet: real broker, real database, real signed
desired states, devices at the protocol level."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgefleet.fleet.rollouts.model import Candidate, Selector
from edgefleet.fleet.rollouts.selector import select_targets
from tests.fleet.rollout_service.conftest import FAST, StartDevices, publish_models
from tests.fleet.rollout_service.devices import ProtocolFleet
from tests.support.fleet_fixtures import MakeFleet, admin_client
from tests.support.rollouts import history, wait_status

THREE_WAVES = [{"count": 2}, {"fraction": 0.5}, {"fraction": 1.0}]


def _request(tag: str, **overrides: Any) -> dict[str, Any]:
    return {
        "model": "wine",
        "version": "1.1.0",
        "selector": {"tags": [tag]},
        "waves": THREE_WAVES,
        "gate": {"soak_s": 0, "timeout_s": 30},
    } | overrides


def _wave_order(devices: ProtocolFleet, tag: str, seed: str) -> list[str]:
    """The targets in wave order, as the rollout with ``seed`` plans them."""
    candidates = [Candidate(device_id=d, tags=(tag,), hardware="rpi4") for d in devices.devices]
    return select_targets(candidates, Selector(tags=(tag,)), seed=seed)


def _non_rollback_seqs(devices: ProtocolFleet, device_id: str, rollout_id: str) -> list[int]:
    return [
        b.seq for b in devices.accepted(device_id) if b.rollout_id == rollout_id and not b.rollback
    ]


def test_three_wave_rollout_completes_wave_by_wave(
    make_fleet: MakeFleet,
    start_devices: StartDevices,
    wine_packages: dict[str, Path],
    unique_id: str,
) -> None:
    fleet = make_fleet(**FAST)
    tag = f"t-{unique_id}"
    with admin_client(fleet) as api:
        publish_models(api, wine_packages, fleet.engine)
        devices = start_devices(fleet, api, 20)
        created = api.post("/v1/rollouts", json=_request(tag))
        assert created.status_code == 201, created.text
        plan = created.json()
        assert plan["wave_sizes"] == [2, 8, 10]
        assert plan["targets"] == 20
        rollout_id = plan["id"]

        done = wait_status(api, rollout_id, {"completed"})
        assert done["counts"]["healthy"] == 20
        assert [w["counts"]["healthy"] for w in done["waves"]] == [2, 8, 10]
        assert [(g["wave"], g["passed"]) for g in done["gate_decisions"]] == [
            (0, True),
            (1, True),
            (2, True),
        ]
        for device_id in devices.devices:
            accepted = devices.accepted(device_id)
            assert [(b.target.version, b.rollback) for b in accepted] == [("1.1.0", False)]
            assert accepted[0].rollout_id == rollout_id
        assert not devices.rejected

        # Staged: no device of a wave got its desired state before the previous gate passed.
        lines = history(api, rollout_id)
        gate_passed_at = {
            line["wave"]: line["id"] for line in lines if line["kind"] == "gate_decision"
        }
        published = [line for line in lines if line["kind"] == "desired_published"]
        assert len(published) == 20
        for line in published:
            if line["wave"] > 0:
                assert line["id"] > gate_passed_at[line["wave"] - 1]
        device_id = published[0]["device_id"]
        own = history(api, rollout_id, device_id=device_id)
        assert {line["device_id"] for line in own} == {device_id}
        assert "desired_published" in {line["kind"] for line in own}


def test_failed_gate_pauses_and_assigns_no_further_wave(
    make_fleet: MakeFleet,
    start_devices: StartDevices,
    wine_packages: dict[str, Path],
    unique_id: str,
) -> None:
    fleet = make_fleet(**FAST)
    tag = f"t-{unique_id}"
    with admin_client(fleet) as api:
        publish_models(api, wine_packages, fleet.engine)
        devices = start_devices(fleet, api, 20)
        for device_id in devices.devices:
            devices.fail(device_id, "1.1.0")
        created = api.post("/v1/rollouts", json=_request(tag, failure_policy="pause"))
        assert created.status_code == 201, created.text
        rollout_id = created.json()["id"]

        paused = wait_status(api, rollout_id, {"paused"})
        assert "gate of wave 0 failed" in paused["status_reason"]
        assert paused["gate_decisions"][0]["passed"] is False
        assert "above the maximum failure ratio" in paused["gate_decisions"][0]["reasons"][0]
        first = set(_wave_order(devices, tag, rollout_id)[:2])
        got = {d for d in devices.devices if devices.accepted(d)}
        assert got == first
        assert paused["waves"][1]["started"] is False
        assert paused["waves"][1]["counts"]["pending"] == 8


def test_failed_gate_rolls_back_every_touched_device(
    make_fleet: MakeFleet,
    start_devices: StartDevices,
    wine_packages: dict[str, Path],
    unique_id: str,
) -> None:
    fleet = make_fleet(**FAST)
    tag = f"t-{unique_id}"
    seed = f"seed-{unique_id}"
    with admin_client(fleet) as api:
        publish_models(api, wine_packages, fleet.engine)
        devices = start_devices(fleet, api, 20)
        order = _wave_order(devices, tag, seed)
        culprit = order[5]  # in wave 1
        devices.fail(culprit, "1.1.0")
        created = api.post(
            "/v1/rollouts", json=_request(tag, failure_policy="rollback_all", seed=seed)
        )
        assert created.status_code == 201, created.text
        rollout_id = created.json()["id"]

        done = wait_status(api, rollout_id, {"rolled_back"})
        assert "gate of wave 1 failed" in done["status_reason"]
        assert done["counts"]["rolled_back"] == 10
        assert done["counts"]["pending"] == 10
        touched, untouched = order[:10], order[10:]
        for device_id in touched:
            bodies = devices.accepted(device_id)
            assert all(b.rollout_id == rollout_id for b in bodies)
            # one assignment, then one signed rollback to the version it ran before
            assert [(b.target.version, b.rollback) for b in bodies] == [
                ("1.1.0", False),
                ("1.0.0", True),
            ], device_id
            assert devices.devices[device_id].version == "1.0.0"
        for device_id in untouched:
            assert devices.accepted(device_id) == []
        kinds = [line["kind"] for line in history(api, rollout_id, device_id=culprit)]
        assert "device_failed" in kinds
        assert "device_rolled_back" in kinds
