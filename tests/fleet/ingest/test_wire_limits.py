"""Oversized fields of issue 13 over a real Mosquitto (SQLite and PostgreSQL): a state
with a 1 MB hardware string or 20,000 tags is dead-lettered with the reason, registers no
device, and REST does not serve it."""

from __future__ import annotations

import json

import httpx
import pytest
from sqlalchemy import func, select
from sqlmodel import Session

from edgefleet.fleet.service import FleetService
from edgefleet.fleet.store import DeadLetter, Device
from edgefleet.shared.messages import encode, utcnow
from edgefleet.shared.topics import Channel, device_topic
from tests.fleet.factories import state
from tests.fleet.publisher import publish, wait_until
from tests.support.mosquitto import MosquittoBroker


def forged_state(device_id: str, **fields: object) -> bytes:
    body = json.loads(encode(state(device_id, 1, ts=utcnow())))
    body.update(fields)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("hardware", "x" * 1_000_000, "hardware: String should have at most 100 characters"),
        ("tags", [f"t{i}" for i in range(20_000)], "tags: List should have at most 64 items"),
        ("tags", ["y" * 101], "tags.0: String should have at most 100 characters"),
        ("runtimes", ["onnx"] * 17, "runtimes: List should have at most 16 items"),
        ("agent_version", "v" * 201, "agent_version: String should have at most 200"),
    ],
)
def test_an_oversized_state_field_is_dead_lettered_and_not_served(
    fleet: FleetService,
    api: httpx.Client,
    mosquitto: MosquittoBroker,
    unique_id: str,
    field: str,
    value: object,
    reason: str,
) -> None:
    device_id = f"dev-{unique_id}"
    payload = forged_state(device_id, **{field: value})
    publish(mosquitto.port, [(device_topic(device_id, Channel.STATE), payload, True)])
    with Session(fleet.engine) as s:
        wait_until(lambda: s.scalar(select(func.count()).select_from(DeadLetter)) == 1, what="dl")
        error = s.scalars(select(DeadLetter)).one().error
        devices = s.scalar(select(func.count()).select_from(Device))
    assert error.startswith("state: ")
    assert reason in error
    assert devices == 0
    assert api.get(f"/v1/devices/{device_id}").status_code == 404
    assert api.get("/v1/devices").json()["total"] == 0
