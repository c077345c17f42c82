"""A running fleet: a rollout that cannot be decided is paused, shown so in the API and
announced on the alerts topic of a real Mosquitto, while the rollout beside it completes."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select, update

from edgefleet.fleet.rollout_service.orchestrator import ALERT_KIND
from edgefleet.fleet.store.rollout_tables import Rollout
from edgefleet.shared.messages import AlertMessage
from edgefleet.shared.topics import ALERTS_TOPIC
from tests.fleet.publisher import wait_until
from tests.fleet.rollout_service.conftest import FAST, StartDevices, publish_models
from tests.support.fleet_fixtures import MakeFleet, admin_client
from tests.support.mosquitto import MosquittoBroker
from tests.support.rollouts import history, wait_status

_ROLLOUT: Any = Rollout.__table__  # type: ignore[attr-defined]


def _request(device_ids: list[str], soak_s: float) -> dict[str, Any]:
    return {
        "model": "wine",
        "version": "1.1.0",
        "selector": {"device_ids": device_ids},
        "waves": [{"fraction": 1.0}],
        "gate": {"soak_s": soak_s, "timeout_s": 30},
    }


def test_a_rollout_paused_by_an_error_alerts_and_the_other_completes(
    make_fleet: MakeFleet,
    start_devices: StartDevices,
    wine_packages: dict[str, Path],
    mosquitto: MosquittoBroker,
) -> None:
    alerts: list[AlertMessage] = []
    subscribed = threading.Event()
    subscriber = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    subscriber.on_subscribe = lambda *_a: subscribed.set()
    subscriber.on_message = lambda _c, _u, m: alerts.append(
        AlertMessage.model_validate_json(m.payload)
    )
    subscriber.connect("127.0.0.1", mosquitto.port)
    subscriber.subscribe(ALERTS_TOPIC, qos=1)
    subscriber.loop_start()
    try:
        assert subscribed.wait(5)
        fleet = make_fleet(**FAST)
        with admin_client(fleet) as api:
            publish_models(api, wine_packages, fleet.engine)
            ids = sorted(start_devices(fleet, api, 4).devices)
            # A long soak: the bad one must still be active when its state is broken.
            created = api.post("/v1/rollouts", json=_request(ids[:2], soak_s=600))
            assert created.status_code == 201, created.text
            bad = created.json()["id"]
            with fleet.engine.begin() as conn:  # a target with no device record
                raw = dict(
                    conn.execute(select(_ROLLOUT.c.state).where(_ROLLOUT.c.id == bad)).scalar()
                )
                raw["targets"] = ["ghost", *raw["targets"][1:]]
                conn.execute(
                    update(_ROLLOUT)
                    .where(_ROLLOUT.c.id == bad)
                    .values(state=raw, version=_ROLLOUT.c.version + 1)
                )
            created = api.post("/v1/rollouts", json=_request(ids[2:], soak_s=0))
            assert created.status_code == 201, created.text
            good = created.json()["id"]

            assert wait_status(api, good, {"completed"})["counts"]["healthy"] == 2
            paused = wait_status(api, bad, {"paused"})
            assert paused["status_reason"] == "paused: deciding it failed with KeyError: 'ghost'"
            failed = history(api, bad, kind="decide_failed")
            assert [line["detail"]["error"] for line in failed] == ["KeyError"]
            wait_until(lambda: bool(alerts), timeout_s=10, what="the rollout alert")
            assert [(a.kind, a.severity, a.evidence["rollout_id"]) for a in alerts] == [
                (ALERT_KIND, "critical", bad)
            ]
    finally:
        subscriber.loop_stop()
        subscriber.disconnect()
