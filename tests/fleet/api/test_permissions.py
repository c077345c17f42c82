"""Every route declares a permission, and every role gets exactly what its bundle allows.

The OpenAPI walk fails for a route without ``x-required-permission``; the matrix runs
each built-in role (and a user with no grants) against every operation of the real app
and checks that it is refused with a 403 naming the permission exactly when the role's
bundle lacks it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from edgefleet.fleet.api.app import create_app
from edgefleet.fleet.governance.permissions import BUILTIN_ROLES, Permission
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.engine import make_engine
from edgefleet.fleet.store.migrate import create_all
from tests.support.people import add_token, add_user

# Routes that need no permission at all, and why.
PUBLIC_ROUTES = {
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    # A device has no API token before it enrolls: the one-time enrollment token in the
    # body is the credential (and the current certificate plus a CSR signed by its key,
    # for a renewal). The CA certificate and the CRL are public by nature.
    ("POST", "/v1/enroll"),
    ("POST", "/v1/identity/renew"),
    ("GET", "/v1/identity/ca.pem"),
    ("GET", "/v1/identity/crl"),
}
# Declared values that are not a permission of the table.
NON_PERMISSIONS = {"none", "authenticated"}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('perm') / 'fleet.db'}")
    create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def client(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    data = tmp_path_factory.mktemp("perm-data")
    settings = FleetSettings(data_dir=Path(data), database_url=str(engine.url))
    with TestClient(create_app(settings, engine=engine)) as client:
        yield client


@pytest.fixture(scope="module")
def document(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def test_every_route_declares_a_permission(document: dict[str, Any]) -> None:
    known = {p.value for p in Permission}
    missing = []
    for method, path, operation in _operations(document):
        declared = operation.get("x-required-permission")
        if declared is None:
            missing.append(f"{method} {path}: no permission declared")
        elif declared == "none" and (method, path) not in PUBLIC_ROUTES:
            missing.append(f"{method} {path}: public, but not on the public list")
        elif declared not in known | NON_PERMISSIONS:
            missing.append(f"{method} {path}: declares unknown permission {declared!r}")
    assert not missing, "\n".join(missing)
    assert len(list(_operations(document))) > 30


def test_every_permission_is_needed_by_some_route(document: dict[str, Any]) -> None:
    used = {op.get("x-required-permission") for _, _, op in _operations(document)}
    unused = {p.value for p in Permission} - used
    assert not unused


def _fill(path: str) -> str:
    # One value that matches every path parameter's pattern (ids, names, versions).
    return re.sub(r"\{[^}]+\}", "x1", path)


ROLES = [*BUILTIN_ROLES, "nobody"]


@pytest.fixture(scope="module")
def tokens(engine: Engine) -> dict[str, str]:
    out = {}
    for role in ROLES:
        user = add_user(engine, f"matrix-{role}", role=None if role == "nobody" else role)
        out[role] = add_token(engine, user)
    return out


@pytest.mark.parametrize("role", ROLES)
def test_each_role_against_every_route(
    client: TestClient, document: dict[str, Any], tokens: dict[str, str], role: str
) -> None:
    held = BUILTIN_ROLES.get(role, frozenset())
    wrong = []
    for method, path, operation in _operations(document):
        declared = operation["x-required-permission"]
        kwargs: dict[str, Any] = {"headers": {"Authorization": f"Bearer {tokens[role]}"}}
        if method in ("POST", "PUT", "PATCH"):
            kwargs["json"] = {}
        response = client.request(method, _fill(path), **kwargs)
        allowed = declared in NON_PERMISSIONS or Permission(declared) in held
        refused = response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
        if allowed and refused:
            wrong.append(f"{method} {path}: {role} refused: {response.text[:200]}")
        elif not allowed and not refused:
            wrong.append(f"{method} {path}: {role} let through ({response.status_code})")
        elif refused and declared not in response.json()["error"]["message"]:
            wrong.append(f"{method} {path}: the 403 does not name {declared}")
    assert not wrong, "\n".join(wrong)


def test_a_refusal_is_audited(client: TestClient, tokens: dict[str, str], engine: Engine) -> None:
    from sqlmodel import Session, col, select

    from edgefleet.fleet.store.governance_tables import AuditRow

    response = client.put(
        "/v1/drift/thresholds/wine",
        json={},
        headers={"Authorization": f"Bearer {tokens['viewer']}"},
    )
    assert response.status_code == 403
    assert "drift:manage" in response.json()["error"]["message"]
    with Session(engine) as session:
        row = session.exec(
            select(AuditRow)
            .where(col(AuditRow.outcome) == "denied")
            .order_by(col(AuditRow.seq).desc())
        ).first()
    assert row is not None
    assert row.actor_name == "matrix-viewer"
    assert row.object_id == "PUT /v1/drift/thresholds/wine"
    assert row.after == {"missing_permission": "drift:manage"}
    assert row.request_id == response.headers["x-request-id"]
