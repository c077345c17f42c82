"""Helpers for tests that drive a rollout through the fleet's REST API."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
from sqlalchemy import Engine

from tests.fleet.publisher import wait_until
from tests.support.people import user_token


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


def approve_version(
    api: httpx.Client, engine: Engine, name: str, version: str, *, verify: str | bool = True
) -> None:
    """Approve model ``name`` ``version`` as a second person: a new approver user,
    distinct from whoever uploaded it through ``api`` (four eyes). A rollout goes past
    its first wave only with an approved version, and publishing does not approve.
    ``verify`` is httpx's: the CA file of an https fleet."""
    token = user_token(engine, f"approver-{secrets.token_hex(4)}", "approver")
    with httpx.Client(
        base_url=api.base_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=20,
        verify=verify,
    ) as approver:
        approved = approver.post(f"/v1/models/{name}/{version}/approve")
    assert approved.status_code == 200, approved.text


def publish_and_approve(
    api: httpx.Client, engine: Engine, name: str, version: str, *, verify: str | bool = True
) -> None:
    """Publish (lab mode) model ``name`` ``version`` through ``api`` and approve it as a
    second person (`approve_version`)."""
    published = api.post(f"/v1/models/{name}/{version}/publish")
    assert published.status_code == 200, published.text
    approve_version(api, engine, name, version, verify=verify)
