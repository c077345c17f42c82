"""Permission checks on a principal, and the errors that name what is missing."""

from __future__ import annotations

import pytest

from edgefleet.fleet.errors import PermissionDeniedError
from edgefleet.fleet.governance.grants import Grant, resolve
from edgefleet.fleet.governance.permissions import Permission
from edgefleet.fleet.governance.principal import DEVICE, Principal, PrincipalKind


def _principal(*grants: Grant) -> Principal:
    return Principal(
        kind=PrincipalKind.USER,
        id="u1",
        name="olive",
        grants=resolve(grants, {}),
        token_prefix="eft_12345678",
    )


def test_a_missing_permission_is_named() -> None:
    viewer = _principal(Grant(role="viewer"))
    assert viewer.has(Permission.DEVICE_READ)
    with pytest.raises(PermissionDeniedError, match="lacks permission rollout:create") as e:
        viewer.require(Permission.ROLLOUT_CREATE)
    assert e.value.permission == Permission.ROLLOUT_CREATE
    assert "eft_12345678" in str(e.value)


def test_an_operator_of_site_a_cannot_act_on_site_b() -> None:
    operator = _principal(Grant(role="operator", device_tags=("site-a",)))
    operator.require(Permission.ROLLOUT_CREATE, device_tags=["site-a"])
    with pytest.raises(PermissionDeniedError, match="not for device 'b1'"):
        operator.require_each(Permission.ROLLOUT_CREATE, [("a1", ["site-a"]), ("b1", ["site-b"])])


def test_grants_add_up() -> None:
    both = _principal(
        Grant(role="operator", device_tags=("site-a",)),
        Grant(role="viewer"),
        Grant(role="approver", model_names=("wine",)),
    )
    assert both.allows(Permission.DEVICE_READ, device_tags=["site-z"])
    assert both.allows(Permission.MODEL_APPROVE, model="wine")
    assert not both.allows(Permission.MODEL_APPROVE, model="cnn")
    # The approver grant on wine carries operator permissions for any device.
    assert both.allows(Permission.ROLLOUT_CREATE, device_tags=["site-z"], model="wine")
    assert not both.allows(Permission.ROLLOUT_CREATE, device_tags=["site-z"], model="cnn")


def test_two_tokens_of_one_user_are_one_person() -> None:
    laptop = _principal(Grant(role="approver"))
    ci = Principal(kind=PrincipalKind.USER, id="u1", name="olive", token_prefix="eft_87654321")
    assert laptop.person == ci.person
    service = Principal(kind=PrincipalKind.SERVICE, id="u1", name="olive")
    assert service.person != laptop.person


def test_a_device_may_only_read_the_repository() -> None:
    assert DEVICE.permissions() == {Permission.REPOSITORY_READ}
    with pytest.raises(PermissionDeniedError):
        DEVICE.require(Permission.MODEL_READ)
