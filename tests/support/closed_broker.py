"""A real Mosquitto running the configuration `edgefleet fleet broker-config` writes.

`write_closed_setup` writes the directory with `write_broker_setup` (both listeners on
127.0.0.1, free ports); `ClosedBroker` runs mosquitto on that mosquitto.conf, unchanged
but for a test prelude (log file, no persistence, ``user root`` when the tests run as
root so the broker can read the test's files), and `reload` sends it SIGHUP and waits
until it has re-read its files. `fleet_overrides` turns the printed fleet settings into
`FleetSettings` fields, so the tests run the fleet the way the command tells operators.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.fleet.identity.broker_config import BrokerMode, Listener
from edgefleet.fleet.identity.broker_files import BrokerSetup, write_broker_setup
from edgefleet.fleet.identity.ca import DeviceCA
from tests.support.mosquitto import MOSQUITTO, free_port, wait_for_port

HOST = "127.0.0.1"


def write_closed_setup(directory: Path, ca: DeviceCA, mode: BrokerMode) -> BrokerSetup:
    """The broker config directory for ``mode``, on two free ports of 127.0.0.1."""
    now = datetime.now(UTC)
    return write_broker_setup(
        directory,
        ca,
        mode=mode,
        device=Listener(free_port(), HOST),
        fleet=Listener(free_port(), HOST),
        server_names=(HOST, "localhost"),
        crl_pem=ca.crl([], now=now),
        device_passwords=[],
        now=now,
    )


def fleet_overrides(setup: BrokerSetup) -> dict[str, object]:
    """The printed ``EDGEFLEET_FLEET_*`` settings as `FleetSettings` field values."""
    return {
        key.removeprefix("EDGEFLEET_FLEET_").lower(): value
        for key, value in setup.fleet_settings(HOST).items()
    }


class ClosedBroker:
    """mosquitto on a `BrokerSetup`'s config; `stop` and `start` keep its ports."""

    def __init__(self, workdir: Path, setup: BrokerSetup) -> None:
        self.setup = setup
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "mosquitto-test.conf"
        self.log_path = workdir / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def device_url(self) -> str:
        return f"mqtts://{HOST}:{self.setup.device.port}"

    @property
    def reload_command(self) -> str:
        """What the fleet runs after rewriting the CRL or password file."""
        assert self._process is not None
        return f"kill -HUP {self._process.pid}"

    def start(self) -> None:
        prelude = [
            "persistence false",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if os.geteuid() == 0:
            prelude.append("user root")
        self.config_path.write_text("\n".join(prelude) + "\n" + self.setup.layout.conf.read_text())
        self._process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(self.setup.device.port)
            wait_for_port(self.setup.fleet.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start:\n{self.log()}") from None

    def reloads(self) -> int:
        """How many times the broker has re-read its configuration."""
        return self.log().count("Reloading config")

    def reload(self, timeout_s: float = 10.0) -> None:
        """SIGHUP, then wait until the log shows the reload."""
        assert self._process is not None
        before = self.reloads()
        os.kill(self._process.pid, signal.SIGHUP)
        self.wait_reloaded(before, timeout_s)

    def wait_reloaded(self, before: int, timeout_s: float = 10.0) -> None:
        """Wait until the broker has reloaded more often than ``before``."""
        deadline = time.monotonic() + timeout_s
        while self.reloads() <= before:
            if time.monotonic() > deadline:
                raise TimeoutError(f"mosquitto did not reload:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


class MqttTestClient:
    """A paho MQTT 5 client over TLS for probing the closed broker: what it was granted
    (PUBACK and SUBACK reason codes) and what it received."""

    def __init__(
        self,
        port: int,
        *,
        ca: Path,
        client_id: str,
        cert: Path | None = None,
        key: Path | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.port = port
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
        )
        context = ssl.create_default_context(cafile=str(ca))
        if cert is not None and key is not None:
            context.load_cert_chain(str(cert), str(key))
        self.client.tls_set_context(context)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.puback: dict[int, int] = {}  # mid -> reason code value
        self.suback: dict[int, list[int]] = {}
        self.received: list[mqtt.MQTTMessage] = []
        self.connect_rc: int | None = None
        self.disconnects = 0
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, message: self.received.append(message)
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, _c: object, _u: object, _f: object, rc: object, _p: object) -> None:
        self.connect_rc = int(getattr(rc, "value", rc))  # type: ignore[call-overload]

    def _on_publish(self, _c: object, _u: object, mid: int, rc: object, _p: object) -> None:
        self.puback[mid] = int(getattr(rc, "value", rc))  # type: ignore[call-overload]

    def _on_subscribe(
        self, _c: object, _u: object, mid: int, codes: list[object], _p: object
    ) -> None:
        self.suback[mid] = [int(getattr(c, "value", c)) for c in codes]  # type: ignore[call-overload]

    def _on_disconnect(self, *_args: object) -> None:
        self.disconnects += 1

    def connect(self, timeout_s: float = 10.0) -> bool:
        """Connect and wait for CONNACK; True if accepted. A refused TLS handshake or
        CONNACK is False, never an exception."""
        try:
            self.client.connect(HOST, self.port, keepalive=30)
        except (OSError, ssl.SSLError):
            return False
        self.client.loop_start()
        deadline = time.monotonic() + timeout_s
        while self.connect_rc is None and self.disconnects == 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return self.connect_rc == 0

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Publish at QoS 1 and return the PUBACK's reason code (0 granted, 135 refused)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        deadline = time.monotonic() + 10
        while info.mid not in self.puback:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no PUBACK for {topic}")
            time.sleep(0.01)
        return self.puback[info.mid]

    def subscribe(self, topic: str) -> list[int]:
        """Subscribe at QoS 1; the SUBACK's reason codes."""
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        deadline = time.monotonic() + 10
        while mid not in self.suback:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no SUBACK for {topic}")
            time.sleep(0.01)
        return self.suback[mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
