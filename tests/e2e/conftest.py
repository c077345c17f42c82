"""End-to-end fixtures: a fleet service and agents on one real Mosquitto."""

from __future__ import annotations

import time
from collections.abc import Callable
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
