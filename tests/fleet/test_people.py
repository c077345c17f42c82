"""People, roles and tokens in the database (SQLite and PostgreSQL): each change is
audited in its own transaction, secrets never stored, and the last admin is kept."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from edgefleet.fleet import people
from edgefleet.fleet.api.auth import authenticate, hash_token, user_principal
from edgefleet.fleet.api.deps import Caller
from edgefleet.fleet.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from edgefleet.fleet.governance.grants import Grant
from edgefleet.fleet.people import UserKind
from edgefleet.fleet.registry import ConflictError
from edgefleet.fleet.store.governance_tables import AuditRow, TokenRow, UserRow
from tests.support.people import add_token, add_user


def _caller(engine: Engine, user_id: str) -> Caller:
    with Session(engine) as session:
        user = session.get(UserRow, user_id)
        assert user is not None
        return Caller(principal=user_principal(session, user))


def _audit(engine: Engine) -> list[AuditRow]:
    with Session(engine) as session:
        return list(session.exec(select(AuditRow).order_by(col(AuditRow.seq))).all())


@pytest.fixture
def admin(engine: Engine) -> Caller:
    user_id = add_user(engine, "root", role="admin")
    add_token(engine, user_id)
    return _caller(engine, user_id)


def test_a_user_is_created_once_and_audited(engine: Engine, admin: Caller) -> None:
    with Session(engine) as session:
        made = people.create_user(
            session, admin, name="olive", kind=UserKind.USER, grants=[Grant(role="viewer")]
        )
    assert made.grants == [Grant(role="viewer")]
    with Session(engine) as session, pytest.raises(ConflictError, match="exists already"):
        people.create_user(session, admin, name="olive", kind=UserKind.SERVICE, grants=[])
    entry = _audit(engine)[-1]
    assert (entry.action, entry.object_id, entry.actor_name) == ("user.create", made.id, "root")
    assert entry.after is not None
    assert entry.after["grants"] == [{"role": "viewer"}]
    with Session(engine) as session:
        assert people.get_user(session, "olive").id == made.id
        assert people.get_user(session, made.id).name == "olive"
        with pytest.raises(NotFoundError, match="no user 'nemo'"):
            people.get_user(session, "nemo")


def test_an_unknown_role_is_named(engine: Engine, admin: Caller) -> None:
    with (
        Session(engine) as session,
        pytest.raises(InvalidRequestError, match="unknown role 'pilot'"),
    ):
        people.create_user(
            session, admin, name="p", kind=UserKind.USER, grants=[Grant(role="pilot")]
        )
    assert _audit(engine) == []


def test_custom_roles_refuse_builtin_names_and_unknown_permissions(
    engine: Engine, admin: Caller
) -> None:
    with Session(engine) as session:
        with pytest.raises(ConflictError, match="built-in"):
            people.create_role(session, admin, name="admin", permissions=[], description="")
        with pytest.raises(InvalidRequestError, match="unknown permission 'device:fly'"):
            people.create_role(
                session, admin, name="pilot", permissions=["device:fly"], description=""
            )
        role = people.create_role(
            session, admin, name="ci", permissions=["model:upload"], description="pipelines"
        )
        assert role.permissions == ["model:upload"]
        people.update_role(
            session, admin, "ci", permissions=["model:upload", "model:read"], description=""
        )
        people.create_user(
            session, admin, name="ci-bot", kind=UserKind.SERVICE, grants=[Grant(role="ci")]
        )
        with pytest.raises(ConflictError, match="granted to ci-bot"):
            people.delete_role(session, admin, "ci")
        with pytest.raises(ConflictError, match="built-in"):
            people.delete_role(session, admin, "viewer")
    actions = [e.action for e in _audit(engine)]
    assert actions == ["role.create", "role.update", "user.create"]


def test_a_token_is_shown_once_stored_hashed_and_audited_without_secrets(
    engine: Engine, admin: Caller
) -> None:
    with Session(engine) as session:
        made = people.create_token(session, admin, label="laptop")
    assert made.token.startswith(made.prefix + "_")
    with Session(engine) as session:
        row = session.exec(select(TokenRow).where(col(TokenRow.prefix) == made.prefix)).one()
        assert row.token_sha256 == hash_token(made.token)
        assert made.token not in " ".join(str(v) for v in row.model_dump().values())
        assert row.expires_at is not None
        assert timedelta(days=89) < row.expires_at - row.created_at <= timedelta(days=90)
        listed = people.list_tokens(session, admin.principal)
    assert made.prefix in [t.prefix for t in listed]
    assert all("token" not in t.model_dump() for t in listed)
    entry = _audit(engine)[-1]
    assert entry.action == "token.create"
    assert entry.object_id == made.prefix
    dumped = str(entry.before) + str(entry.after)
    assert made.token not in dumped
    assert row.token_sha256 not in dumped


def test_revoking_takes_effect_at_once(engine: Engine, admin: Caller) -> None:
    with Session(engine) as session:
        made = people.create_token(session, admin, label="spare")
    with Session(engine) as session:
        authenticate(session, made.token)
        people.revoke_token(session, admin, made.prefix)
    with Session(engine) as session, pytest.raises(AuthenticationError, match="revoked"):
        authenticate(session, made.token)
    with Session(engine) as session, pytest.raises(ConflictError, match="already"):
        people.revoke_token(session, admin, made.id)
    entry = _audit(engine)[-1]
    assert entry.action == "token.revoke"
    assert entry.before is not None
    assert entry.before["revoked_at"] is None
    assert entry.after is not None
    assert entry.after["revoked_at"] is not None


def test_disabling_a_user_blocks_its_tokens_and_enabling_restores_them(
    engine: Engine, admin: Caller
) -> None:
    olive = add_user(engine, "olive", role="operator")
    token = add_token(engine, olive)
    with Session(engine) as session:
        people.update_user(session, admin, "olive", disabled=True)
    with Session(engine) as session, pytest.raises(AuthenticationError, match="disabled"):
        authenticate(session, token)
    with Session(engine) as session:
        people.update_user(session, admin, olive, disabled=False)
        assert authenticate(session, token).name == "olive"
    assert [e.action for e in _audit(engine)] == ["user.disable", "user.enable"]


def test_others_tokens_need_token_manage(engine: Engine, admin: Caller) -> None:
    olive = _caller(engine, add_user(engine, "olive", role="operator"))
    with Session(engine) as session:
        mine = people.create_token(session, olive, label="mine")
        theirs = people.create_token(session, admin, label="root's")
        assert [t.prefix for t in people.list_tokens(session, olive.principal)] == [mine.prefix]
        with pytest.raises(PermissionDeniedError, match="token:manage"):
            people.revoke_token(session, olive, theirs.prefix)
        with pytest.raises(PermissionDeniedError, match="token:manage"):
            people.create_token(session, olive, label="x", owner="root")
        with pytest.raises(PermissionDeniedError, match="token:manage"):
            people.list_tokens(session, olive.principal, owner="root")
        for_olive = people.create_token(
            session, admin, label="given", owner="olive", permissions=["device:read"]
        )
        assert for_olive.owner == "olive"
        with pytest.raises(PermissionDeniedError, match="does not hold audit:read"):
            people.create_token(
                session, admin, label="x", owner="olive", permissions=["audit:read"]
            )


def test_the_last_active_admin_is_kept(engine: Engine, admin: Caller) -> None:
    with Session(engine) as session:
        (only,) = people.list_tokens(session, admin.principal)
        with pytest.raises(ConflictError, match="user:manage"):
            people.revoke_token(session, admin, only.prefix)
    with Session(engine) as session, pytest.raises(ConflictError, match="user:manage"):
        people.update_user(session, admin, "root", disabled=True)
    with Session(engine) as session, pytest.raises(ConflictError, match="user:manage"):
        people.update_user(session, admin, "root", grants=[Grant(role="approver")])
    with Session(engine) as session:
        assert people.active_admins(session) == {admin.principal.id}
        assert not session.get(UserRow, admin.principal.id).disabled  # type: ignore[union-attr]
    # With a second admin holding a live token, the first can go.
    second = add_user(engine, "second", role="admin")
    add_token(engine, second)
    with Session(engine) as session:
        people.update_user(session, admin, "root", disabled=True)
        assert people.active_admins(session) == {second}


def test_a_custom_role_change_cannot_strip_the_last_admin(engine: Engine) -> None:
    keeper = add_user(engine, "keeper", role="keepers")
    with Session(engine) as session:
        # The role is made after the grant: seed it directly, then the rules apply.
        from edgefleet.fleet.store.governance_tables import RoleRow

        session.add(RoleRow(name="keepers", permissions=["user:manage", "token:manage"]))
        session.commit()
    add_token(engine, keeper)
    caller = _caller(engine, keeper)
    with Session(engine) as session, pytest.raises(ConflictError, match="user:manage"):
        people.update_role(session, caller, "keepers", permissions=["token:manage"], description="")
