"""Deployment history per device, from the events devices publish."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from edgefleet.fleet import deployments
from edgefleet.fleet.service import FleetService
from edgefleet.fleet.store.tables import EventRow
from edgefleet.shared.messages import EventKind, EventMessage, ModelRef
from edgefleet.shared.topics import Channel
from tests.fleet.factories import T0
from tests.fleet.publisher import device_message, publish, wait_until
from tests.support.fleet_fixtures import upload
from tests.support.mosquitto import MosquittoBroker


def _event(device_id: str, seq: int, kind: str, desired_seq: int | None, **kw: Any) -> EventRow:
    return EventRow(
        device_id=device_id,
        seq=seq,
        ts=T0 + timedelta(seconds=seq),
        received_at=T0 + timedelta(seconds=seq),
        kind=kind,
        desired_seq=desired_seq,
        **kw,
    )


def test_events_group_by_desired_seq_with_phase_outcome_and_reasons() -> None:
    events = [
        _event("d", 1, "downloading", 1, model_name="wine", model_version="1.0.0"),
        _event("d", 2, "committed", 1, model_name="wine", model_version="1.0.0"),
        _event("d", 3, "downloading", 2, rollout_id="r-2"),
        _event("d", 4, "failed", 2, reason="golden samples differ"),
        _event("d", 5, "rolled_back", 2, reason="restored 1.0.0"),
        _event("d", 6, "rejected", None, reason="bad signature"),
        _event("d", 7, "downloading", 3),
    ]
    grouped = deployments.group(list(reversed(events)), None)
    summary = [(d.desired_seq, d.outcome, d.phase) for d in grouped]
    assert summary == [
        (3, "in_progress", "downloading"),
        (None, "rejected", "rejected"),
        (2, "rolled_back", "rolled_back"),
        (1, "committed", "committed"),
    ]
    rolled_back = grouped[2]
    assert rolled_back.reasons == ["golden samples differ", "restored 1.0.0"]
    assert rolled_back.rollout_id == "r-2"
    assert rolled_back.started_at == T0 + timedelta(seconds=3)
    assert rolled_back.finished_at == T0 + timedelta(seconds=5)
    assert grouped[3].model_version == "1.0.0"
    assert grouped[0].finished_at is None


def test_deployments_from_events_a_device_publishes(
    fleet: FleetService,
    api: httpx.Client,
    mosquitto: MosquittoBroker,
    wine_packages: dict[str, Path],
    unique_id: str,
) -> None:
    device_id = f"dev-{unique_id}"
    for version in ("1.0.0", "1.1.0"):
        assert upload(api, wine_packages[version]).status_code == 201
        assert api.post(f"/v1/models/wine/{version}/publish").status_code == 200
    url = f"/v1/devices/{device_id}"
    first = api.put(url + "/desired", json={"model": "wine", "version": "1.0.0"}).json()
    second = api.put(
        url + "/desired", json={"model": "wine", "version": "1.1.0", "rollout_id": "r-7"}
    ).json()
    s1, s2 = first["signed"]["seq"], second["signed"]["seq"]
    wine = {v: ModelRef(name="wine", version=v) for v in ("1.0.0", "1.1.0")}
    steps = [
        (EventKind.DOWNLOADING, s1, wine["1.0.0"], None, None),
        (EventKind.ACTIVATED, s1, wine["1.0.0"], None, None),
        (EventKind.COMMITTED, s1, wine["1.0.0"], None, None),
        (EventKind.DOWNLOADING, s2, wine["1.1.0"], "r-7", None),
        (EventKind.FAILED, s2, wine["1.1.0"], "r-7", "probation: error rate 0.2 > 0.01"),
        (EventKind.ROLLED_BACK, s2, wine["1.0.0"], "r-7", "back to 1.0.0"),
    ]
    publish(
        mosquitto.port,
        [
            device_message(
                Channel.EVENTS,
                EventMessage(
                    device_id=device_id,
                    seq=100 + i,
                    ts=T0 + timedelta(seconds=i),
                    kind=kind,
                    desired_seq=desired_seq,
                    model=model,
                    rollout_id=rollout_id,
                    reason=reason,
                ),
            )
            for i, (kind, desired_seq, model, rollout_id, reason) in enumerate(steps)
        ],
    )

    def history() -> Any:
        return api.get(url + "/deployments").json()

    wait_until(
        lambda: len(history()["history"]) == 2 and history()["current"]["phase"] == "rolled_back",
        what="the device's events to be ingested",
    )
    body = history()
    current = body["current"]
    assert body["desired"]["seq"] == s2
    assert current["desired_seq"] == s2
    assert current["outcome"] == "rolled_back"
    assert current["rollout_id"] == "r-7"
    assert current["reasons"] == ["probation: error rate 0.2 > 0.01", "back to 1.0.0"]
    earlier = body["history"][1]
    assert (earlier["desired_seq"], earlier["outcome"]) == (s1, "committed")
    assert [s["kind"] for s in earlier["steps"]] == ["downloading", "activated", "committed"]

    # A new desired state the device has not acted on yet is pending.
    third = api.put(url + "/desired", json={"model": "wine", "version": "1.1.0"}).json()
    pending = api.get(url + "/deployments").json()["current"]
    assert (pending["desired_seq"], pending["outcome"]) == (third["signed"]["seq"], "pending")


def test_deployments_of_an_unknown_device_are_404(api: httpx.Client, unique_id: str) -> None:
    response = api.get(f"/v1/devices/nobody-{unique_id}/deployments")
    assert response.status_code == 404
