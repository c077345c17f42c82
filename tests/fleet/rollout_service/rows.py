"""Rows the rollout-service tests put straight into the store: devices and rollouts."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Engine
from sqlmodel import Session

from edgefleet.fleet.rollout_service import store
from edgefleet.fleet.rollouts.model import ModelTarget, RolloutSpec, Selector, Wave
from edgefleet.fleet.store.tables import Device


def register_devices(engine: Engine, device_ids: Iterable[str], seen_at: datetime) -> None:
    """Register online devices running wine 1.0.0, last heard from at ``seen_at``."""
    with Session(engine) as session:
        for device_id in device_ids:
            session.add(
                Device(
                    device_id=device_id,
                    online=True,
                    first_seen=seen_at,
                    last_seen=seen_at,
                    model_name="wine",
                    model_version="1.0.0",
                    last_state_seq=1,
                )
            )
        session.commit()


def create_one_wave_rollout(
    engine: Engine,
    rollout_id: str,
    devices: list[str],
    at: datetime,
    *,
    created_by: str = "test",
) -> None:
    """Store a rollout of wine 1.1.0 to ``devices`` in a single wave."""
    spec = RolloutSpec(
        model=ModelTarget(name="wine", version="1.1.0"),
        selector=Selector(device_ids=tuple(devices)),
        waves=(Wave(fraction=1.0),),
    )
    store.create(engine, rollout_id, spec, created_by=created_by, now=at)
