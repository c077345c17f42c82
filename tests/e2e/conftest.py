"""End-to-end fixtures: a fleet service and agents on one real Mosquitto."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx
import pytest

from edgefleet.fleet.service import FleetService

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
