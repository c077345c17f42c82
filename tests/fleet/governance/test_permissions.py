"""The permission table and the built-in roles."""

from __future__ import annotations

import pytest

from edgefleet.fleet.governance.permissions import (
    BUILTIN_ROLES,
    PERMISSION_HELP,
    Permission,
    parse_permissions,
)


def test_each_role_includes_the_one_before_it() -> None:
    viewer, operator, approver, admin = (BUILTIN_ROLES[r] for r in BUILTIN_ROLES)
    assert viewer < operator < approver < admin
    assert admin == frozenset(Permission)


def test_only_approvers_approve_and_only_admins_manage_people() -> None:
    for role, permissions in BUILTIN_ROLES.items():
        approves = {Permission.MODEL_APPROVE, Permission.ROLLOUT_APPROVE} <= permissions
        assert approves == (role in ("approver", "admin"))
        manages = Permission.USER_MANAGE in permissions or Permission.TOKEN_MANAGE in permissions
        assert manages == (role == "admin")


def test_every_permission_is_explained() -> None:
    assert set(PERMISSION_HELP) == set(Permission)


def test_parse_names_the_unknown_permission() -> None:
    assert parse_permissions(["model:read", "rollout:create"]) == {
        Permission.MODEL_READ,
        Permission.ROLLOUT_CREATE,
    }
    with pytest.raises(ValueError, match="'model:steal'"):
        parse_permissions(["model:read", "model:steal"])
