"""People, custom roles and API tokens: the stored side of governance.

The rules are pure (`edgefleet.fleet.governance.tokens`); this module loads and stores
`UserRow`, `RoleRow` and `TokenRow`, and appends each change's audit entry in the change's
transaction, last, before the commit. Audit entries carry before and after views that
never include a token's plaintext or hash.

A change that would leave no active holder of ``user:manage`` is made, measured (flushed,
not committed) and rolled back with a `ConflictError` (409). Two replicas retiring the
last two admins at the same instant could both pass that check; one operator doing both
at once is the only way to get there, and the bootstrap ``admin_token`` setting of a
non-disabled bootstrap admin is the way back.

Raises (every public function): `NotFoundError` (404), `ConflictError` (409),
`InvalidRequestError` (422) and `PermissionDeniedError` (403), each naming what is wrong.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from edgefleet.fleet.api.auth import (
    custom_roles,
    hash_token,
    new_token,
    user_principal,
)
from edgefleet.fleet.audit.entry import AuditRecord
from edgefleet.fleet.audit.log import append
from edgefleet.fleet.errors import InvalidRequestError, NotFoundError
from edgefleet.fleet.governance import tokens as rules
from edgefleet.fleet.governance.grants import MAX_GRANTS, Grant, ResolvedGrant, narrow, resolve
from edgefleet.fleet.governance.permissions import BUILTIN_ROLES, Permission, parse_permissions
from edgefleet.fleet.governance.principal import Principal
from edgefleet.fleet.registry import ConflictError
from edgefleet.fleet.store.governance_tables import RoleRow, TokenRow, UserRow
from edgefleet.shared.messages import utcnow

MAX_NAME = 100
MAX_LABEL = 100
MAX_DESCRIPTION = 500
USER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$"
_KNOWN = frozenset(p.value for p in Permission)


class UserKind(StrEnum):
    USER = "user"
    SERVICE = "service"


class Acting(Protocol):
    """Who makes a change, and how its audit record reads (`edgefleet.fleet.api.deps.Caller`)."""

    @property
    def principal(self) -> Principal: ...

    def record(
        self,
        action: str,
        kind: str,
        object_id: str,
        *,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> AuditRecord: ...


class UserView(BaseModel):
    """A user or service account, as the API shows it."""

    id: str = Field(max_length=64)
    name: str = Field(max_length=MAX_NAME)
    kind: UserKind
    grants: list[Grant] = Field(max_length=MAX_GRANTS)
    disabled: bool
    created_at: datetime
    created_by: str | None = Field(default=None, max_length=200)


class RoleView(BaseModel):
    """A role: a named bundle of permissions; built-in ones cannot change."""

    name: str = Field(max_length=64)
    permissions: list[Permission] = Field(max_length=len(Permission))
    description: str = Field(default="", max_length=MAX_DESCRIPTION)
    builtin: bool


class TokenView(BaseModel):
    """An API token without its secret: what lists and the audit log show."""

    id: str = Field(max_length=32)
    prefix: str = Field(max_length=32)
    label: str = Field(max_length=MAX_LABEL)
    owner: str = Field(max_length=MAX_NAME, description="the owner's name")
    owner_id: str = Field(max_length=64)
    permissions: list[Permission] | None = Field(
        default=None, max_length=len(Permission), description="none: all the owner's"
    )
    created_at: datetime
    created_by: str | None = Field(default=None, max_length=200)
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked: bool


class TokenCreated(TokenView):
    """A new token with its plaintext: the only answer that ever shows it."""

    token: str = Field(max_length=200, description="shown once; store it now")


# --- users ---------------------------------------------------------------------------


def find_user(session: Session, ref: str) -> UserRow:
    """The user with id or name ``ref``; raises `NotFoundError`."""
    row = session.get(UserRow, ref)
    if row is None:
        row = session.exec(select(UserRow).where(col(UserRow.name) == ref)).first()
    if row is None:
        raise NotFoundError(f"no user {ref!r}")
    return row


def get_user(session: Session, ref: str) -> UserView:
    """The user with id or name ``ref``; raises `NotFoundError`."""
    return _user_view(find_user(session, ref))


def list_users(session: Session) -> list[UserView]:
    return [_user_view(r) for r in session.exec(select(UserRow).order_by(col(UserRow.name)))]


def create_user(
    session: Session, acting: Acting, *, name: str, kind: UserKind, grants: Sequence[Grant]
) -> UserView:
    """Add a user or service account; raises `ConflictError` for a taken name and
    `InvalidRequestError` naming an unknown role."""
    check_roles(session, grants)
    if session.exec(select(UserRow).where(col(UserRow.name) == name)).first() is not None:
        raise ConflictError(f"a user named {name!r} exists already")
    row = UserRow(
        id=f"u-{secrets.token_hex(6)}",
        name=name,
        kind=kind.value,
        grants=[g.model_dump(mode="json", exclude_none=True) for g in grants],
        created_by=acting.principal.describe()[:200],
    )
    session.add(row)
    _flush_or_conflict(session, f"a user named {name!r} exists already")
    append(session, acting.record("user.create", "user", row.id, after=_user_audit(row)))
    session.commit()
    session.refresh(row)
    return _user_view(row)


def update_user(
    session: Session,
    acting: Acting,
    ref: str,
    *,
    grants: Sequence[Grant] | None = None,
    disabled: bool | None = None,
) -> UserView:
    """Change a user's grants and/or disable or enable it. Disabling blocks all its
    tokens at once (`edgefleet.fleet.api.auth.authenticate` checks the owner).

    Raises `NotFoundError`, `InvalidRequestError` (unknown role, nothing to change) and
    `ConflictError` when no active ``user:manage`` holder would remain.
    """
    if grants is None and disabled is None:
        raise InvalidRequestError("nothing to change: give grants and/or disabled")
    row = find_user(session, ref)
    before = _user_audit(row)
    admins_before = active_admins(session)
    if grants is not None:
        check_roles(session, grants)
        row.grants = [g.model_dump(mode="json", exclude_none=True) for g in grants]
    if disabled is not None:
        row.disabled = disabled
    session.add(row)
    after = _user_audit(row)
    if after == before:  # nothing changes: nothing to audit
        session.rollback()
        return _user_view(find_user(session, ref))
    _refuse_lockout(session, admins_before, f"changing user {row.name!r}")
    action = "user.update"
    if grants is None:
        action = "user.disable" if disabled else "user.enable"
    elif disabled is None or before["disabled"] == after["disabled"]:
        action = "user.grant"
    append(session, acting.record(action, "user", row.id, before=before, after=after))
    session.commit()
    session.refresh(row)
    return _user_view(row)


def check_roles(session: Session, grants: Sequence[Grant]) -> None:
    """Raises `InvalidRequestError` naming the first grant of a role that does not exist."""
    if len(grants) > MAX_GRANTS:
        raise InvalidRequestError(f"at most {MAX_GRANTS} grants")
    stored = custom_roles(session)
    for grant in grants:
        if grant.role not in BUILTIN_ROLES and grant.role not in stored:
            known = ", ".join([*BUILTIN_ROLES, *sorted(stored)])
            raise InvalidRequestError(f"unknown role {grant.role!r}; known: {known}")


# --- roles ---------------------------------------------------------------------------


def list_roles(session: Session) -> list[RoleView]:
    """Built-in roles first, then the stored ones by name."""
    out = [
        RoleView(name=name, permissions=sorted(perms), builtin=True)
        for name, perms in BUILTIN_ROLES.items()
    ]
    for row in session.exec(select(RoleRow).order_by(col(RoleRow.name))):
        out.append(_role_view(row))
    return out


def create_role(
    session: Session, acting: Acting, *, name: str, permissions: list[str], description: str
) -> RoleView:
    """Add a custom role; raises `ConflictError` for a built-in or taken name and
    `InvalidRequestError` naming an unknown permission."""
    parsed = _parse(permissions)
    if name in BUILTIN_ROLES:
        raise ConflictError(f"{name!r} is a built-in role; choose another name")
    if session.get(RoleRow, name) is not None:
        raise ConflictError(f"a role named {name!r} exists already")
    row = RoleRow(name=name, permissions=sorted(p.value for p in parsed), description=description)
    session.add(row)
    _flush_or_conflict(session, f"a role named {name!r} exists already")
    append(session, acting.record("role.create", "role", name, after=_role_audit(row)))
    session.commit()
    return _role_view(row)


def update_role(
    session: Session, acting: Acting, name: str, *, permissions: list[str], description: str
) -> RoleView:
    """Replace a custom role's permissions and description; raises `ConflictError` for a
    built-in role or a change that leaves no active ``user:manage`` holder,
    `NotFoundError` and `InvalidRequestError` (unknown permission)."""
    parsed = _parse(permissions)
    row = _custom_role(session, name)
    before = _role_audit(row)
    admins_before = active_admins(session)
    row.permissions = sorted(p.value for p in parsed)
    row.description = description
    session.add(row)
    _refuse_lockout(session, admins_before, f"changing role {name!r}")
    append(
        session,
        acting.record("role.update", "role", name, before=before, after=_role_audit(row)),
    )
    session.commit()
    return _role_view(row)


def delete_role(session: Session, acting: Acting, name: str) -> None:
    """Delete a custom role nobody holds; raises `NotFoundError` and `ConflictError` (a
    built-in role, or one still granted: naming who holds it)."""
    row = _custom_role(session, name)
    holders = [
        u.name
        for u in session.exec(select(UserRow))
        if any(g.get("role") == name for g in u.grants)
    ]
    if holders:
        raise ConflictError(
            f"role {name!r} is granted to {', '.join(sorted(holders)[:10])}; take those"
            " grants away first"
        )
    before = _role_audit(row)
    session.delete(row)
    append(session, acting.record("role.delete", "role", name, before=before))
    session.commit()


def _custom_role(session: Session, name: str) -> RoleRow:
    if name in BUILTIN_ROLES:
        raise ConflictError(f"{name!r} is a built-in role and cannot change")
    row = session.get(RoleRow, name)
    if row is None:
        raise NotFoundError(f"no role {name!r}")
    return row


def _parse(permissions: list[str]) -> frozenset[Permission]:
    try:
        return parse_permissions(permissions)
    except ValueError as e:
        raise InvalidRequestError(str(e)) from None


# --- tokens --------------------------------------------------------------------------


def find_token(session: Session, ref: str) -> TokenRow:
    """The token with prefix or id ``ref``; raises `NotFoundError`."""
    row = session.exec(select(TokenRow).where(col(TokenRow.prefix) == ref)).first()
    if row is None:
        row = session.get(TokenRow, ref)
    if row is None:
        raise NotFoundError(f"no token {ref!r}")
    return row


def list_tokens(
    session: Session, principal: Principal, *, owner: str | None = None
) -> list[TokenView]:
    """The caller's own tokens; with ``token:manage`` everyone's (or ``owner``'s).

    Raises `PermissionDeniedError` (``token:manage``) for another owner without it, and
    `NotFoundError` for an unknown owner.
    """
    query = select(TokenRow).order_by(col(TokenRow.created_at))
    if owner is not None:
        user = find_user(session, owner)
        if user.id != principal.id:
            principal.require(Permission.TOKEN_MANAGE, what="another user's tokens")
        query = query.where(col(TokenRow.user_id) == user.id)
    elif not principal.has(Permission.TOKEN_MANAGE):
        query = query.where(col(TokenRow.user_id) == principal.id)
    names = {u.id: u.name for u in session.exec(select(UserRow))}
    return [_token_view(r, names.get(r.user_id, r.user_id)) for r in session.exec(query)]


def create_token(
    session: Session,
    acting: Acting,
    *,
    label: str,
    owner: str | None = None,
    permissions: list[str] | None = None,
    expires_in: timedelta | None = None,
    never_expires: bool = False,
    policy: rules.ExpiryPolicy = rules.ExpiryPolicy(),  # noqa: B008  (frozen)
) -> TokenCreated:
    """Make a token of ``owner`` (default: the caller) and return it with its plaintext,
    the one time it is shown; only its sha256 is stored.

    Raises `NotFoundError` (owner), `ConflictError` (a disabled owner),
    `PermissionDeniedError` (``token:manage`` for another user's token, or a permission
    wider than the owner's or the caller's, named) and `InvalidRequestError` (expiry out
    of bounds, unknown permission, an OIDC caller).
    """
    creator = acting.principal
    if owner is None and creator.kind not in rules.OWNER_KINDS:
        raise InvalidRequestError(rules.not_an_owner(creator))
    user = find_user(session, owner if owner is not None else creator.id)
    if user.disabled:
        raise ConflictError(f"user {user.name!r} is disabled; enable it first")
    requested = None if permissions is None else _parse(permissions)
    rules.check_token_creation(
        creator,
        owner_id=user.id,
        owner_grants=user_principal(session, user).grants,
        requested=requested,
    )
    now = utcnow()
    expires_at = rules.token_expiry(now, expires_in=expires_in, never=never_expires, policy=policy)
    plaintext, prefix = _fresh_token(session)
    row = TokenRow(
        id=secrets.token_hex(8),
        prefix=prefix,
        token_sha256=hash_token(plaintext),
        user_id=user.id,
        label=label,
        permissions=None if requested is None else sorted(p.value for p in requested),
        created_at=now,
        created_by=creator.describe()[:200],
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    append(
        session,
        acting.record("token.create", "token", prefix, after=_token_audit(row, user.name)),
    )
    session.commit()
    session.refresh(row)
    return TokenCreated(**_token_view(row, user.name).model_dump(), token=plaintext)


def _fresh_token(session: Session) -> tuple[str, str]:
    # The visible prefix has only 32 random bits and is unique: with tens of thousands of
    # tokens a collision is likely enough to be worth a retry instead of a 500.
    for _ in range(8):
        plaintext, prefix = new_token()
        if session.exec(select(TokenRow).where(col(TokenRow.prefix) == prefix)).first() is None:
            return plaintext, prefix
    raise ConflictError("could not find an unused token prefix; try again")


def revoke_token(session: Session, acting: Acting, ref: str) -> TokenView:
    """Revoke a token at once (its next request answers 401).

    Raises `NotFoundError`, `PermissionDeniedError` (``token:manage`` for another user's
    token) and `ConflictError` (already revoked, or it is the last live token reaching
    ``user:manage``).
    """
    row = find_token(session, ref)
    principal = acting.principal
    if row.user_id != principal.id:
        principal.require(Permission.TOKEN_MANAGE, what="another user's tokens")
    if row.revoked_at is not None:
        raise ConflictError(f"token {row.prefix} was revoked already")
    owner = session.get(UserRow, row.user_id)
    owner_name = owner.name if owner else row.user_id
    before = _token_audit(row, owner_name)
    admins_before = active_admins(session)
    row.revoked_at = utcnow()
    session.add(row)
    _refuse_lockout(session, admins_before, f"revoking token {row.prefix}")
    append(
        session,
        acting.record(
            "token.revoke", "token", row.prefix, before=before, after=_token_audit(row, owner_name)
        ),
    )
    session.commit()
    session.refresh(row)
    return _token_view(row, owner_name)


# --- the last admin ------------------------------------------------------------------


def active_admins(session: Session, *, now: datetime | None = None) -> set[str]:
    """Ids of enabled users with a live (unrevoked, unexpired) token reaching
    ``user:manage``; reads what ``session`` has flushed."""
    session.flush()
    now = now or utcnow()
    roles = custom_roles(session)
    holders: dict[str, tuple[ResolvedGrant, ...]] = {}
    for user in session.exec(select(UserRow).where(col(UserRow.disabled).is_(False))):
        grants = resolve([Grant.model_validate(g) for g in _readable(user.grants)], roles)
        if rules.reaches_user_manage(grants):
            holders[user.id] = grants
    out: set[str] = set()
    if not holders:
        return out
    live = session.exec(
        select(TokenRow).where(
            col(TokenRow.user_id).in_(list(holders)), col(TokenRow.revoked_at).is_(None)
        )
    )
    for token in live:
        if token.expires_at is not None and token.expires_at <= now:
            continue
        narrowed = narrow(
            holders[token.user_id],
            None
            if token.permissions is None
            else parse_permissions([p for p in token.permissions if p in _KNOWN]),
        )
        if rules.reaches_user_manage(narrowed):
            out.add(token.user_id)
    return out


def _refuse_lockout(session: Session, before: set[str], what: str) -> None:
    reason = rules.lockout_refusal(before, active_admins(session), what)
    if reason is not None:
        session.rollback()
        raise ConflictError(reason)


def _readable(grants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # An unreadable stored grant grants nothing (as in `user_principal`).
    out = []
    for raw in grants:
        try:
            Grant.model_validate(raw)
        except ValueError:
            continue
        out.append(raw)
    return out


def _flush_or_conflict(session: Session, message: str) -> None:
    # Another replica may add the same name between our check and our insert.
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise ConflictError(message) from None


# --- views ---------------------------------------------------------------------------


def _user_view(row: UserRow) -> UserView:
    return UserView(
        id=row.id,
        name=row.name,
        kind=UserKind(row.kind) if row.kind in UserKind._value2member_map_ else UserKind.USER,
        grants=[Grant.model_validate(g) for g in _readable(row.grants)],
        disabled=row.disabled,
        created_at=row.created_at,
        created_by=row.created_by,
    )


def _user_audit(row: UserRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "kind": row.kind,
        "grants": list(row.grants),
        "disabled": row.disabled,
    }


def _role_view(row: RoleRow) -> RoleView:
    return RoleView(
        name=row.name,
        permissions=[Permission(p) for p in row.permissions if p in _KNOWN],
        description=row.description,
        builtin=False,
    )


def _role_audit(row: RoleRow) -> dict[str, Any]:
    return {"permissions": list(row.permissions), "description": row.description}


def _token_view(row: TokenRow, owner_name: str) -> TokenView:
    return TokenView(
        id=row.id,
        prefix=row.prefix,
        label=row.label,
        owner=owner_name,
        owner_id=row.user_id,
        permissions=None
        if row.permissions is None
        else [Permission(p) for p in row.permissions if p in _KNOWN],
        created_at=row.created_at,
        created_by=row.created_by,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
        revoked=row.revoked_at is not None,
    )


def _token_audit(row: TokenRow, owner_name: str) -> dict[str, Any]:
    # Never the plaintext or the hash: the prefix is the token's public name.
    return {
        "owner": owner_name,
        "label": row.label,
        "permissions": row.permissions,
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
    }


def whoami(principal: Principal) -> dict[str, Any]:
    """The caller's principal as JSON: kind, id, name, permissions, grants, token prefix."""
    return {
        "kind": principal.kind.value,
        "id": principal.id,
        "name": principal.name,
        "token_prefix": principal.token_prefix,
        "permissions": sorted(p.value for p in principal.permissions()),
        "grants": [
            {
                "role": g.role,
                "permissions": sorted(p.value for p in g.permissions),
                "device_tags": None if g.device_tags is None else sorted(g.device_tags),
                "model_names": None if g.model_names is None else sorted(g.model_names),
            }
            for g in principal.grants
        ],
    }
