"""``edgefleet fleet broker-config`` as an operator runs it: the printed settings are the
ones that reach a real Mosquitto started on the written config."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from edgefleet.fleet.identity.broker_config import BrokerMode, Listener
from edgefleet.fleet.identity.broker_files import BrokerLayout, BrokerSetup
from tests.support.closed_broker import ClosedBroker, MqttTestClient
from tests.support.mosquitto import free_port


def _broker_config(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.shared.cli", "fleet", "broker-config", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def _exports(stdout: str) -> dict[str, str]:
    pairs = [
        shlex.split(line.removeprefix("export "))[0]
        for line in stdout.splitlines()
        if line.startswith("export ")
    ]
    return dict(pair.split("=", 1) for pair in pairs)


def test_the_printed_fleet_credential_is_the_one_the_written_broker_takes(tmp_path: Path) -> None:
    device_port, fleet_port = free_port(), free_port()
    out = tmp_path / "broker"
    done = _broker_config(
        "--out",
        str(out),
        "--data-dir",
        str(tmp_path / "fleet"),
        "--lab-mode",
        "--server-name",
        "127.0.0.1",
        "--device-port",
        str(device_port),
        "--device-bind",
        "127.0.0.1",
        "--fleet-port",
        str(fleet_port),
    )
    assert done.returncode == 0, done.stderr
    settings = _exports(done.stdout)
    assert settings["EDGEFLEET_FLEET_BROKER_URL"] == f"mqtts://127.0.0.1:{fleet_port}"
    assert settings["EDGEFLEET_FLEET_BROKER_CONFIG_DIR"] == str(out.absolute())
    setup = BrokerSetup(
        BrokerLayout(out), BrokerMode.MTLS, Listener(device_port), Listener(fleet_port)
    )
    broker = ClosedBroker(tmp_path / "mosquitto", setup)
    broker.start()
    try:
        fleet = MqttTestClient(
            fleet_port,
            ca=Path(settings["EDGEFLEET_FLEET_BROKER_CA_FILE"]),
            client_id="fleet",
            cert=Path(settings["EDGEFLEET_FLEET_BROKER_CERT_FILE"]),
            key=Path(settings["EDGEFLEET_FLEET_BROKER_KEY_FILE"]),
        )
        assert fleet.connect(), broker.log()
        assert fleet.publish("edgefleet/v1/devices/cam-1/desired", b"{}") in {0, 16}
        assert fleet.publish("edgefleet/v1/devices/cam-1/stored", b"{}") in {0, 16}
        assert fleet.publish("edgefleet/v1/devices/cam-1/state", b"{}") == 135
        fleet.close()
        # The fleet's client certificate is no device's: on the device listener it gets nothing.
        intruder = MqttTestClient(
            device_port,
            ca=Path(settings["EDGEFLEET_FLEET_BROKER_CA_FILE"]),
            client_id="x",
            cert=Path(settings["EDGEFLEET_FLEET_BROKER_CERT_FILE"]),
            key=Path(settings["EDGEFLEET_FLEET_BROKER_KEY_FILE"]),
        )
        assert intruder.connect()
        assert intruder.publish("edgefleet/v1/devices/cam-1/desired", b"{}") == 135
        assert intruder.publish("edgefleet/v1/devices/cam-1/stored", b"{}") == 135
        intruder.close()
    finally:
        broker.stop()


def test_a_fleet_whose_device_ca_cannot_be_opened_gets_one_clear_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "EDGEFLEET_KEY_PASSPHRASE"}
    done = _broker_config("--out", str(tmp_path / "b"), "--data-dir", str(tmp_path / "f"), env=env)
    assert done.returncode != 0
    assert "no $EDGEFLEET_KEY_PASSPHRASE" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "b").exists()
