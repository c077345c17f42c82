"""A grant: a role, optionally scoped to device tags and model names.

Scopes narrow what the role's permissions reach: an operator granted ``operator`` on
``device_tags=["site-a"]`` may assign and roll out only to devices carrying ``site-a``
(every device a rollout selects must carry one of the scope's tags), and a grant with
``model_names`` reaches only those models. A scope bounds actions on objects; reads of
lists are not filtered by it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from edgefleet.fleet.governance.permissions import BUILTIN_ROLES, Permission

MAX_GRANTS = 32
MAX_SCOPE_ITEMS = 64
RoleName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
ScopeItem = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class Grant(BaseModel):
    """A role given to a user, optionally only for some device tags or model names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: RoleName
    device_tags: tuple[ScopeItem, ...] | None = Field(
        default=None, max_length=MAX_SCOPE_ITEMS, description="none: every device"
    )
    model_names: tuple[ScopeItem, ...] | None = Field(
        default=None, max_length=MAX_SCOPE_ITEMS, description="none: every model"
    )


@dataclass(frozen=True)
class ResolvedGrant:
    """A grant with its role's permissions looked up."""

    role: str
    permissions: frozenset[Permission]
    device_tags: frozenset[str] | None = None
    model_names: frozenset[str] | None = None

    def reaches(self, *, device_tags: Collection[str] | None, model: str | None) -> bool:
        """Whether this grant's scope covers an object with these tags / this model.

        ``None`` for ``device_tags`` or ``model`` means the object has no such aspect
        (a webhook has no device tags); a scoped grant still reaches it.
        """
        outside_tags = (
            self.device_tags is not None
            and device_tags is not None
            and self.device_tags.isdisjoint(device_tags)
        )
        outside_models = (
            self.model_names is not None and model is not None and model not in self.model_names
        )
        return not (outside_tags or outside_models)


def resolve(
    grants: Collection[Grant], custom_roles: Mapping[str, frozenset[Permission]]
) -> tuple[ResolvedGrant, ...]:
    """Grants with their permissions; an unknown role resolves to no permissions (a
    custom role deleted after it was granted grants nothing, and says so nowhere else)."""
    out: list[ResolvedGrant] = []
    for grant in grants:
        permissions = BUILTIN_ROLES.get(grant.role)
        if permissions is None:
            permissions = custom_roles.get(grant.role, frozenset())
        out.append(
            ResolvedGrant(
                role=grant.role,
                permissions=permissions,
                device_tags=None if grant.device_tags is None else frozenset(grant.device_tags),
                model_names=None if grant.model_names is None else frozenset(grant.model_names),
            )
        )
    return tuple(out)


def narrow(
    grants: tuple[ResolvedGrant, ...], permissions: frozenset[Permission] | None
) -> tuple[ResolvedGrant, ...]:
    """Grants cut down to ``permissions`` (a token's scopes); None leaves them whole."""
    if permissions is None:
        return grants
    return tuple(
        ResolvedGrant(g.role, g.permissions & permissions, g.device_tags, g.model_names)
        for g in grants
    )
