"""A running fleet with a rollout whose stored state does not parse, beside a good one:
the list shows both, the detail answers 409 ``rollout_unreadable``, and abort frees its
devices for a new rollout, all over real HTTP (SQLite and PostgreSQL)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select, update

from edgefleet.fleet.store.rollout_tables import Rollout
from tests.fleet.publisher import wait_until
from tests.fleet.rollout_service.conftest import FAST, publish_models
from tests.fleet.rollout_service.rows import register_devices
from tests.support.fleet_fixtures import MakeFleet, admin_client

_ROLLOUT: Any = Rollout.__table__  # type: ignore[attr-defined]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _request(device_ids: list[str]) -> dict[str, Any]:
    return {
        "model": "wine",
        "version": "1.1.0",
        "selector": {"device_ids": device_ids},
        "waves": [{"fraction": 1.0}],
        "gate": {"soak_s": 600, "timeout_s": 30},  # long: both stay active
    }


def test_an_unreadable_rollout_is_listed_refused_and_aborted_over_http(
    make_fleet: MakeFleet, wine_packages: dict[str, Path], unique_id: str
) -> None:
    fleet = make_fleet(**FAST)
    good_ids = [f"g-{unique_id}-{i}" for i in range(2)]
    bad_ids = [f"b-{unique_id}-{i}" for i in range(2)]
    register_devices(
        fleet.engine, good_ids + bad_ids, T0
    )  # registered devices; none needs to answer
    with admin_client(fleet) as api:
        publish_models(api, wine_packages, fleet.engine)
        created = api.post("/v1/rollouts", json=_request(bad_ids))
        assert created.status_code == 201, created.text
        bad = created.json()["id"]
        created = api.post("/v1/rollouts", json=_request(good_ids))
        assert created.status_code == 201, created.text
        good = created.json()["id"]
        with fleet.engine.begin() as conn:  # JSON that names its targets but is no state
            raw = conn.execute(select(_ROLLOUT.c.state).where(_ROLLOUT.c.id == bad)).scalar()
            conn.execute(
                update(_ROLLOUT)
                .where(_ROLLOUT.c.id == bad)
                .values(
                    state={"garbage": True, "targets": raw["targets"]},
                    version=_ROLLOUT.c.version + 1,
                )
            )

        listed = api.get("/v1/rollouts")
        assert listed.status_code == 200, listed.text
        items = {item["id"]: item for item in listed.json()["items"]}
        assert set(items) == {bad, good}
        assert items[good]["targets"] == 2
        assert items[bad]["created_by"] == "admin"
        assert items[bad]["status_reason"].startswith("stored state is unreadable: ValidationError")

        for path in (f"/v1/rollouts/{bad}", f"/v1/rollouts/{bad}/devices"):
            refused = api.get(path)
            assert refused.status_code == 409, refused.text
            assert refused.json()["error"]["code"] == "rollout_unreadable"
            assert f"/v1/rollouts/{bad}/abort" in refused.json()["error"]["message"]
        resumed = api.post(f"/v1/rollouts/{bad}/resume")
        assert resumed.status_code == 409
        assert resumed.json()["error"]["code"] == "rollout_unreadable"
        # Its history needs no state; the orchestrator pauses it once meanwhile.
        wait_until(lambda: "paused" in _kinds(api, bad), what="the orchestrator's pause")
        time.sleep(0.5)  # ticks every 0.1 s: it must not pause it again
        kinds = _kinds(api, bad)
        assert kinds[0] == "created"
        assert kinds[-2:] == ["decide_failed", "paused"]
        assert kinds.count("paused") == 1
        held = api.post("/v1/rollouts", json=_request(bad_ids))
        assert held.status_code == 409
        assert held.json()["error"]["code"] == "rollout_overlap"

        aborted = api.post(f"/v1/rollouts/{bad}/abort")
        assert aborted.status_code == 200, aborted.text
        assert aborted.json()["status"] == "aborted"
        assert "stored state is unreadable" in aborted.json()["status_reason"]
        # Seen once under heavy load on SQLite: the lines showed a moment after the answer.
        wait_until(
            lambda: _kinds(api, bad)[-2:] == ["command", "aborted"], what="the abort's history"
        )
        statuses = {i["id"]: i["status"] for i in api.get("/v1/rollouts").json()["items"]}
        assert statuses[bad] == "aborted"

        again = api.post("/v1/rollouts", json=_request(bad_ids))
        assert again.status_code == 201, again.text
        assert again.json()["targets"] == 2
        assert api.get(f"/v1/rollouts/{good}").status_code == 200
        done = api.post(f"/v1/rollouts/{good}/abort")  # a readable one: still its detail
        assert done.status_code == 200, done.text
        assert {"spec", "waves", "timeline"} <= set(done.json())


def _kinds(api: httpx.Client, rollout_id: str) -> list[str]:
    page = api.get(f"/v1/rollouts/{rollout_id}/history")
    assert page.status_code == 200, page.text
    return [line["kind"] for line in page.json()["items"]]
