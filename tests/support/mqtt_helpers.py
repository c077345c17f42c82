"""Read what a device would read from the broker: the retained desired state."""

from __future__ import annotations

import queue
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.shared.topics import Channel, device_topic


def retained_desired(port: int, device_id: str, timeout_s: float = 10.0) -> bytes:
    """The retained payload on the device's desired topic, as a fresh subscriber gets it."""
    received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, _r: Any, _p: Any) -> None:
        c.subscribe(device_topic(device_id, Channel.DESIRED), qos=1)

    client.on_connect = on_connect
    client.on_message = lambda _c, _u, msg: received.put(msg)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        message = received.get(timeout=timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    assert message.retain, "the desired state must be a retained message"
    return bytes(message.payload)
