"""require_device_identity: only active device identities are ingested (real Mosquitto,
SQLite and PostgreSQL); the forgeries of issue 13 from unknown, pending and revoked ids."""

from __future__ import annotations

import time

from sqlalchemy import func, select, update
from sqlmodel import Session

from edgefleet.fleet.service import FleetService
from edgefleet.fleet.store import DeadLetter, Device, TelemetryRow
from edgefleet.fleet.store.identity_tables import DeviceIdentityRow
from edgefleet.fleet.store.tables import DesiredStateRow, DriftWindowRow, EventRow
from edgefleet.shared.limits import MAX_INT64
from edgefleet.shared.messages import DriftMessage, EventKind, EventMessage, utcnow
from edgefleet.shared.topics import Channel
from tests.fleet.factories import event, state, telemetry
from tests.fleet.publisher import device_message, publish, wait_until
from tests.support.fleet_fixtures import MakeFleet
from tests.support.mosquitto import MosquittoBroker

TTL_S = 0.3


def identities(service: FleetService, **states: str) -> None:
    with Session(service.engine) as s:
        for device_id, st in states.items():
            s.add(DeviceIdentityRow(device_id=device_id, state=st))
        s.commit()


def count(service: FleetService, table: type, device_id: str | None = None) -> int:
    query = select(func.count()).select_from(table)
    if device_id is not None:
        query = query.where(table.device_id == device_id)  # type: ignore[attr-defined]
    with Session(service.engine) as s:
        return int(s.scalar(query) or 0)


def dead_errors(service: FleetService) -> list[str]:
    with Session(service.engine) as s:
        return [d.error for d in s.scalars(select(DeadLetter).order_by(DeadLetter.id))]  # type: ignore[arg-type]


def forgeries(device_id: str, seq: int) -> list[tuple[str, bytes, bool]]:
    """State (registering a device), telemetry, events and a drift window under one id."""
    now = utcnow()
    drift = DriftMessage(
        device_id=device_id, seq=seq + 3, window_start=now, window_end=now, count=9
    )
    return [
        device_message(Channel.STATE, state(device_id, seq, ts=now), retain=False),
        device_message(Channel.TELEMETRY, telemetry(device_id, seq + 1, ts=now)),
        device_message(Channel.EVENTS, event(device_id, seq + 2)),
        device_message(Channel.DRIFT, drift),
    ]


def test_only_active_identities_are_ingested_the_rest_is_dead_lettered_with_the_reason(
    make_service: MakeFleet, mosquitto: MosquittoBroker, unique_id: str
) -> None:
    service = make_service(require_device_identity=True, device_identity_cache_s=TTL_S)
    active, pending, revoked = (f"{k}-{unique_id}" for k in ("active", "pending", "revoked"))
    unknown = f"unknown-{unique_id}"
    identities(service, **{active: "active", pending: "pending", revoked: "revoked"})
    time.sleep(TTL_S * 2)  # past the cache the ingester read at its start
    publish(
        mosquitto.port,
        forgeries(unknown, 10)
        + forgeries(pending, 10)
        + forgeries(revoked, 10)
        + forgeries(active, 10),
    )
    wait_until(lambda: count(service, DeadLetter) == 12, what="12 dead letters")
    wait_until(lambda: count(service, TelemetryRow, active) == 1, what="active's telemetry")
    errors = dead_errors(service)
    assert sum(f"device {unknown} has no identity" in e for e in errors) == 4
    assert sum(f"device {pending}'s identity is pending, not active" in e for e in errors) == 4
    assert sum(f"device {revoked}'s identity is revoked, not active" in e for e in errors) == 4
    assert {e.split(":")[0] for e in errors} == {"state", "telemetry", "events", "drift"}
    for refused in (unknown, pending, revoked):
        for table in (Device, TelemetryRow, EventRow, DriftWindowRow):
            assert count(service, table, refused) == 0, (refused, table)
    for table in (Device, EventRow, DriftWindowRow):
        assert count(service, table, active) == 1


def test_a_device_revoked_has_its_next_messages_refused_within_the_cache_time(
    make_service: MakeFleet, mosquitto: MosquittoBroker, unique_id: str
) -> None:
    service = make_service(require_device_identity=True, device_identity_cache_s=TTL_S)
    device_id = f"dev-{unique_id}"
    identities(service, **{device_id: "active"})
    time.sleep(TTL_S * 2)
    publish(mosquitto.port, [device_message(Channel.TELEMETRY, telemetry(device_id, 1))])
    wait_until(lambda: count(service, TelemetryRow, device_id) == 1, what="telemetry")
    with Session(service.engine) as s:
        s.execute(
            update(DeviceIdentityRow)
            .where(DeviceIdentityRow.device_id == device_id)  # type: ignore[arg-type]
            .values(state="revoked", revoked_at=utcnow())
        )
        s.commit()
    time.sleep(TTL_S * 1.5)
    publish(mosquitto.port, [device_message(Channel.TELEMETRY, telemetry(device_id, 2))])
    wait_until(lambda: count(service, DeadLetter) == 1, what="the revoked one dead-lettered")
    assert "identity is revoked" in dead_errors(service)[0]
    assert count(service, TelemetryRow, device_id) == 1


def test_a_device_enrolled_at_another_replica_is_ingested_before_this_ones_copy_expires(
    make_service: MakeFleet, mosquitto: MosquittoBroker, unique_id: str
) -> None:
    # A copy that stays fresh for the whole test: only a reread can let the device in.
    service = make_service(require_device_identity=True, device_identity_cache_s=300.0)
    unknown, enrolled = f"unknown-{unique_id}", f"enrolled-{unique_id}"
    publish(mosquitto.port, forgeries(unknown, 10))
    wait_until(lambda: count(service, DeadLetter) == 4, what="the ingester to hold a copy")
    # Enrolled through another replica: nothing tells this one's cache.
    identities(service, **{enrolled: "active"})
    publish(mosquitto.port, forgeries(enrolled, 10) + forgeries(unknown, 20))
    wait_until(lambda: count(service, DeadLetter) == 8, what="the unknown device refused again")
    wait_until(lambda: count(service, DriftWindowRow, enrolled) == 1, what="enrolled's drift")
    for table in (Device, TelemetryRow, EventRow):
        assert count(service, table, enrolled) == 1
    assert not [e for e in dead_errors(service) if enrolled in e]


def test_off_by_default_any_device_id_is_ingested(
    service: FleetService, mosquitto: MosquittoBroker, unique_id: str
) -> None:
    device_id = f"dev-{unique_id}"
    publish(mosquitto.port, forgeries(device_id, 1))
    wait_until(lambda: count(service, DriftWindowRow, device_id) == 1, what="drift")
    assert count(service, TelemetryRow, device_id) == 1
    assert count(service, DeadLetter) == 0


def desired(service: FleetService, device_id: str, seq: int) -> None:
    with Session(service.engine) as s:
        s.add(DesiredStateRow(device_id=device_id, seq=seq, updated_at=utcnow()))
        s.commit()


def deployment_event(device_id: str, seq: int, kind: EventKind, desired_seq: int) -> EventMessage:
    return EventMessage(device_id=device_id, seq=seq, kind=kind, desired_seq=desired_seq)


def test_events_for_a_desired_seq_never_sent_are_dead_lettered_and_commit_nothing(
    make_service: MakeFleet, mosquitto: MosquittoBroker, unique_id: str
) -> None:
    service = make_service(require_device_identity=True, device_identity_cache_s=TTL_S)
    device_id, never = f"dev-{unique_id}", f"never-{unique_id}"
    identities(service, **{device_id: "active", never: "active"})
    desired(service, device_id, 3)  # the director sent seqs 1..3 to device_id, none to never
    time.sleep(TTL_S * 2)
    messages = [
        deployment_event(device_id, 10, EventKind.REJECTED, 3),  # the real device's outcome
        deployment_event(device_id, 11, EventKind.COMMITTED, 4),  # forged: seq 4 never sent
        deployment_event(device_id, 12, EventKind.COMMITTED, MAX_INT64),
        deployment_event(never, 1, EventKind.COMMITTED, 1),  # no desired state at all
    ]
    publish(mosquitto.port, [device_message(Channel.EVENTS, m) for m in messages])
    wait_until(lambda: count(service, DeadLetter) == 3, what="3 dead letters")
    wait_until(lambda: count(service, EventRow, device_id) == 1, what="the real event")
    errors = dead_errors(service)
    for refused in (
        f"desired seq 4 was never sent to device {device_id} (desired seqs sent: up to 3)",
        f"desired seq {MAX_INT64} was never sent to device {device_id}",
        f"desired seq 1 was never sent to device {never} (desired seqs sent: none)",
    ):
        assert sum(refused in e for e in errors) == 1, refused
    with Session(service.engine) as s:
        kinds = list(s.scalars(select(EventRow.kind)))  # type: ignore[call-overload]
    assert kinds == ["rejected"]
    assert count(service, EventRow, never) == 0
