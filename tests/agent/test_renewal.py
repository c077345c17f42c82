"""The renewal timer: when a certificate is due, renewing it against a real fleet, and
retrying with backoff when the fleet cannot be reached."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from edgefleet.agent.config import IdentityConfig
from edgefleet.agent.credentials import DeviceCredentials
from edgefleet.agent.identity import Enrolled, enroll
from edgefleet.agent.renewal import Renewer, renewal_due
from edgefleet.fleet.service import FleetService
from tests.support.fleet_fixtures import MakeFleet

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("lifetime", "share", "due_after"),
    [
        (timedelta(days=90), 1 / 3, timedelta(days=60)),
        (timedelta(days=90), 0.5, timedelta(days=45)),
        (timedelta(hours=1), 0.25, timedelta(minutes=45)),
        (timedelta(days=397), 0.9, timedelta(days=397) * 0.1),
    ],
)
def test_renewal_is_due_once_less_than_the_share_of_the_lifetime_is_left(
    lifetime: timedelta, share: float, due_after: timedelta
) -> None:
    assert renewal_due(T0, T0 + lifetime, share) == T0 + due_after


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'fleet.db'}"


@pytest.fixture
def fleet(make_service: MakeFleet, monkeypatch: pytest.MonkeyPatch) -> FleetService:
    monkeypatch.setenv("EDGEFLEET_KEY_PASSPHRASE", "a passphrase for the device CA")
    return make_service()


def enrolled(fleet: FleetService, directory: Path) -> DeviceCredentials:
    headers = {"Authorization": f"Bearer {fleet.bootstrap_admin_token}"}
    token = httpx.post(f"{fleet.base_url}/v1/enrollment-tokens", json={}, headers=headers)
    assert token.status_code == 201, token.text
    enroll(fleet.base_url, token.json()["token"], device_id="cam-1", identity_dir=directory)
    return DeviceCredentials(directory)


def renewer(
    credentials: DeviceCredentials, url: str, now: datetime, renewed: list[Enrolled]
) -> Renewer:
    return Renewer(
        credentials=credentials,
        fleet_url=url,
        config=IdentityConfig(renew_retry_min_s=0.05, renew_retry_max_s=0.5, renew_timeout_s=2),
        ssl_context=None,
        on_renewed=renewed.append,
        name="test-renewer",
        clock=lambda: now,
    )


def wait_for(renewed: list[Enrolled], count: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(renewed) < count and time.monotonic() < deadline:
        time.sleep(0.02)


def test_the_timer_renews_a_certificate_once_it_is_due(fleet: FleetService, tmp_path: Path) -> None:
    credentials = enrolled(fleet, tmp_path / "identity")
    first = credentials.certificate
    renewed: list[Enrolled] = []
    # Its clock is 29 days before the 90-day certificate expires: past the two-thirds mark.
    timer = renewer(
        credentials, fleet.base_url, credentials.not_after - timedelta(days=29), renewed
    )
    timer.start()
    try:
        wait_for(renewed, 1)
    finally:
        timer.stop()
    assert len(renewed) >= 1
    assert credentials.certificate.serial_number != first.serial_number
    assert credentials.certificate.public_key() == first.public_key()
    identity = httpx.get(
        f"{fleet.base_url}/v1/identities/cam-1",
        headers={"Authorization": f"Bearer {fleet.bootstrap_admin_token}"},
    ).json()
    assert identity["cert_serial"] == renewed[-1].serial


def test_a_device_clock_far_ahead_does_not_renew_in_a_loop(
    fleet: FleetService, tmp_path: Path
) -> None:
    credentials = enrolled(fleet, tmp_path / "identity")
    renewed: list[Enrolled] = []
    # 89 days ahead: the certificate the fleet issues now is due by this clock at once.
    timer = renewer(credentials, fleet.base_url, credentials.not_after - timedelta(days=1), renewed)
    timer.start()
    try:
        wait_for(renewed, 1)
        time.sleep(1.0)  # renew_retry_max_s is 0.5 s: at most two more renewals
    finally:
        timer.stop()
    assert 1 <= timer.renewals <= 3


def test_the_timer_leaves_a_fresh_certificate_alone(fleet: FleetService, tmp_path: Path) -> None:
    credentials = enrolled(fleet, tmp_path / "identity")
    renewed: list[Enrolled] = []
    timer = renewer(credentials, fleet.base_url, datetime.now(UTC), renewed)
    timer.start()
    time.sleep(0.5)
    timer.stop()
    assert (timer.renewals, timer.failures, renewed) == (0, 0, [])


def test_a_failed_renewal_is_retried_with_backoff_until_it_succeeds(
    fleet: FleetService, tmp_path: Path
) -> None:
    credentials = enrolled(fleet, tmp_path / "identity")
    renewed: list[Enrolled] = []
    # A fleet URL nothing answers at: every attempt fails and the next waits 25-500 ms.
    timer = renewer(credentials, "http://127.0.0.1:9", credentials.not_after, renewed)
    timer.start()
    time.sleep(1.0)
    timer.stop()
    assert 3 <= timer.failures <= 40
    assert renewed == []
    # The same certificate is still there and still renews at the real fleet.
    retry = renewer(credentials, fleet.base_url, credentials.not_after, renewed)
    retry.start()
    done = threading.Event()
    deadline = time.monotonic() + 10
    while not renewed and time.monotonic() < deadline:
        done.wait(0.02)
    retry.stop()
    assert retry.renewals == 1
