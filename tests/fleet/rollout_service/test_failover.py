"""The orchestrator survives its own death: restart, crash between save and publish,
and a second replica taking the lease over."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.fleet.director import Director
from edgefleet.fleet.errors import FleetError
from edgefleet.fleet.rollout_service.lease import current_holder
from edgefleet.fleet.rollout_service.orchestrator import LEASE_NAME, Orchestrator
from edgefleet.fleet.service import FleetService
from edgefleet.shared.signing.director import DesiredTarget, SignedDesiredState
from tests.fleet.publisher import wait_until
from tests.fleet.rollout_service.conftest import FAST, StartDevices, publish_models
from tests.fleet.rollout_service.devices import ProtocolFleet
from tests.support.fleet_fixtures import MakeFleet, admin_client
from tests.support.rollouts import history, wait_status

SOAKED_WAVES: list[dict[str, Any]] = [
    {"count": 2, "gate": {"soak_s": 1.0, "timeout_s": 30}},
    {"fraction": 0.5, "gate": {"soak_s": 1.0, "timeout_s": 30}},
    {"fraction": 1.0},
]


class CrashError(Exception):
    """The orchestrator's process dies here."""


class CrashingDirector:
    """The real director, except that the process dies at the ``crash_at``-th assignment
    (the ones before it in the same batch are stored and published)."""

    def __init__(self, director: Director, crash_at: int) -> None:
        self._director = director
        self._left = crash_at

    def assign_many(
        self, device_ids: Sequence[str], target: DesiredTarget, **kw: Any
    ) -> dict[str, SignedDesiredState | FleetError]:
        done: dict[str, SignedDesiredState | FleetError] = {}
        for device_id in device_ids:
            self._left -= 1
            if self._left == 0:
                raise CrashError(f"killed before assigning {device_id}")
            done.update(self._director.assign_many([device_id], target, **kw))
        return done

    def current_many(self, device_ids: Sequence[str]) -> dict[str, SignedDesiredState]:
        return self._director.current_many(device_ids)

    def republish_many(
        self, device_ids: Sequence[str]
    ) -> dict[str, SignedDesiredState | FleetError]:
        return self._director.republish_many(device_ids)


def _create(api: httpx.Client, tag: str, waves: list[dict[str, Any]]) -> str:
    created = api.post(
        "/v1/rollouts",
        json={
            "model": "wine",
            "version": "1.1.0",
            "selector": {"tags": [tag]},
            "waves": waves,
            "gate": {"soak_s": 0, "timeout_s": 30},
        },
    )
    assert created.status_code == 201, created.text
    rollout_id: str = created.json()["id"]
    return rollout_id


def _assert_one_assignment_each(devices: ProtocolFleet, rollout_id: str) -> None:
    for device_id in devices.devices:
        seqs = [
            b.seq
            for b in devices.accepted(device_id)
            if b.rollout_id == rollout_id and not b.rollback
        ]
        assert len(seqs) == 1, f"{device_id} got desired seqs {seqs}"


def test_restarted_fleet_continues_without_skipped_wave_or_repeated_assignment(
    make_fleet: MakeFleet,
    start_devices: StartDevices,
    wine_packages: dict[str, Path],
    unique_id: str,
) -> None:
    first = make_fleet(**FAST)
    with admin_client(first) as api:
        publish_models(api, wine_packages, first.engine)
        devices = start_devices(first, api, 20)
        rollout_id = _create(api, f"t-{unique_id}", SOAKED_WAVES)
        wait_until(
            lambda: api.get(f"/v1/rollouts/{rollout_id}").json()["current_wave"] == 1,
            what="wave 1 to start",
        )
    first.stop()
    second = make_fleet(**FAST)
    with admin_client(second) as api:
        done = wait_status(api, rollout_id, {"completed"})
        assert done["counts"]["healthy"] == 20
        assert [(g["wave"], g["passed"]) for g in done["gate_decisions"]] == [
            (0, True),
            (1, True),
            (2, True),
        ]
    _assert_one_assignment_each(devices, rollout_id)


def test_crash_between_save_and_publish_neither_skips_nor_repeats(
    make_fleet: MakeFleet,
    start_devices: StartDevices,
    wine_packages: dict[str, Path],
    unique_id: str,
) -> None:
    fleet = make_fleet(rollout_orchestrator=False)
    assert fleet.orchestrator is None
    assert fleet.updates is not None
    with admin_client(fleet) as api:
        publish_models(api, wine_packages, fleet.engine)
        devices = start_devices(fleet, api, 6)
        rollout_id = _create(api, f"t-{unique_id}", [{"count": 3}, {"fraction": 1.0}])
        doomed = Orchestrator(
            fleet.engine,
            CrashingDirector(fleet.director, crash_at=2),
            fleet.updates.registry,
            holder="doomed",
            tick_interval_s=0.1,
            lease_s=3.0,
        )
        with pytest.raises(CrashError):
            doomed.tick()
        stored = api.get(f"/v1/rollouts/{rollout_id}").json()
        assert stored["waves"][0]["counts"]["assigned"] == 3  # saved before acting
        # The one assignment published before the crash reaches its device (the broker
        # acknowledged it; delivery to the device follows), and no other does.
        wait_until(
            lambda: sum(1 for d in devices.devices if devices.accepted(d)) == 1,
            timeout_s=10,
            what="the assignment published before the crash to arrive",
        )

        heir = Orchestrator(
            fleet.engine,
            fleet.director,
            fleet.updates.registry,
            holder="heir",
            tick_interval_s=0.1,
            lease_s=3.0,
        )
        assert heir.tick() == 0  # the dead one's lease has not lapsed yet

        def advanced() -> bool:
            heir.tick()
            return bool(api.get(f"/v1/rollouts/{rollout_id}").json()["status"] == "completed")

        wait_until(advanced, timeout_s=20, what="the heir to complete the rollout")
        republished = [
            line
            for line in history(api, rollout_id, kind="desired_republished")
            if line["detail"]["by"] == "heir"
        ]
        assert len(republished) == 1  # the one the dead orchestrator did publish
    _assert_one_assignment_each(devices, rollout_id)


def test_second_replica_takes_over_when_the_lease_holder_dies(
    make_fleet: MakeFleet,
    start_devices: StartDevices,
    wine_packages: dict[str, Path],
    unique_id: str,
) -> None:
    replicas = [make_fleet(**FAST), make_fleet(**FAST)]
    with admin_client(replicas[0]) as api:
        publish_models(api, wine_packages, replicas[0].engine)
        devices = start_devices(replicas[0], api, 20)
        rollout_id = _create(api, f"t-{unique_id}", SOAKED_WAVES)
        wait_until(
            lambda: api.get(f"/v1/rollouts/{rollout_id}").json()["current_wave"] == 1,
            what="wave 1 to start",
        )
        holder = current_holder(replicas[0].engine, LEASE_NAME)
        driver = _replica_holding(replicas, holder)
        other = next(r for r in replicas if r is not driver)
        drivers = {
            line["detail"]["by"] for line in history(api, rollout_id, kind="desired_published")
        }
        assert drivers == {holder}

        assert driver.orchestrator is not None
        assert other.orchestrator is not None
        driver.orchestrator.stop(release=False)  # dies: stops renewing, keeps the lease
        died = time.monotonic()
        wait_until(
            lambda: current_holder(other.engine, LEASE_NAME) == other.orchestrator.holder,  # type: ignore[union-attr]
            timeout_s=10,
            what="the other replica to take the lease",
        )
        takeover_s = time.monotonic() - died
        assert takeover_s < FAST["rollout_lease_s"] + 2.0
        with admin_client(other) as other_api:
            done = wait_status(other_api, rollout_id, {"completed"})
        assert done["counts"]["healthy"] == 20
        by = {line["detail"]["by"] for line in history(api, rollout_id, kind="desired_published")}
        assert by == {holder, other.orchestrator.holder}
    _assert_one_assignment_each(devices, rollout_id)


def _replica_holding(replicas: list[FleetService], holder: str | None) -> FleetService:
    for replica in replicas:
        if replica.orchestrator is not None and replica.orchestrator.holder == holder:
            return replica
    raise AssertionError(f"no replica holds the orchestrator lease (holder {holder!r})")
