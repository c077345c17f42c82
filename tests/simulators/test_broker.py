"""The demo's embedded broker: an amqtt error left to its loop is one line, no traceback."""

from __future__ import annotations

import logging
import time

import pytest

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
