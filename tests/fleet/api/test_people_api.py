"""``/v1/users``, ``/v1/roles``, ``/v1/tokens`` and ``/v1/whoami`` through a real app.

A token is shown once and stored hashed; it expires and is revoked at once; it is never
wider than its owner; a disabled user's tokens answer 401; the last admin is kept; and
each change writes its audit entry.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from edgefleet.fleet.api.app import create_app
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.governance_tables import AuditRow, TokenRow
from edgefleet.shared.messages import utcnow
from tests.support.people import add_token, add_user


def _client(engine: Engine, tmp_path: Path, **values: Any) -> TestClient:
    settings = FleetSettings(data_dir=tmp_path, database_url=str(engine.url), **values)
    return TestClient(create_app(settings, engine=engine))


@pytest.fixture
def client(engine: Engine, tmp_path: Path) -> Iterator[TestClient]:
    with _client(engine, tmp_path) as client:
        yield client


@pytest.fixture
def admin(engine: Engine) -> dict[str, str]:
    return _auth(add_token(engine, add_user(engine, "root", role="admin")))


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _audit(engine: Engine, action: str) -> list[AuditRow]:
    with Session(engine) as session:
        query = select(AuditRow).where(col(AuditRow.action) == action).order_by(col(AuditRow.seq))
        return list(session.exec(query).all())


def _error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    message: str = response.json()["error"]["message"]
    return message


def test_a_token_is_shown_once_stored_hashed_with_a_visible_prefix(
    client: TestClient, engine: Engine, admin: dict[str, str]
) -> None:
    made = client.post("/v1/tokens", json={"label": "laptop"}, headers=admin)
    assert made.status_code == 201, made.text
    body = made.json()
    token, prefix = body["token"], body["prefix"]
    assert token.startswith(prefix + "_")
    listed = client.get("/v1/tokens", headers=admin).json()["items"]
    mine = next(t for t in listed if t["prefix"] == prefix)
    assert mine["label"] == "laptop"
    assert mine["owner"] == "root"
    assert token not in str(listed)
    assert "token" not in mine
    assert "token_sha256" not in mine
    with Session(engine) as session:
        row = session.exec(select(TokenRow).where(col(TokenRow.prefix) == prefix)).one()
        assert token not in " ".join(str(v) for v in row.model_dump().values())
        audit = " ".join(f"{r.before} {r.after}" for r in session.exec(select(AuditRow)).all())
    assert token not in audit
    assert row.token_sha256 not in audit
    assert row.token_sha256 not in str(listed)
    who = client.get("/v1/whoami", headers=_auth(token)).json()
    assert who["name"] == "root"
    assert who["token_prefix"] == prefix
    assert "user:manage" in who["permissions"]
    assert mine["last_used_at"] is None
    used = client.get("/v1/tokens", headers=admin).json()["items"]
    assert next(t for t in used if t["prefix"] == prefix)["last_used_at"] is not None
    (entry,) = _audit(engine, "token.create")
    assert entry.object_id == prefix


def test_expiry_is_bounded_and_enforced(
    client: TestClient, engine: Engine, admin: dict[str, str]
) -> None:
    too_long = client.post("/v1/tokens", json={"label": "x", "expires_in_days": 800}, headers=admin)
    assert _error(too_long, 422).startswith("invalid body.expires_in_days")
    never = client.post("/v1/tokens", json={"label": "x", "never_expires": True}, headers=admin)
    assert "api_token_allow_no_expiry" in _error(never, 422)
    made = client.post("/v1/tokens", json={"label": "day", "expires_in_days": 1}, headers=admin)
    token = made.json()["token"]
    assert client.get("/v1/whoami", headers=_auth(token)).status_code == 200
    with Session(engine) as session:
        row = session.exec(select(TokenRow).where(col(TokenRow.id) == made.json()["id"])).one()
        row.expires_at = utcnow() - timedelta(seconds=1)
        session.add(row)
        session.commit()
    assert "expired" in _error(client.get("/v1/whoami", headers=_auth(token)), 401)


def test_a_token_that_never_expires_needs_the_setting(engine: Engine, tmp_path: Path) -> None:
    headers = _auth(add_token(engine, add_user(engine, "root", role="admin")))
    with _client(engine, tmp_path, api_token_allow_no_expiry=True) as client:
        made = client.post(
            "/v1/tokens", json={"label": "x", "never_expires": True}, headers=headers
        )
    assert made.status_code == 201, made.text
    assert made.json()["expires_at"] is None


def test_revoking_takes_effect_on_the_next_request(
    client: TestClient, engine: Engine, admin: dict[str, str]
) -> None:
    olive = add_user(engine, "olive", role="operator")
    token = add_token(engine, olive)
    (mine,) = client.get("/v1/tokens", headers=_auth(token)).json()["items"]
    assert client.get("/v1/devices", headers=_auth(token)).status_code == 200
    revoked = client.delete(f"/v1/tokens/{mine['prefix']}", headers=_auth(token))
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked"] is True
    assert "revoked" in _error(client.get("/v1/devices", headers=_auth(token)), 401)
    (entry,) = _audit(engine, "token.revoke")
    assert entry.actor_name == "olive"
    assert entry.object_id == mine["prefix"]
    assert "already" in _error(client.delete(f"/v1/tokens/{mine['id']}", headers=admin), 409)


def test_a_token_is_never_wider_than_its_owner(client: TestClient, engine: Engine) -> None:
    viewer = _auth(add_token(engine, add_user(engine, "vera", role="viewer")))
    wide = client.post(
        "/v1/tokens", json={"label": "x", "permissions": ["rollout:create"]}, headers=viewer
    )
    assert "rollout:create" in _error(wide, 403)
    unknown = client.post(
        "/v1/tokens", json={"label": "x", "permissions": ["device:fly"]}, headers=viewer
    )
    assert "unknown permission 'device:fly'" in _error(unknown, 422)
    narrow = client.post(
        "/v1/tokens", json={"label": "ro", "permissions": ["device:read"]}, headers=viewer
    )
    assert narrow.status_code == 201, narrow.text
    narrowed = _auth(narrow.json()["token"])
    assert client.get("/v1/whoami", headers=narrowed).json()["permissions"] == ["device:read"]
    assert "model:read" in _error(client.get("/v1/models", headers=narrowed), 403)
    # The narrowed token cannot mint its owner a full one.
    again = client.post("/v1/tokens", json={"label": "more"}, headers=narrowed)
    assert "beyond what" in _error(again, 403)


def test_other_users_tokens_need_token_manage(
    client: TestClient, engine: Engine, admin: dict[str, str]
) -> None:
    operator = _auth(add_token(engine, add_user(engine, "otto", role="operator")))
    add_user(engine, "ci", role="operator", kind="service")
    refused = client.post("/v1/tokens", json={"label": "x", "owner": "ci"}, headers=operator)
    assert "token:manage" in _error(refused, 403)
    assert "token:manage" in _error(client.get("/v1/users/ci/tokens", headers=operator), 403)
    made = client.post("/v1/tokens", json={"label": "pipeline", "owner": "ci"}, headers=admin)
    assert made.status_code == 201, made.text
    assert made.json()["owner"] == "ci"
    listed = client.get("/v1/users/ci/tokens", headers=admin).json()["items"]
    assert [t["label"] for t in listed] == ["pipeline"]
    assert [t["label"] for t in client.get("/v1/tokens", headers=operator).json()["items"]] == [
        "test"
    ]
    owners = {t["owner"] for t in client.get("/v1/tokens", headers=admin).json()["items"]}
    assert owners == {"root", "otto", "ci"}


def test_users_are_managed_with_user_manage_and_audited(
    client: TestClient, engine: Engine, admin: dict[str, str]
) -> None:
    operator = _auth(add_token(engine, add_user(engine, "otto", role="operator")))
    assert "user:manage" in _error(client.get("/v1/users", headers=operator), 403)
    made = client.post(
        "/v1/users",
        json={"name": "olive", "grants": [{"role": "operator", "device_tags": ["site-a"]}]},
        headers=admin,
    )
    assert made.status_code == 201, made.text
    user = made.json()
    assert user["kind"] == "user"
    assert user["grants"] == [{"role": "operator", "device_tags": ["site-a"], "model_names": None}]
    assert "exists already" in _error(
        client.post("/v1/users", json={"name": "olive"}, headers=admin), 409
    )
    pilot = client.post(
        "/v1/users", json={"name": "p", "grants": [{"role": "pilot"}]}, headers=admin
    )
    assert "unknown role 'pilot'" in _error(pilot, 422)
    assert client.get("/v1/users/olive", headers=admin).json()["id"] == user["id"]
    assert "no user 'nemo'" in _error(client.get("/v1/users/nemo", headers=admin), 404)
    changed = client.patch(
        f"/v1/users/{user['id']}", json={"grants": [{"role": "approver"}]}, headers=admin
    )
    assert changed.json()["grants"][0]["role"] == "approver"
    (entry,) = _audit(engine, "user.grant")
    assert entry.before is not None
    assert entry.after is not None
    assert entry.before["grants"][0]["role"] == "operator"
    assert entry.after["grants"][0]["role"] == "approver"
    assert len(_audit(engine, "user.create")) == 1
    names = [u["name"] for u in client.get("/v1/users", headers=admin).json()["items"]]
    assert names == ["olive", "otto", "root"]


def test_a_disabled_users_tokens_answer_401_until_enabled(
    client: TestClient, engine: Engine, admin: dict[str, str]
) -> None:
    olive = add_user(engine, "olive", role="operator")
    tokens = [_auth(add_token(engine, olive)), _auth(add_token(engine, olive))]
    client.patch("/v1/users/olive", json={"disabled": True}, headers=admin).raise_for_status()
    for headers in tokens:
        assert "disabled" in _error(client.get("/v1/devices", headers=headers), 401)
    client.patch("/v1/users/olive", json={"disabled": False}, headers=admin).raise_for_status()
    assert client.get("/v1/devices", headers=tokens[0]).status_code == 200
    assert [len(_audit(engine, a)) for a in ("user.disable", "user.enable")] == [1, 1]


def test_the_last_admin_cannot_lock_the_fleet_out(
    client: TestClient, engine: Engine, admin: dict[str, str]
) -> None:
    assert "user:manage" in _error(
        client.patch("/v1/users/root", json={"disabled": True}, headers=admin), 409
    )
    (only,) = client.get("/v1/tokens", headers=admin).json()["items"]
    assert "user:manage" in _error(
        client.delete(f"/v1/tokens/{only['prefix']}", headers=admin), 409
    )
    assert client.get("/v1/whoami", headers=admin).status_code == 200
    # Another admin with a live token: the first may be retired.
    second = _auth(add_token(engine, add_user(engine, "second", role="admin")))
    assert client.delete(f"/v1/tokens/{only['prefix']}", headers=admin).status_code == 200
    assert client.get("/v1/whoami", headers=admin).status_code == 401
    assert client.get("/v1/whoami", headers=second).json()["name"] == "second"
    assert _audit(engine, "user.disable") == []


def test_custom_roles(client: TestClient, engine: Engine, admin: dict[str, str]) -> None:
    viewer = _auth(add_token(engine, add_user(engine, "vera", role="viewer")))
    roles = client.get("/v1/roles", headers=viewer).json()["items"]
    assert {r["name"] for r in roles if r["builtin"]} == {"viewer", "operator", "approver", "admin"}
    body = {"name": "ci", "permissions": ["model:upload", "model:read"], "description": "CI"}
    assert "user:manage" in _error(client.post("/v1/roles", json=body, headers=viewer), 403)
    made = client.post("/v1/roles", json=body, headers=admin)
    assert made.status_code == 201, made.text
    assert made.json()["permissions"] == ["model:read", "model:upload"]
    assert "exists already" in _error(client.post("/v1/roles", json=body, headers=admin), 409)
    builtin = client.post("/v1/roles", json={**body, "name": "admin"}, headers=admin)
    assert "built-in" in _error(builtin, 409)
    fly = client.put("/v1/roles/ci", json={"permissions": ["device:fly"]}, headers=admin)
    assert "unknown permission 'device:fly'" in _error(fly, 422)
    put = client.put("/v1/roles/ci", json={"permissions": ["model:read"]}, headers=admin)
    assert put.json()["permissions"] == ["model:read"]
    assert "built-in" in _error(client.delete("/v1/roles/viewer", headers=admin), 409)
    assert client.delete("/v1/roles/ci", headers=admin).status_code == 204
    assert "no role 'ci'" in _error(client.delete("/v1/roles/ci", headers=admin), 404)
    assert [len(_audit(engine, f"role.{a}")) for a in ("create", "update", "delete")] == [1, 1, 1]


def test_a_missing_token_is_401_everywhere(client: TestClient) -> None:
    for path in ("/v1/whoami", "/v1/tokens", "/v1/roles", "/v1/users"):
        assert client.get(path).status_code == 401
