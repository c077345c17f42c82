"""The director: signed, sequenced, retained desired states that a device can verify."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from edgefleet.agent.trust import TrustedRepository
from edgefleet.fleet.errors import PublishError
from edgefleet.fleet.keys import LabSetup
from edgefleet.fleet.service import FleetService
from edgefleet.shared.hashing import sha256_file
from edgefleet.shared.signing.bundle import (
    DIRECTOR_KEYS_FILE,
    TRUSTED_ROOT_FILE,
    load_director_keys,
)
from edgefleet.shared.signing.director import SignedDesiredState, verify_desired
from edgefleet.shared.signing.errors import ReplayedOrOlder
from tests.support.fleet_fixtures import DEVICE_TOKEN, MakeFleet, admin_client, upload
from tests.support.mosquitto import MosquittoBroker
from tests.support.mqtt_helpers import retained_desired


def _publish(api: httpx.Client, package: Path, version: str) -> None:
    assert upload(api, package).status_code == 201
    assert api.post(f"/v1/models/wine/{version}/publish").status_code == 200


def test_retained_desired_state_verifies_and_matches_the_signed_targets(
    fleet: FleetService,
    api: httpx.Client,
    lab: LabSetup,
    mosquitto: MosquittoBroker,
    wine_packages: dict[str, Path],
    tmp_path: Path,
    unique_id: str,
) -> None:
    device_id = f"dev-{unique_id}"
    _publish(api, wine_packages["1.1.0"], "1.1.0")
    response = api.put(
        f"/v1/devices/{device_id}/desired",
        json={"model": "wine", "version": "1.1.0", "rollout_id": "r-1", "expires_in_s": 3600},
    )
    assert response.status_code == 200, response.text

    payload = retained_desired(mosquitto.port, device_id)
    body = verify_desired(
        payload,
        trusted_director_keys=load_director_keys(lab.bundle_dir / DIRECTOR_KEYS_FILE),
        device_id=device_id,
        last_seq=None,
        now=datetime.now(UTC),
    )
    assert body.model_dump(mode="json", by_alias=True) == response.json()["signed"]
    assert body.rollout_id == "r-1"
    assert body.rollback is False
    assert body.target.sha256 == sha256_file(wine_packages["1.1.0"])
    assert 3500 < (body.expires_at - body.issued_at).total_seconds() <= 3600

    # What the device does next: TUF over the fleet's HTTP must agree with the director.
    trust = TrustedRepository(
        tmp_path / "device-tuf",
        lab.bundle_dir / TRUSTED_ROOT_FILE,
        f"{fleet.base_url}/v1/repository",
        headers={"Authorization": f"Bearer {DEVICE_TOKEN}"},
    )
    info = trust.verify_target_info(body.target.name, body.target.sha256, body.target.length)
    assert info.custom["version"] == "1.1.0"
    assert api.get(f"/v1/devices/{device_id}/desired").json() == response.json()


def test_seq_grows_across_puts_and_a_restart(
    make_fleet: MakeFleet,
    mosquitto: MosquittoBroker,
    wine_packages: dict[str, Path],
    unique_id: str,
) -> None:
    device_id = f"dev-{unique_id}"
    first = make_fleet()
    with admin_client(first) as api:
        _publish(api, wine_packages["1.0.0"], "1.0.0")
        _publish(api, wine_packages["1.1.0"], "1.1.0")
        seqs = [
            api.put(
                f"/v1/devices/{device_id}/desired", json={"model": "wine", "version": v}
            ).json()["signed"]["seq"]
            for v in ("1.0.0", "1.1.0")
        ]
    first.stop()
    second = make_fleet()
    with admin_client(second) as api:
        rollback = api.put(
            f"/v1/devices/{device_id}/desired",
            json={"model": "wine", "version": "1.0.0", "rollback": True},
        ).json()["signed"]
    assert seqs[0] < seqs[1] < rollback["seq"]
    assert rollback["rollback"] is True
    assert (
        verify_desired(
            retained_desired(mosquitto.port, device_id),
            trusted_director_keys={second.director_key.keyid: second.director_key},
            device_id=device_id,
            last_seq=seqs[1],
            now=datetime.now(UTC),
        ).seq
        == rollback["seq"]
    )


def test_two_replicas_never_reuse_a_seq_and_the_newest_stays_retained(
    make_fleet: MakeFleet,
    mosquitto: MosquittoBroker,
    wine_packages: dict[str, Path],
    unique_id: str,
) -> None:
    device_id = f"dev-{unique_id}"
    replicas = [make_fleet(), make_fleet()]
    with admin_client(replicas[0]) as api:
        _publish(api, wine_packages["1.0.0"], "1.0.0")
    results: list[int] = []
    errors: list[str] = []

    def assign_many(fleet: FleetService) -> None:
        with admin_client(fleet) as api:
            for _ in range(8):
                response = api.put(
                    f"/v1/devices/{device_id}/desired", json={"model": "wine", "version": "1.0.0"}
                )
                if response.status_code != 200:
                    errors.append(response.text)
                else:
                    results.append(response.json()["signed"]["seq"])

    threads = [threading.Thread(target=assign_many, args=(f,)) for f in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(results) == list(range(1, 17))
    with admin_client(replicas[1]) as api:
        stored = api.get(f"/v1/devices/{device_id}/desired").json()
    assert stored["signed"]["seq"] == 16
    body = verify_desired(
        retained_desired(mosquitto.port, device_id),
        trusted_director_keys={replicas[0].director_key.keyid: replicas[0].director_key},
        device_id=device_id,
        last_seq=None,
        now=datetime.now(UTC),
    )
    assert body.seq == 16


def test_a_replayed_envelope_is_older_than_what_the_device_accepted(
    fleet: FleetService, api: httpx.Client, wine_packages: dict[str, Path], unique_id: str
) -> None:
    device_id = f"dev-{unique_id}"
    _publish(api, wine_packages["1.0.0"], "1.0.0")
    url = f"/v1/devices/{device_id}/desired"
    old = api.put(url, json={"model": "wine", "version": "1.0.0"}).json()
    new = api.put(url, json={"model": "wine", "version": "1.0.0"}).json()
    keys = {fleet.director_key.keyid: fleet.director_key}
    with pytest.raises(ReplayedOrOlder):
        verify_desired(
            httpx.Response(200, json=old).content,
            trusted_director_keys=keys,
            device_id=device_id,
            last_seq=new["signed"]["seq"],
            now=datetime.now(UTC),
        )


@pytest.mark.parametrize(
    ("version", "status", "expected"),
    [("9.9.9", 404, "not in the registry"), ("1.0.0", 409, "not published")],
)
def test_desired_state_needs_a_published_version(
    api: httpx.Client,
    wine_packages: dict[str, Path],
    unique_id: str,
    version: str,
    status: int,
    expected: str,
) -> None:
    assert upload(api, wine_packages["1.0.0"]).status_code == 201
    url = f"/v1/devices/dev-{unique_id}/desired"
    response = api.put(url, json={"model": "wine", "version": version})
    assert response.status_code == status
    assert expected in response.json()["error"]["message"]
    assert api.get(url).status_code == 404


def test_broker_outage_keeps_the_state_and_says_it_was_not_published(
    make_fleet: MakeFleet,
    mosquitto: MosquittoBroker,
    wine_packages: dict[str, Path],
    unique_id: str,
) -> None:
    fleet = make_fleet(publish_timeout_s=0.5)
    device_id = f"dev-{unique_id}"
    with admin_client(fleet) as api:
        _publish(api, wine_packages["1.0.0"], "1.0.0")
        mosquitto.stop()
        response = api.put(
            f"/v1/devices/{device_id}/desired", json={"model": "wine", "version": "1.0.0"}
        )
        assert response.status_code == 503
        assert "stored" in response.json()["error"]["message"]
        assert api.get(f"/v1/devices/{device_id}/desired").json()["signed"]["seq"] == 1
        mosquitto.start()
        assert _republish_once_reconnected(fleet, device_id).signed.seq == 1
    assert b'"seq":1' in retained_desired(mosquitto.port, device_id)


def _republish_once_reconnected(fleet: FleetService, device_id: str) -> SignedDesiredState:
    # The publisher reconnects after a 0.5-2 s backoff, longer on a loaded machine, and
    # each attempt waits only publish_timeout_s for the connection.
    deadline = time.monotonic() + 20
    while True:
        try:
            return fleet.director.republish(device_id)
        except PublishError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_operator_role_is_needed_to_assign(
    fleet: FleetService, api: httpx.Client, unique_id: str
) -> None:
    from tests.support.people import user_token

    token = user_token(fleet.engine, "viewer", "viewer")
    response = httpx.put(
        f"{fleet.base_url}/v1/devices/dev-{unique_id}/desired",
        json={"model": "wine", "version": "1.0.0"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 403
    assert "device:write" in response.json()["error"]["message"]
