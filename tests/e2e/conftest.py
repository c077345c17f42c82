"""End-to-end fixtures: a fleet service and agents on one real Mosquitto."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from edgefleet.fleet.service import FleetService
from edgefleet.fleet.settings import FleetSettings

T = TypeVar("T")


def eventually(probe: Callable[[], T | None], *, timeout_s: float = 15.0, what: str = "") -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}; last saw {last!r}")


class Console:
    """The fleet's REST API as an operator uses it."""

    def __init__(self, service: FleetService) -> None:
        assert service.bootstrap_admin_token
        self.client = httpx.Client(
            base_url=service.base_url,
            headers={"Authorization": f"Bearer {service.bootstrap_admin_token}"},
            timeout=10,
        )

    def device(self, device_id: str) -> dict[str, Any] | None:
        response = self.client.get(f"/v1/devices/{device_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def telemetry(self, device_id: str) -> list[dict[str, Any]]:
        response = self.client.get(f"/v1/devices/{device_id}/telemetry")
        response.raise_for_status()
        items: list[dict[str, Any]] = response.json()["items"]
        return items


@pytest.fixture
def start_fleet(database_url: str, tmp_path: Path) -> Iterator[Callable[..., FleetService]]:
    """Start a fleet service on this test's database and a given broker; stopped after."""
    started: list[FleetService] = []

    def start(broker_url: str, **overrides: Any) -> FleetService:
        values: dict[str, Any] = {
            "database_url": database_url,
            "broker_url": broker_url,
            "data_dir": tmp_path / "fleet",
            "api_port": 0,
            "ingest_flush_interval_s": 0.05,
        } | overrides
        service = FleetService(FleetSettings(**values))
        started.append(service)
        service.start()
        assert service.ingester is not None
        assert service.ingester.wait_connected(10), "the fleet's ingester did not connect"
        return service

    yield start
    for service in started:
        service.stop()


@dataclass
class WebhookReceiver:
    """A real stdlib HTTP server that records the JSON bodies POSTed to ``url``."""

    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.bodies)


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A webhook endpoint on a free loopback port that answers 204 to every POST."""
    receiver = WebhookReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                receiver.bodies.append(json.loads(body))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/drift"
    yield receiver
    server.shutdown()
    server.server_close()
    thread.join(5)
