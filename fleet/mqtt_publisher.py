"""The fleet's MQTT publisher.

`MqttPublisher` is a connection of its own for fleet→device and fleet→subscriber
messages (retained desired states, alerts), so publishing never waits behind ingest and
a replica that does not ingest can still direct devices. paho reconnects by itself;
`publish` waits for the broker's PUBACK so a caller knows the message is out.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from edgefleet.fleet.errors import PublishError
from edgefleet.fleet.mqtt_client import make_client
from edgefleet.fleet.settings import FleetSettings

logger = logging.getLogger(__name__)

MAX_INFLIGHT = 1000


class MqttPublisher:
    """Publishes QoS 1 messages over one connection of its own to the fleet's broker.

    ``role`` names the connection in its client id and in log lines (``director``,
    ``alerts``).
    """

    def __init__(
        self, settings: FleetSettings, *, role: str = "director", timeout_s: float | None = None
    ) -> None:
        self._settings = settings
        self._role = role
        self._timeout_s = timeout_s if timeout_s is not None else settings.publish_timeout_s
        self._connected = threading.Event()
        base = settings.broker_client_id or "edgefleet-fleet"
        self._client = make_client(settings, f"{base}-{role}-{uuid.uuid4().hex[:8]}")
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        # A rollout wave publishes hundreds of desired states at once; paho's default
        # of 20 unacknowledged messages would make that 20 at a time.
        self._client.max_inflight_messages_set(MAX_INFLIGHT)
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
        """Publish retained at QoS 1 and wait for the PUBACK; raises `PublishError`."""
        self.publish(topic, payload, retain=True)

    def publish_retained_many(
        self, messages: Sequence[tuple[str, bytes]]
    ) -> list[PublishError | None]:
        """Publish every message retained at QoS 1, then wait for all the PUBACKs.

        One error per message (None: acknowledged); the whole batch shares one timeout,
        counted from when the last message was handed to paho.
        """
        if not messages:
            return []
        if not self._connected.wait(self._timeout_s):
            error = PublishError(f"not connected to the broker {self._settings.broker_url}")
            return [error] * len(messages)
        infos: list[mqtt.MQTTMessageInfo | PublishError] = []
        with self._lock:
            for topic, payload in messages:
                try:
                    infos.append(self._client.publish(topic, payload, qos=1, retain=True))
                except (RuntimeError, ValueError) as e:
                    infos.append(PublishError(f"publishing to {topic} failed: {e}"))
        deadline = time.monotonic() + self._timeout_s
        return [
            info
            if isinstance(info, PublishError)
            else self._acknowledged(topic, info, deadline - time.monotonic())
            for (topic, _), info in zip(messages, infos, strict=True)
        ]

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        """Publish at QoS 1 and wait for the PUBACK.

        Raises `PublishError` if there is no connection or no acknowledgement within the
        timeout.
        """
        if not self._connected.wait(self._timeout_s):
            raise PublishError(f"not connected to the broker {self._settings.broker_url}")
        with self._lock:
            info = self._client.publish(topic, payload, qos=1, retain=retain)
        error = self._acknowledged(topic, info, self._timeout_s)
        if error is not None:
            raise error

    def _acknowledged(
        self, topic: str, info: mqtt.MQTTMessageInfo, timeout_s: float
    ) -> PublishError | None:
        try:
            info.wait_for_publish(max(0.0, timeout_s))
        except (RuntimeError, ValueError) as e:
            return PublishError(f"publishing to {topic} failed: {e}")
        if not info.is_published():
            return PublishError(
                f"the broker did not acknowledge the message on {topic} within {self._timeout_s}s"
            )
        return None

    def _on_connect(
        self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any = None
    ) -> None:
        if reason.is_failure:
            logger.warning("%s publisher: broker refused the connection: %s", self._role, reason)
            return
        self._connected.set()
        logger.debug("%s publisher connected to %s", self._role, self._settings.broker_url)

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any = None
    ) -> None:
        self._connected.clear()
        if reason.is_failure:
            logger.warning("%s publisher lost the broker: %s", self._role, reason)
