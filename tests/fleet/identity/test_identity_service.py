"""The identity service on SQLite and PostgreSQL: a token enrolls one device, even racing."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import Engine
from sqlmodel import Session, select

from edgefleet.fleet.errors import FleetError
from edgefleet.fleet.identity.service import IdentityService, device_recorder
from edgefleet.fleet.store.identity_tables import DeviceIdentityRow
from edgefleet.shared.identity import EnrollRequest
from tests.support.identity import csr_pem, p256_key


def test_two_devices_racing_with_one_token_enroll_one(
    engine: Engine, identity_service: IdentityService
) -> None:
    operator = device_recorder("ops", request_id=None, source=None)
    with Session(engine) as session:
        token = identity_service.create_token(
            session, operator, created_by="ops", ttl=timedelta(hours=1)
        )
    identity_service.ca()  # opened before the race, so both threads only sign and write
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def enroll(device: str) -> None:
        request = EnrollRequest(token=token.token, csr_pem=csr_pem(p256_key(), device))
        barrier.wait()
        try:
            with Session(engine) as session:
                identity_service.enroll(session, request, request_id=None, source=None)
            outcomes.append("enrolled")
        except FleetError as e:
            outcomes.append(e.code)

    threads = [threading.Thread(target=enroll, args=(f"cam-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["enrolled"] + ["enrollment_refused"] * 3
    with Session(engine) as session:
        rows = session.exec(select(DeviceIdentityRow)).all()
    assert [r.state for r in rows] == ["active"]
