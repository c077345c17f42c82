"""Grants: roles resolved to permissions, scopes, and tokens narrowing them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgefleet.fleet.governance.grants import Grant, ResolvedGrant, narrow, resolve
from edgefleet.fleet.governance.permissions import BUILTIN_ROLES, Permission


def test_resolve_built_in_custom_and_unknown_roles() -> None:
    custom = {"auditor": frozenset({Permission.AUDIT_READ})}
    resolved = resolve(
        [Grant(role="viewer"), Grant(role="auditor"), Grant(role="deleted-role")], custom
    )
    assert [g.permissions for g in resolved] == [
        BUILTIN_ROLES["viewer"],
        custom["auditor"],
        frozenset(),
    ]


SITE_A = ResolvedGrant("operator", frozenset(), frozenset({"site-a"}))
WINE = ResolvedGrant("operator", frozenset(), None, frozenset({"wine"}))


@pytest.mark.parametrize(
    ("grant", "tags", "model", "reaches"),
    [
        (ResolvedGrant("operator", frozenset()), ["site-b"], "wine", True),
        # Site-a scoped: every object with tags must carry site-a.
        (
            SITE_A,
            ["site-a", "x"],
            None,
            True,
        ),
        (SITE_A, ["site-b"], None, False),
        (SITE_A, [], None, False),
        # An object without device tags (a webhook) is not out of a tag scope.
        (SITE_A, None, None, True),
        (WINE, None, "wine", True),
        (WINE, None, "cnn", False),
    ],
)
def test_scopes(
    grant: ResolvedGrant, tags: list[str] | None, model: str | None, reaches: bool
) -> None:
    assert grant.reaches(device_tags=tags, model=model) is reaches


def test_a_token_narrows_but_never_widens() -> None:
    grants = resolve([Grant(role="viewer")], {})
    narrowed = narrow(grants, frozenset({Permission.DEVICE_READ, Permission.USER_MANAGE}))
    assert narrowed[0].permissions == {Permission.DEVICE_READ}
    assert narrow(grants, None) == grants


def test_grants_are_bounded() -> None:
    with pytest.raises(ValidationError):
        Grant(role="Admin!")
    with pytest.raises(ValidationError):
        Grant(role="operator", device_tags=tuple(f"t{i}" for i in range(65)))
    with pytest.raises(ValidationError):
        Grant.model_validate({"role": "operator", "everything": True})
