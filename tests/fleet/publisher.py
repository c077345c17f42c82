"""A plain paho client that publishes device messages, as an agent would."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.shared.messages import WireModel, encode
from edgefleet.shared.topics import Channel, device_topic


def publish(port: int, messages: Iterable[tuple[str, bytes, bool]]) -> None:
    """Publish (topic, payload, retain) at QoS 1 and wait until the broker has each."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [
            client.publish(topic, payload, qos=1, retain=retain)
            for topic, payload, retain in messages
        ]
        for info in infos:
            info.wait_for_publish(timeout=10)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def device_message(
    channel: Channel, message: WireModel, *, retain: bool = False
) -> tuple[str, bytes, bool]:
    device_id = getattr(message, "device_id")  # noqa: B009
    return device_topic(device_id, channel), encode(message), retain


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float = 10.0,
    what: str = "condition",
    *,
    poll_s: float = 0.02,
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(poll_s)
