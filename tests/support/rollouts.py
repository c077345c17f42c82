"""Helpers for tests that drive a rollout through the fleet's REST API."""

from __future__ import annotations

from typing import Any

import httpx

from tests.fleet.publisher import wait_until


def wait_status(
    api: httpx.Client,
    rollout_id: str,
    statuses: set[str],
    timeout_s: float = 30.0,
    *,
    poll_s: float = 0.02,
) -> dict[str, Any]:
    """Wait until the rollout is in one of ``statuses``; return its detail."""
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.clear()
        seen.update(api.get(f"/v1/rollouts/{rollout_id}").json())
        return seen.get("status") in statuses

    wait_until(
        reached, timeout_s=timeout_s, what=f"rollout {rollout_id} to be {statuses}", poll_s=poll_s
    )
    return seen


def history(api: httpx.Client, rollout_id: str, **params: Any) -> list[dict[str, Any]]:
    """Every history line of the rollout (paging through)."""
    lines: list[dict[str, Any]] = []
    after = 0
    while True:
        page = api.get(
            f"/v1/rollouts/{rollout_id}/history",
            params={"after_id": after, "limit": 10_000, **params},
        ).json()
        lines += page["items"]
        if page["next_after_id"] is None:
            return lines
        after = page["next_after_id"]
