"""The fleet's own MQTT client for fleet→device messages (retained desired states).

Separate from the ingester's connection so publishing never waits behind ingest, and
so a replica that does not ingest can still direct devices. paho reconnects by itself;
`publish_retained` waits for the broker's PUBACK so a caller knows the state is out.
"""

from __future__ import annotations

import logging
import ssl
import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from fleet.director import PublishError
from fleet.settings import FleetSettings

logger = logging.getLogger(__name__)


class MqttPublisher:
    """Publishes retained QoS 1 messages over one connection to the fleet's broker."""

    def __init__(self, settings: FleetSettings, *, timeout_s: float | None = None) -> None:
        self._settings = settings
        self._timeout_s = timeout_s if timeout_s is not None else settings.publish_timeout_s
        self._connected = threading.Event()
        base = settings.broker_client_id or "edgefleet-fleet"
        self._client = self._make_client(f"{base}-director-{uuid.uuid4().hex[:8]}")
        self._lock = threading.Lock()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Connect in the background (paho retries until the broker is there)."""
        s = self._settings
        self._client.connect_async(s.broker_host, s.broker_port, keepalive=s.broker_keepalive_s)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def publish_retained(self, topic: str, payload: bytes) -> None:
        """Publish retained at QoS 1 and wait for the PUBACK.

        Raises `PublishError` if there is no connection or no acknowledgement within the
        timeout.
        """
        if not self._connected.wait(self._timeout_s):
            raise PublishError(f"not connected to the broker {self._settings.broker_url}")
        with self._lock:
            info = self._client.publish(topic, payload, qos=1, retain=True)
        try:
            info.wait_for_publish(self._timeout_s)
        except (RuntimeError, ValueError) as e:
            raise PublishError(f"publishing to {topic} failed: {e}") from e
        if not info.is_published():
            raise PublishError(
                f"the broker did not acknowledge the message on {topic} within {self._timeout_s}s"
            )

    def _make_client(self, client_id: str) -> mqtt.Client:
        s = self._settings
        v5 = s.broker_protocol == "5"
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        if s.broker_username is not None:
            password = s.broker_password.get_secret_value() if s.broker_password else None
            client.username_pw_set(s.broker_username, password)
        if s.broker_tls:
            client.tls_set(
                ca_certs=str(s.broker_ca_file) if s.broker_ca_file else None,
                certfile=str(s.broker_cert_file) if s.broker_cert_file else None,
                keyfile=str(s.broker_key_file) if s.broker_key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        return client

    def _on_connect(
        self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any = None
    ) -> None:
        if reason.is_failure:
            logger.warning("director publisher: broker refused the connection: %s", reason)
            return
        self._connected.set()
        logger.debug("director publisher connected to %s", self._settings.broker_url)

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any = None
    ) -> None:
        self._connected.clear()
        if reason.is_failure:
            logger.warning("director publisher lost the broker: %s", reason)
