"""The token rules: never wider than the owner or the creating credential; expiry bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from edgefleet.fleet.errors import InvalidRequestError, PermissionDeniedError
from edgefleet.fleet.governance.grants import Grant, ResolvedGrant, narrow, resolve
from edgefleet.fleet.governance.permissions import BUILTIN_ROLES, Permission
from edgefleet.fleet.governance.principal import Principal, PrincipalKind
from edgefleet.fleet.governance.tokens import (
    DEFAULT_TTL,
    MAX_TTL,
    ExpiryPolicy,
    check_token_creation,
    first_uncovered,
    lockout_refusal,
    token_expiry,
    token_grants,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _grants(*grants: Grant) -> tuple[ResolvedGrant, ...]:
    return resolve(grants, {})


def _user(
    *grants: Grant,
    id: str = "u1",
    kind: PrincipalKind = PrincipalKind.USER,
    narrowed: frozenset[Permission] | None = None,
) -> Principal:
    return Principal(kind=kind, id=id, name=id, grants=narrow(_grants(*grants), narrowed))


def test_a_token_expires_after_the_default_unless_told() -> None:
    assert token_expiry(NOW, expires_in=None) == NOW + DEFAULT_TTL
    assert token_expiry(NOW, expires_in=timedelta(days=7)) == NOW + timedelta(days=7)
    assert token_expiry(NOW, expires_in=MAX_TTL) == NOW + MAX_TTL


@pytest.mark.parametrize("life", [timedelta(0), timedelta(days=-1), MAX_TTL + timedelta(days=1)])
def test_an_expiry_out_of_bounds_is_refused(life: timedelta) -> None:
    with pytest.raises(InvalidRequestError, match=r"expiry must be in the future|at most 730"):
        token_expiry(NOW, expires_in=life)


def test_a_token_that_never_expires_needs_the_setting() -> None:
    with pytest.raises(InvalidRequestError, match="api_token_allow_no_expiry"):
        token_expiry(NOW, expires_in=None, never=True)
    assert (
        token_expiry(NOW, expires_in=None, never=True, policy=ExpiryPolicy(allow_no_expiry=True))
        is None
    )
    with pytest.raises(InvalidRequestError, match="either never expires"):
        token_expiry(
            NOW, expires_in=timedelta(days=1), never=True, policy=ExpiryPolicy(allow_no_expiry=True)
        )


def test_a_token_narrows_its_owner_and_names_what_it_cannot_widen() -> None:
    owner = _grants(Grant(role="viewer"))
    assert token_grants(owner, None) == owner
    narrowed = token_grants(owner, frozenset({Permission.DEVICE_READ}))
    assert narrowed[0].permissions == {Permission.DEVICE_READ}
    with pytest.raises(PermissionDeniedError, match="does not hold rollout:create") as e:
        token_grants(owner, frozenset({Permission.DEVICE_READ, Permission.ROLLOUT_CREATE}))
    assert e.value.permission == Permission.ROLLOUT_CREATE


def test_anyone_may_make_their_own_token() -> None:
    viewer = _user(Grant(role="viewer"))
    check_token_creation(viewer, owner_id="u1", owner_grants=viewer.grants, requested=None)
    nobody = _user()
    check_token_creation(nobody, owner_id="u1", owner_grants=(), requested=None)


def test_a_narrowed_token_cannot_mint_a_wider_one_of_its_owner() -> None:
    owner = _grants(Grant(role="operator"))
    ci = _user(Grant(role="operator"), narrowed=frozenset({Permission.MODEL_UPLOAD}))
    with pytest.raises(PermissionDeniedError, match="beyond what") as e:
        check_token_creation(ci, owner_id="u1", owner_grants=owner, requested=None)
    assert e.value.permission is not None
    check_token_creation(
        ci, owner_id="u1", owner_grants=owner, requested=frozenset({Permission.MODEL_UPLOAD})
    )


def test_another_users_token_needs_token_manage() -> None:
    operator = _user(Grant(role="operator"))
    with pytest.raises(PermissionDeniedError, match="token:manage"):
        check_token_creation(
            operator, owner_id="u2", owner_grants=_grants(Grant(role="viewer")), requested=None
        )


def test_a_token_manager_cannot_mint_an_admins_token() -> None:
    role = BUILTIN_ROLES["viewer"] | {Permission.TOKEN_MANAGE}
    manager = Principal(
        kind=PrincipalKind.USER,
        id="m",
        name="m",
        grants=resolve([Grant(role="keeper")], {"keeper": role}),
    )
    admin = _grants(Grant(role="admin"))
    with pytest.raises(PermissionDeniedError, match="beyond what"):
        check_token_creation(manager, owner_id="root", owner_grants=admin, requested=None)
    # Narrowed to what the manager holds itself, it may.
    check_token_creation(
        manager, owner_id="root", owner_grants=admin, requested=frozenset({Permission.DEVICE_READ})
    )


def test_a_user_manager_may_mint_any_token_of_another_user() -> None:
    admin = _user(Grant(role="admin"))
    check_token_creation(
        admin, owner_id="u2", owner_grants=_grants(Grant(role="admin")), requested=None
    )


def test_scopes_count_a_site_a_operator_cannot_mint_an_everywhere_token() -> None:
    site_a = _grants(Grant(role="operator", device_tags=("site-a",)))
    everywhere = _grants(Grant(role="operator"))
    assert first_uncovered(site_a, everywhere) is not None
    assert first_uncovered(everywhere, site_a) is None
    site_ab = _grants(Grant(role="operator", device_tags=("site-a", "site-b")))
    assert first_uncovered(site_ab, site_a) is None
    assert first_uncovered(site_a, site_ab) is not None
    models = _grants(Grant(role="operator", model_names=("wine",)))
    assert first_uncovered(models, everywhere) is not None


def test_an_oidc_principal_owns_no_tokens_but_may_make_a_service_accounts() -> None:
    oidc = _user(Grant(role="admin"), id="sso-1", kind=PrincipalKind.OIDC)
    with pytest.raises(InvalidRequestError, match="owns no API tokens"):
        check_token_creation(oidc, owner_id="sso-1", owner_grants=oidc.grants, requested=None)
    check_token_creation(
        oidc, owner_id="svc", owner_grants=_grants(Grant(role="operator")), requested=None
    )


def test_losing_the_last_user_manager_is_refused() -> None:
    assert lockout_refusal({"a"}, set(), "disabling 'a'") is not None
    assert "disabling 'a'" in (lockout_refusal({"a"}, set(), "disabling 'a'") or "")
    assert lockout_refusal({"a", "b"}, {"b"}, "x") is None
    assert lockout_refusal(set(), set(), "x") is None  # nothing to protect
