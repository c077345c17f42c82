"""``/v1/users``, ``/v1/roles``, ``/v1/tokens`` and ``/v1/whoami``: people and their tokens.

Managing users and roles needs ``user:manage``; a user's own tokens need only an
authenticated caller (routes marked ``authenticated``, see `authenticated`), other
users' tokens ``token:manage`` (checked by `edgefleet.fleet.people` once it knows the
owner). The rules are `edgefleet.fleet.governance.tokens`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from edgefleet.fleet import people
from edgefleet.fleet.api.deps import (
    REQUIRED_PERMISSION,
    Caller,
    SessionDep,
    SettingsDep,
    current_caller,
    require,
)
from edgefleet.fleet.governance.grants import MAX_GRANTS, Grant, RoleName
from edgefleet.fleet.governance.permissions import Permission
from edgefleet.fleet.governance.tokens import MAX_TTL, ExpiryPolicy
from edgefleet.fleet.people import (
    MAX_DESCRIPTION,
    MAX_LABEL,
    MAX_NAME,
    USER_NAME_PATTERN,
    RoleView,
    TokenCreated,
    TokenView,
    UserKind,
    UserView,
)

router = APIRouter(prefix="/v1", tags=["people"])

# What a self-service route declares: any authenticated caller, no permission.
AUTHENTICATED = "authenticated"


def authenticated(caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
    """The caller, whoever it is; raises `AuthenticationError` (401) without a valid
    credential. Declared ``authenticated`` for the OpenAPI document and its test."""
    return caller


setattr(authenticated, REQUIRED_PERMISSION, AUTHENTICATED)

UserManager = Annotated[Caller, Depends(require(Permission.USER_MANAGE))]
TokenManager = Annotated[Caller, Depends(require(Permission.TOKEN_MANAGE))]
Authenticated = Annotated[Caller, Depends(authenticated)]
UserRef = Annotated[str, Path(min_length=1, max_length=MAX_NAME, description="id or name")]
RoleRef = Annotated[str, Path(min_length=1, max_length=64)]
TokenRef = Annotated[str, Path(min_length=1, max_length=32, description="prefix or id")]
PermissionName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
UserName = Annotated[str, StringConstraints(pattern=USER_NAME_PATTERN)]
MAX_PERMISSIONS = 64


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserCreate(_Body):
    """A user (a person) or a service account (a CI pipeline, say)."""

    name: UserName
    kind: UserKind = UserKind.USER
    grants: list[Grant] = Field(default_factory=list, max_length=MAX_GRANTS)


class UserPatch(_Body):
    """Changes to a user; what is left out stays as it is."""

    grants: list[Grant] | None = Field(default=None, max_length=MAX_GRANTS)
    disabled: bool | None = Field(default=None, description="true blocks all its tokens at once")


class RoleCreate(_Body):
    name: RoleName
    permissions: list[PermissionName] = Field(max_length=MAX_PERMISSIONS)
    description: str = Field(default="", max_length=MAX_DESCRIPTION)


class RoleUpdate(_Body):
    permissions: list[PermissionName] = Field(max_length=MAX_PERMISSIONS)
    description: str = Field(default="", max_length=MAX_DESCRIPTION)


class TokenCreate(_Body):
    """A new API token; its plaintext is in the answer, once."""

    label: str = Field(min_length=1, max_length=MAX_LABEL)
    owner: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NAME,
        description="user id or name; none: the caller (another user needs token:manage)",
    )
    permissions: list[PermissionName] | None = Field(
        default=None,
        max_length=MAX_PERMISSIONS,
        description="narrow the token to these; none: all the owner's",
    )
    expires_in_days: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TTL.days,
        description="none: 90 days; at most 2 years",
    )
    never_expires: bool = Field(
        default=False, description="only where api_token_allow_no_expiry is set"
    )


class UserPage(BaseModel):
    items: list[UserView] = Field(max_length=100_000)


class RolePage(BaseModel):
    items: list[RoleView] = Field(max_length=10_000)


class TokenPage(BaseModel):
    items: list[TokenView] = Field(max_length=100_000)


class GrantView(BaseModel):
    role: str = Field(max_length=64)
    permissions: list[str] = Field(max_length=len(Permission))
    device_tags: list[str] | None = Field(default=None, max_length=64)
    model_names: list[str] | None = Field(default=None, max_length=64)


class WhoAmI(BaseModel):
    """The principal the caller acts as."""

    kind: str = Field(max_length=16)
    id: str = Field(max_length=200)
    name: str = Field(max_length=200)
    token_prefix: str | None = Field(default=None, max_length=32)
    permissions: list[str] = Field(max_length=len(Permission))
    grants: list[GrantView] = Field(max_length=MAX_GRANTS * 4)


@router.get("/whoami", response_model=WhoAmI)
def whoami(caller: Authenticated) -> WhoAmI:
    """Who the bearer credential is, and what it may do (a token's narrowing applied)."""
    return WhoAmI.model_validate(people.whoami(caller.principal))


@router.get("/users", response_model=UserPage)
def list_users(session: SessionDep, _caller: UserManager) -> UserPage:
    return UserPage(items=people.list_users(session))


@router.post("/users", response_model=UserView, status_code=201)
def create_user(session: SessionDep, caller: UserManager, body: UserCreate) -> UserView:
    """Add a user or service account; 409 for a taken name, 422 naming an unknown role."""
    return people.create_user(session, caller, name=body.name, kind=body.kind, grants=body.grants)


@router.get("/users/{ref}", response_model=UserView)
def get_user(session: SessionDep, _caller: UserManager, ref: UserRef) -> UserView:
    return people.get_user(session, ref)


@router.patch("/users/{ref}", response_model=UserView)
def update_user(
    session: SessionDep, caller: UserManager, ref: UserRef, body: UserPatch
) -> UserView:
    """Change grants or disable/enable; 409 if no active ``user:manage`` holder would
    remain, 422 naming an unknown role."""
    return people.update_user(session, caller, ref, grants=body.grants, disabled=body.disabled)


@router.get("/users/{ref}/tokens", response_model=TokenPage)
def list_user_tokens(session: SessionDep, caller: TokenManager, ref: UserRef) -> TokenPage:
    """One user's tokens (for an admin; your own are at ``GET /v1/tokens``)."""
    return TokenPage(items=people.list_tokens(session, caller.principal, owner=ref))


@router.get("/roles", response_model=RolePage)
def list_roles(session: SessionDep, _caller: Authenticated) -> RolePage:
    """Built-in and custom roles with their permissions (anyone may read the table)."""
    return RolePage(items=people.list_roles(session))


@router.post("/roles", response_model=RoleView, status_code=201)
def create_role(session: SessionDep, caller: UserManager, body: RoleCreate) -> RoleView:
    """Add a custom role; 409 for a built-in or taken name, 422 naming an unknown permission."""
    return people.create_role(
        session, caller, name=body.name, permissions=body.permissions, description=body.description
    )


@router.put("/roles/{name}", response_model=RoleView)
def update_role(
    session: SessionDep, caller: UserManager, name: RoleRef, body: RoleUpdate
) -> RoleView:
    return people.update_role(
        session, caller, name, permissions=body.permissions, description=body.description
    )


@router.delete("/roles/{name}", status_code=204)
def delete_role(session: SessionDep, caller: UserManager, name: RoleRef) -> Response:
    """Delete a custom role; 409 while it is granted to anyone."""
    people.delete_role(session, caller, name)
    return Response(status_code=204)


@router.get("/tokens", response_model=TokenPage)
def list_tokens(
    session: SessionDep,
    caller: Authenticated,
    owner: Annotated[str | None, Query(min_length=1, max_length=MAX_NAME)] = None,
) -> TokenPage:
    """Your own tokens; with ``token:manage`` everyone's (or ``owner``'s). Never a secret
    or a hash."""
    return TokenPage(items=people.list_tokens(session, caller.principal, owner=owner))


@router.post("/tokens", response_model=TokenCreated, status_code=201)
def create_token(
    session: SessionDep, settings: SettingsDep, caller: Authenticated, body: TokenCreate
) -> TokenCreated:
    """Make a token (yours, or with ``token:manage`` another user's); the answer shows its
    plaintext once. 403 names a permission wider than the owner's or yours."""
    return people.create_token(
        session,
        caller,
        label=body.label,
        owner=body.owner,
        permissions=body.permissions,
        expires_in=None if body.expires_in_days is None else timedelta(days=body.expires_in_days),
        never_expires=body.never_expires,
        policy=ExpiryPolicy(allow_no_expiry=settings.api_token_allow_no_expiry),
    )


@router.delete("/tokens/{ref}", response_model=TokenView)
def revoke_token(session: SessionDep, caller: Authenticated, ref: TokenRef) -> TokenView:
    """Revoke a token at once; 409 if it is the last live token holding ``user:manage``."""
    return people.revoke_token(session, caller, ref)
