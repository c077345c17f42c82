"""API tokens: format, the bootstrap admin and retiring it, and what authenticate refuses."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from edgefleet.fleet.api.auth import (
    BOOTSTRAP_USER_ID,
    authenticate,
    bootstrap_admin_token,
    hash_token,
    new_token,
    prefix_of,
)
from edgefleet.fleet.api.principals import PrincipalResolver
from edgefleet.fleet.errors import AuthenticationError
from edgefleet.fleet.governance.permissions import Permission
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.engine import make_engine
from edgefleet.fleet.store.governance_tables import AuditRow, TokenRow, UserRow
from edgefleet.fleet.store.migrate import create_all
from edgefleet.shared.messages import utcnow
from tests.support.people import add_token, add_user


@pytest.fixture
def engine(database_url: str) -> Engine:
    engine = make_engine(database_url)
    create_all(engine)
    return engine


def _settings(tmp_path: Path, **values: object) -> FleetSettings:
    return FleetSettings(data_dir=tmp_path, **values)  # type: ignore[arg-type]


def test_a_token_shows_its_prefix_and_stores_only_its_hash(engine: Engine, tmp_path: Path) -> None:
    token, prefix = new_token()
    assert token.startswith(prefix + "_")
    assert prefix.startswith("eft_")
    assert len(prefix) == 16
    assert prefix_of(token) == prefix
    assert prefix_of(prefix + "_with_underscores_in_it") == prefix
    assert prefix_of("a-configured-secret").startswith("cfg_")  # none of its characters
    generated = bootstrap_admin_token(engine, _settings(tmp_path))
    assert generated is not None
    with Session(engine) as session:
        row = session.exec(select(TokenRow)).one()
        assert row.token_sha256 == hash_token(generated)
        assert row.prefix == prefix_of(generated)
        dumped = " ".join(str(v) for v in row.model_dump().values())
        assert generated not in dumped
        principal = authenticate(session, generated)
    assert principal.name == "admin"
    assert principal.permissions() == frozenset(Permission)
    assert bootstrap_admin_token(engine, _settings(tmp_path)) is None  # once only


def test_the_bootstrap_admin_is_made_once_and_stays_retired(engine: Engine, tmp_path: Path) -> None:
    settings = _settings(tmp_path, admin_token="configured-admin-token-0123456789")
    assert bootstrap_admin_token(engine, settings) is None
    with Session(engine) as session:
        assert authenticate(session, "configured-admin-token-0123456789").name == "admin"
        row = session.exec(select(TokenRow)).one()
        row.revoked_at = utcnow()
        session.add(row)
        session.commit()
    bootstrap_admin_token(engine, settings)  # a restart with the same setting
    with Session(engine) as session, pytest.raises(AuthenticationError, match="revoked"):
        authenticate(session, "configured-admin-token-0123456789")
    with Session(engine) as session:
        user = session.get(UserRow, BOOTSTRAP_USER_ID)
        assert user is not None
        user.disabled = True
        session.add(user)
        session.commit()
    # Disabled: a new configured token does not bring it back either.
    bootstrap_admin_token(engine, _settings(tmp_path, admin_token="another-admin-token-012345678"))
    with Session(engine) as session, pytest.raises(AuthenticationError):
        authenticate(session, "another-admin-token-012345678")
    with Session(engine) as session:
        actions = session.exec(select(AuditRow.action).order_by(col(AuditRow.seq))).all()
    assert actions == ["token.create"]


def test_authenticate_refuses_each_bad_token_with_its_reason(engine: Engine) -> None:
    user = add_user(engine, "pat", role="viewer")
    token = add_token(engine, user)
    with Session(engine) as session:
        for bad, reason in [
            (None, "missing bearer token"),
            ("", "missing bearer token"),
            ("eft_000000000000_nope", "matches no API token"),
        ]:
            with pytest.raises(AuthenticationError, match=reason):
                authenticate(session, bad)
        row = session.exec(select(TokenRow).where(col(TokenRow.user_id) == user)).one()
        row.expires_at = utcnow() - timedelta(seconds=1)
        session.add(row)
        session.commit()
        with pytest.raises(AuthenticationError, match="expired"):
            authenticate(session, token)
        row.expires_at = utcnow() + timedelta(days=1)
        session.add(row)
        owner = session.get(UserRow, user)
        assert owner is not None
        owner.disabled = True
        session.add(owner)
        session.commit()
        with pytest.raises(AuthenticationError, match="disabled"):
            authenticate(session, token)


def test_a_token_narrowed_to_some_permissions_holds_only_those(engine: Engine) -> None:
    user = add_user(engine, "ci", role="operator", kind="service")
    token = add_token(engine, user, permissions=["model:read", "model:upload", "user:manage"])
    with Session(engine) as session:
        principal = authenticate(session, token)
    assert principal.permissions() == {Permission.MODEL_READ, Permission.MODEL_UPLOAD}
    assert principal.kind.value == "service"


def test_last_used_is_recorded_at_most_once_a_minute(engine: Engine) -> None:
    token = add_token(engine, add_user(engine, "lu", role="viewer"))
    now = utcnow()
    with Session(engine) as session:
        authenticate(session, token, now=now)
        authenticate(session, token, now=now + timedelta(seconds=30))
        row = session.exec(
            select(TokenRow).where(col(TokenRow.token_sha256) == hash_token(token))
        ).one()
        assert row.last_used_at is not None
        assert abs((row.last_used_at - now).total_seconds()) < 1
        authenticate(session, token, now=now + timedelta(seconds=61))
        session.refresh(row)
        assert row.last_used_at is not None
        assert (row.last_used_at - now).total_seconds() > 60


def test_a_jwt_without_an_oidc_issuer_is_refused_plainly(engine: Engine) -> None:
    resolver = PrincipalResolver(engine)
    with Session(engine) as session, pytest.raises(AuthenticationError, match="no OIDC issuer"):
        resolver.resolve(session, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln")
