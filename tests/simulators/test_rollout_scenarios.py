"""Staged rollouts over simulated fleets of REAL agents: the scenarios of the staged-rollouts
issue, on a real Mosquitto, a real fleet service (lab keys, SQLite) and real signed updates.

Each device runs `edgefleet.agent.daemon.Agent` in a simulator worker process; faults go in
through the agent's own seams (`edgefleet.simulators.faults`), so the golden check, the rollback
and the convergence from the retained desired state are the agent's own.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from edgefleet.simulators.faults import Fault, FaultKind
from edgefleet.simulators.fleet import DeviceProfile
from tests.simulators.conftest import FAST, StartSim, devices, publish, wait_for, wait_status
from tests.support.fleet_fixtures import MakeFleet, admin_client
from tests.support.rollouts import history

pytestmark = pytest.mark.slow

FOUR_WAVES = [{"fraction": 0.05}, {"fraction": 0.25}, {"fraction": 0.5}, {"fraction": 1.0}]


def _request(tag: str, **overrides: Any) -> dict[str, Any]:
    return {
        "model": "wine",
        "version": "1.1.0",
        "selector": {"tags": [tag]},
        "waves": FOUR_WAVES,
        "gate": {"soak_s": 0, "timeout_s": 60},
    } | overrides


def _versions_in_registry(api: Any, prefix: str) -> Counter[str | None]:
    return Counter(d["model_version"] for d in devices(api) if d["device_id"].startswith(prefix))


def test_healthy_four_wave_rollout_over_200_real_agents_reaches_every_device(
    make_fleet: MakeFleet, start_sim: StartSim, sim_packages: dict[str, Path], unique_id: str
) -> None:
    fleet = make_fleet(**FAST)
    tag = f"t-{unique_id}"
    with admin_client(fleet) as api:
        publish(api, sim_packages, fleet.engine)
        sim = start_sim(fleet, api, [DeviceProfile(hardware="rpi4", tags=(tag,), count=200)])
        created = api.post("/v1/rollouts", json=_request(tag))
        assert created.status_code == 201, created.text
        assert created.json()["wave_sizes"] == [10, 40, 50, 100]
        rollout_id = created.json()["id"]

        done = wait_status(api, rollout_id, {"completed"}, timeout_s=150)
        assert done["counts"]["healthy"] == 200
        assert [w["counts"]["healthy"] for w in done["waves"]] == [10, 40, 50, 100]
        assert [(g["wave"], g["passed"]) for g in done["gate_decisions"]] == [
            (0, True),
            (1, True),
            (2, True),
            (3, True),
        ]
        assert Counter(sim.active_versions().values()) == {"1.1.0": 200}
        # The fresh birth after commit updates the registry without any reconnect.
        wait_for(
            lambda: _versions_in_registry(api, f"s{unique_id}") == {"1.1.0": 200},
            timeout_s=20,
            what="the registry to show 1.1.0 on every device",
        )


def test_model_broken_on_one_hardware_is_stopped_early_and_rolled_back(
    make_fleet: MakeFleet, start_sim: StartSim, sim_packages: dict[str, Path], unique_id: str
) -> None:
    fleet = make_fleet(**FAST)
    tag = f"t-{unique_id}"
    broken = Fault(FaultKind.GOLDEN_FAIL, versions=("1.1.0",))
    with admin_client(fleet) as api:
        publish(api, sim_packages, fleet.engine)
        sim = start_sim(
            fleet,
            api,
            [
                DeviceProfile(hardware="rpi3", tags=(tag,), count=12, faults=(broken,)),
                DeviceProfile(hardware="rpi4", tags=(tag,), count=28),
            ],
        )
        waves = [{"count": 4}, {"fraction": 0.25}, {"fraction": 0.5}, {"fraction": 1.0}]
        created = api.post(
            "/v1/rollouts", json=_request(tag, waves=waves, failure_policy="rollback_all")
        )
        assert created.status_code == 201, created.text
        rollout_id = created.json()["id"]

        done = wait_status(api, rollout_id, {"rolled_back"}, timeout_s=90)
        failed_wave = next(g["wave"] for g in done["gate_decisions"] if not g["passed"])
        assert failed_wave <= 1, done["gate_decisions"]
        assert f"gate of wave {failed_wave} failed" in done["status_reason"]
        early_end = done["waves"][failed_wave]["end"]

        lines = history(api, rollout_id)
        published = [ln for ln in lines if ln["kind"] == "desired_published"]
        got_new = {ln["device_id"] for ln in published}
        assert {ln["wave"] for ln in published} <= set(range(failed_wave + 1))
        views = api.get(f"/v1/rollouts/{rollout_id}/devices").json()
        later = {v["device_id"] for v in views if v["wave"] > failed_wave}
        assert later, "the plan had later waves"
        assert not got_new & later, "no device of a later wave was ever assigned"
        assert all(v["assigned_at"] is None for v in views if v["wave"] > failed_wave)
        assert len(got_new) <= early_end
        # rpi3 devices in the early waves failed their golden samples and rolled back by
        # themselves; the policy rolled the healthy rpi4 ones back too.
        failures = [v for v in views if v["failure"]]
        assert failures
        assert any("rpi3" in d["hardware"] for d in devices(api) if d["device_id"] in got_new)
        wait_for(
            lambda: set(sim.active_versions().values()) == {"1.0.0"},
            timeout_s=30,
            what="every device to run 1.0.0 again",
        )


def test_devices_offline_during_their_wave_converge_when_they_return(
    make_fleet: MakeFleet, start_sim: StartSim, sim_packages: dict[str, Path], unique_id: str
) -> None:
    fleet = make_fleet(**FAST)
    tag = f"t-{unique_id}"
    with admin_client(fleet) as api:
        publish(api, sim_packages, fleet.engine)
        sim = start_sim(fleet, api, [DeviceProfile(hardware="rpi4", tags=(tag,), count=20)])
        away = [f"s{unique_id}-{i:04d}" for i in range(0, 20, 4)]
        sim.take_offline(away)
        wait_for(
            lambda: all(not d["online"] for d in devices(api) if d["device_id"] in away),
            timeout_s=20,
            what="the switched-off devices to show offline",
        )
        created = api.post("/v1/rollouts", json=_request(tag))
        assert created.status_code == 201, created.text
        rollout_id = created.json()["id"]

        def assigned_while_away() -> set[str]:
            views = api.get(f"/v1/rollouts/{rollout_id}/devices").json()
            return {v["device_id"] for v in views if v["device_id"] in away and v["assigned_at"]}

        # A wave starts while some of its devices are off: their desired state waits,
        # retained, and the wave's gate (every device healthy) holds the rollout.
        wait_for(lambda: bool(assigned_while_away()), timeout_s=30, what="an offline device's wave")
        time.sleep(2.0)
        detail = api.get(f"/v1/rollouts/{rollout_id}").json()
        assert detail["status"] == "running"
        waiting = assigned_while_away()
        assert {v for v in sim.active_versions() if v in waiting} == set(), "they are off"
        sim.bring_online(away)
        done = wait_status(api, rollout_id, {"completed"}, timeout_s=60)
        assert done["counts"]["healthy"] == 20
        versions = sim.active_versions()
        assert {versions[d] for d in away} == {"1.1.0"}


def test_fleet_restart_mid_rollout_finishes_without_skipped_or_repeated_waves(
    make_fleet: MakeFleet, start_sim: StartSim, sim_packages: dict[str, Path], unique_id: str
) -> None:
    first = make_fleet(**FAST)
    tag = f"t-{unique_id}"
    with admin_client(first) as api:
        publish(api, sim_packages, first.engine)
        sim = start_sim(first, api, [DeviceProfile(hardware="rpi4", tags=(tag,), count=40)])
        created = api.post("/v1/rollouts", json=_request(tag, gate={"soak_s": 2, "timeout_s": 60}))
        assert created.status_code == 201, created.text
        rollout_id = created.json()["id"]
        wait_for(
            lambda: api.get(f"/v1/rollouts/{rollout_id}").json()["current_wave"] >= 1,
            timeout_s=60,
            what="the rollout to reach wave 1",
        )
    first.stop()
    # A new replica on the same database, keys and repository (same port is not needed:
    # the devices reach the repository by the URL they were given, so keep the same one).
    second = make_fleet(**FAST, api_port=first.port)
    with admin_client(second) as api:
        done = wait_status(api, rollout_id, {"completed"}, timeout_s=120)
        assert done["counts"]["healthy"] == 40
        lines = history(api, rollout_id)
        gates = [(ln["wave"], ln["kind"]) for ln in lines if ln["kind"] == "gate_decision"]
        assert [w for w, _ in gates] == [0, 1, 2, 3], "every wave gated once, none skipped"
        published = Counter(ln["device_id"] for ln in lines if ln["kind"] == "desired_published")
        assert len(published) == 40
        assert set(published.values()) == {1}, "no device was assigned twice"
        assert Counter(sim.active_versions().values()) == {"1.1.0": 40}
