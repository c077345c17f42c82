"""A real Mosquitto running the configuration `edgefleet fleet broker-config` writes.

`write_closed_setup` writes the directory with `write_broker_setup` (both listeners on
127.0.0.1, free ports); `ClosedBroker` runs mosquitto on that mosquitto.conf
(`edgefleet.simulators.mosquitto.ClosedMosquitto`, which the demo uses too), and
`reload` sends it SIGHUP and waits until it has re-read its files. `fleet_overrides`
turns the printed fleet settings into `FleetSettings` fields, so the tests run the fleet
the way the command tells operators.
"""

from __future__ import annotations

import ssl
import time
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.fleet.identity.broker_config import BrokerMode, Listener
from edgefleet.fleet.identity.broker_files import BrokerSetup, write_broker_setup
from edgefleet.fleet.identity.ca import DeviceCA
from edgefleet.simulators.mosquitto import ClosedMosquitto
from tests.support.mosquitto import free_port

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
    return dict(setup.fleet_fields(HOST))


class ClosedBroker(ClosedMosquitto):
    """The product's `ClosedMosquitto`, on the test's 127.0.0.1 listeners."""


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
