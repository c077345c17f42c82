"""The broker files keeper on SQLite and PostgreSQL: an enrollment and a revocation reach
the broker's password file and CRL, and the broker is told to reload."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from cryptography import x509
from sqlalchemy import Engine
from sqlmodel import Session

from edgefleet.fleet.identity.broker_config import BrokerMode, Listener
from edgefleet.fleet.identity.broker_files import write_broker_setup
from edgefleet.fleet.identity.broker_keeper import BrokerFilesKeeper
from edgefleet.fleet.identity.broker_passwords import check_password
from edgefleet.fleet.identity.service import IdentityService, device_recorder
from edgefleet.shared.identity import EnrollRequest
from edgefleet.shared.messages import utcnow
from tests.fleet.publisher import wait_until
from tests.support.identity import csr_pem, p256_key


def test_enrollment_and_revocation_reach_the_broker_files_and_reload_it(
    engine: Engine, tmp_path: Path
) -> None:
    woken: list[str] = []
    keeper: BrokerFilesKeeper | None = None

    def changed() -> None:
        woken.append("change")
        if keeper is not None:
            keeper.wake()

    identity = IdentityService(
        engine,
        tmp_path / "ca",
        passphrase=None,
        allow_unencrypted=True,
        cert_lifetime=timedelta(days=90),
        broker_passwords=True,
        on_change=changed,
    )
    directory = tmp_path / "broker"
    with Session(engine) as session:
        write_broker_setup(
            directory,
            identity.ca(),
            mode=BrokerMode.PASSWORD,
            device=Listener(8883),
            fleet=Listener(8884),
            server_names=("localhost",),
            crl_pem=identity.crl_pem(session),
            device_passwords=[],
            now=utcnow(),
        )
    marker = tmp_path / "reloads"
    keeper = BrokerFilesKeeper(
        engine,
        identity,
        directory,
        passwords=True,
        reload_command=f"sh -c 'echo x >> {marker}'",
        interval_s=3600.0,
    )
    keeper.start()
    try:
        wait_until(lambda: keeper.syncs == 1, what="the first sync (the CRL written)")
        operator = device_recorder("ops", request_id=None, source=None)
        with Session(engine) as session:
            token = identity.create_token(
                session, operator, created_by="ops", ttl=timedelta(hours=1)
            )
            issued = identity.enroll(
                session,
                EnrollRequest(token=token.token, csr_pem=csr_pem(p256_key(), "cam-1")),
                request_id=None,
                source=None,
            )
        assert issued.broker_password is not None
        wait_until(lambda: keeper.syncs == 2, what="the password file rewritten")
        user, hashed = (directory / "passwd.devices").read_text().strip().split(":", 1)
        assert user == "cam-1"
        assert check_password(issued.broker_password, hashed)
        with Session(engine) as session:
            identity.revoke(session, "cam-1", operator, by="ops", reason="stolen")
        wait_until(lambda: keeper.syncs == 3, what="the revocation written")
        assert (directory / "passwd.devices").read_text() == ""
        crl = x509.load_pem_x509_crl((directory / "crl.pem").read_bytes())
        assert [format(r.serial_number, "x") for r in crl] == [issued.serial]
        assert marker.read_text().count("x") == 3
        assert woken == ["change", "change"]
        assert not keeper.sync()  # nothing left to do
    finally:
        keeper.stop()


def test_without_password_mode_enrollment_makes_no_password(
    identity_service: IdentityService, engine: Engine
) -> None:
    operator = device_recorder("ops", request_id=None, source=None)
    with Session(engine) as session:
        token = identity_service.create_token(
            session, operator, created_by="ops", ttl=timedelta(hours=1)
        )
        issued = identity_service.enroll(
            session,
            EnrollRequest(token=token.token, csr_pem=csr_pem(p256_key(), "cam-2")),
            request_id=None,
            source=None,
        )
    assert issued.broker_password is None
