"""The demo's embedded broker: amqtt's subscription race mended, its other loop errors one line."""

from __future__ import annotations

import logging
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.simulators.broker import EmbeddedBroker
from tests.support.mosquitto import free_port


def test_an_error_on_the_broker_loop_is_one_warning_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    broker = EmbeddedBroker(port=free_port())
    broker.start()
    try:
        # What asyncio's streams do when amqtt's connection handler raises.
        loop = broker._loop
        loop.call_soon_threadsafe(
            loop.call_exception_handler,
            {
                "message": "Unhandled exception in client_connected_cb",
                "exception": RuntimeError("dictionary changed size during iteration"),
            },
        )
        records = _broker_records(caplog, timeout_s=5)
    finally:
        broker.stop()
    assert [r.getMessage() for r in records] == [
        "embedded broker dropped a connection (RuntimeError: dictionary changed size during "
        "iteration); the client reconnects"
    ]
    assert records[0].exc_info is None


def _broker_records(caplog: pytest.LogCaptureFixture, timeout_s: float) -> list[logging.LogRecord]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [r for r in caplog.records if r.name == "edgefleet.simulators.broker"]
        if found:
            return found
        time.sleep(0.01)
    return []


def test_clients_subscribing_while_others_connect_are_not_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """amqtt walks its subscription table with awaits inside; new filters used to break it.

    Before the snapshot table, this dropped dozens of connections with ``dictionary
    changed size during iteration`` (the demo's second run printed two of them).
    """
    caplog.set_level(logging.WARNING)
    port = free_port()
    broker = EmbeddedBroker(port=port)
    broker.start()
    clients: list[mqtt.Client] = []
    try:
        publisher = _client("retainer", port)
        for i in range(10):
            publisher.publish(f"r/{i}", b"x", qos=1, retain=True).wait_for_publish(5)
        clients.append(publisher)

        def connect(i: int) -> None:
            client = _client(f"sub-{i}", port, subscribe=[f"r/{i}/{j}" for j in range(3)])
            clients.append(client)

        threads = [threading.Thread(target=connect, args=(i,)) for i in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(2)
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()
        broker.stop()
    dropped = [r.getMessage() for r in caplog.records if r.name == "edgefleet.simulators.broker"]
    assert dropped == []


def _client(client_id: str, port: int, subscribe: list[str] | None = None) -> mqtt.Client:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
    )
    filters = subscribe or []

    def on_connect(c: mqtt.Client, _u: object, _f: object, _rc: object, _p: object) -> None:
        for topic_filter in [*filters, "r/#"] if filters else []:
            c.subscribe(topic_filter, 1)

    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client
