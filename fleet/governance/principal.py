"""The principal a request acts as, and the permission checks made on it.

A principal is a person or a service: a user of this fleet (by an API token), a user of
the configured OIDC issuer (by a bearer JWT), a device (by the repository device token)
or the fleet itself (``system``, for the orchestrator's decisions). Four-eyes rules
compare ``person``: two tokens of one user are one person.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from edgefleet.fleet.errors import PermissionDeniedError
from edgefleet.fleet.governance.grants import ResolvedGrant
from edgefleet.fleet.governance.permissions import DEVICE_PERMISSIONS, Permission


class PrincipalKind(StrEnum):
    USER = "user"
    SERVICE = "service"
    OIDC = "oidc"
    DEVICE = "device"
    PUBLIC = "public"
    SYSTEM = "system"


@dataclass(frozen=True)
class Principal:
    """Who a request acts as, with the grants it holds."""

    kind: PrincipalKind
    id: str
    name: str
    grants: tuple[ResolvedGrant, ...] = ()
    token_prefix: str | None = None
    token_id: str | None = None
    # Permissions held whatever the grants say (a device's repository access).
    extra: frozenset[Permission] = field(default_factory=frozenset)

    @property
    def person(self) -> str:
        """The identity four-eyes rules compare: the user, not the token."""
        return f"{self.kind.value}:{self.id}"

    def permissions(self) -> frozenset[Permission]:
        """Every permission of any grant, whatever its scope."""
        out = set(self.extra)
        for grant in self.grants:
            out |= grant.permissions
        return frozenset(out)

    def has(self, permission: Permission) -> bool:
        """Whether some grant holds ``permission`` (in some scope)."""
        return permission in self.extra or any(permission in g.permissions for g in self.grants)

    def allows(
        self,
        permission: Permission,
        *,
        device_tags: Collection[str] | None = None,
        model: str | None = None,
    ) -> bool:
        """Whether a grant holding ``permission`` reaches this object."""
        if permission in self.extra:
            return True
        return any(
            permission in g.permissions and g.reaches(device_tags=device_tags, model=model)
            for g in self.grants
        )

    def require(
        self,
        permission: Permission,
        *,
        device_tags: Collection[str] | None = None,
        model: str | None = None,
        what: str = "",
    ) -> None:
        """Raises `PermissionDeniedError` naming ``permission`` unless `allows`."""
        if self.allows(permission, device_tags=device_tags, model=model):
            return
        if not self.has(permission):
            raise PermissionDeniedError(
                f"{self.describe()} lacks permission {permission.value}", permission=permission
            )
        raise PermissionDeniedError(
            f"{self.describe()} holds {permission.value} but not for {what or 'this object'}",
            permission=permission,
        )

    def require_each(
        self, permission: Permission, tagged: Iterable[tuple[str, Collection[str]]]
    ) -> None:
        """Raises `PermissionDeniedError` for the first (name, tags) out of scope."""
        for name, tags in tagged:
            self.require(permission, device_tags=tags, what=f"device {name!r}")

    def describe(self) -> str:
        token = f" (token {self.token_prefix})" if self.token_prefix else ""
        return f"{self.kind.value} {self.name!r}{token}"


SYSTEM = Principal(kind=PrincipalKind.SYSTEM, id="system", name="system")
DEVICE = Principal(
    kind=PrincipalKind.DEVICE, id="device-token", name="device", extra=DEVICE_PERMISSIONS
)
PUBLIC = Principal(kind=PrincipalKind.PUBLIC, id="public", name="public", extra=DEVICE_PERMISSIONS)
