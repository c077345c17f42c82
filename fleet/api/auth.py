"""API tokens: making them, the bootstrap admin, and resolving a bearer token to a principal.

A token is ``eft_<12 hex>_<43 chars>``: the first part (``eft_`` and 48 random bits,
so prefixes of a large fleet do not collide) is its visible prefix, shown in lists and
the audit log; the whole string is secret. Only sha256(token) is stored. Tokens are
256-bit random strings, so a plain hash (no salt, no slow KDF) is enough: there is no
dictionary to attack.

The bootstrap admin is the user ``admin`` (id ``bootstrap-admin``) with the ``admin``
role, made on the first start with one token (generated and shown once, or
``settings.admin_token``). Disabling the user retires it for good. Revoking its token
retires that token (a restart with the same ``admin_token`` does not revive it), but a
restart with a *different* ``admin_token`` registers that one: the way back in for an
operator who lost every admin token.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import datetime, timedelta

from pydantic import ValidationError
from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from edgefleet.fleet.errors import AuthenticationError
from edgefleet.fleet.governance.grants import Grant, narrow, resolve
from edgefleet.fleet.governance.permissions import Permission, parse_permissions
from edgefleet.fleet.governance.principal import Principal, PrincipalKind
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.governance_tables import RoleRow, TokenRow, UserRow
from edgefleet.shared.messages import utcnow

logger = logging.getLogger(__name__)

TOKEN_SCHEME = "eft_"  # noqa: S105  (the tokens' visible scheme, not a secret)
PREFIX_HEX = 12
BOOTSTRAP_USER_ID = "bootstrap-admin"
BOOTSTRAP_USER_NAME = "admin"
BOOTSTRAP_TOKEN_LABEL = "bootstrap"  # noqa: S105  (a label, not a secret)
# last_used_at is written at most this often per token: a write per request would make
# every read a write.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh token and its visible prefix."""
    prefix = TOKEN_SCHEME + secrets.token_hex(PREFIX_HEX // 2)
    return f"{prefix}_{secrets.token_urlsafe(32)}", prefix


def prefix_of(token: str) -> str:
    """The visible prefix of ``token``: its own for ours, a hash's for a configured one
    (whose characters are all secret)."""
    # The secret part may hold "_" too: the prefix is a fixed length, not a split.
    size = len(TOKEN_SCHEME) + PREFIX_HEX
    head = token[:size]
    if head.startswith(TOKEN_SCHEME) and token[size : size + 1] == "_":
        return head
    return "cfg_" + hash_token(token)[:PREFIX_HEX]


def bootstrap_admin_token(engine: Engine, settings: FleetSettings) -> str | None:
    """Make the bootstrap admin on a first start; return its token only if generated here.

    With ``settings.admin_token`` set, that token is registered for the bootstrap admin
    (once: a revoked one stays revoked). Otherwise the first start generates one and
    returns it once, for the operator to copy; later starts, and a replica that lost the
    race to create it, return None.
    """
    configured = settings.admin_token.get_secret_value() if settings.admin_token else None
    with Session(engine) as session:
        user = session.get(UserRow, BOOTSTRAP_USER_ID)
        if user is None:
            session.add(
                UserRow(
                    id=BOOTSTRAP_USER_ID,
                    name=BOOTSTRAP_USER_NAME,
                    kind=PrincipalKind.USER.value,
                    grants=[Grant(role="admin").model_dump(mode="json")],
                    created_by="bootstrap",
                )
            )
            token, prefix = new_token() if configured is None else (configured, "")
            _add_bootstrap_token(session, token, prefix or prefix_of(token))
            if not _commit_or_lost_race(session):
                return None
            _record_bootstrap(engine, prefix or prefix_of(token))
            if configured is None:
                logger.info("generated the bootstrap admin token (shown once)")
                return token
            return None
        if configured is None or user.disabled:
            return None
        digest = hash_token(configured)
        if session.exec(select(TokenRow).where(col(TokenRow.token_sha256) == digest)).first():
            return None
        # The operator configured a new admin token for a bootstrap admin still in
        # service (the old one was lost): register it beside the others.
        _add_bootstrap_token(session, configured, prefix_of(configured))
        if _commit_or_lost_race(session):
            _record_bootstrap(engine, prefix_of(configured))
        return None


def _add_bootstrap_token(session: Session, token: str, prefix: str) -> None:
    session.add(
        TokenRow(
            id=secrets.token_hex(8),
            prefix=prefix,
            token_sha256=hash_token(token),
            user_id=BOOTSTRAP_USER_ID,
            label=BOOTSTRAP_TOKEN_LABEL,
            created_by="bootstrap",
        )
    )


def _record_bootstrap(engine: Engine, prefix: str) -> None:
    from edgefleet.fleet.audit.entry import SYSTEM_ACTOR, AuditObject, AuditRecord
    from edgefleet.fleet.audit.log import append

    with Session(engine) as session:
        append(
            session,
            AuditRecord(
                actor=SYSTEM_ACTOR,
                action="token.create",
                object=AuditObject(kind="token", id=prefix),
                after={"user": BOOTSTRAP_USER_NAME, "label": BOOTSTRAP_TOKEN_LABEL},
            ),
        )
        session.commit()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else None.

    Parsed as FastAPI's ``HTTPBearer`` does (scheme case-insensitive), for code that sees
    the header before FastAPI does (`edgefleet.fleet.api.guard`).
    """
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def custom_roles(session: Session) -> dict[str, frozenset[Permission]]:
    """Every stored role's permissions (unknown permission names are skipped)."""
    out: dict[str, frozenset[Permission]] = {}
    for row in session.exec(select(RoleRow)).all():
        known = [p for p in row.permissions if p in Permission._value2member_map_]
        out[row.name] = parse_permissions(known)
    return out


def user_principal(session: Session, user: UserRow, *, token: TokenRow | None = None) -> Principal:
    """The principal of ``user`` (through ``token``, narrowed to its permissions)."""
    grants: list[Grant] = []
    for raw in user.grants:
        try:
            grants.append(Grant.model_validate(raw))
        except ValidationError:
            logger.warning("user %s has an unreadable grant %r; ignored", user.name, raw)
    resolved = resolve(grants, custom_roles(session))
    if token is not None and token.permissions is not None:
        known = [p for p in token.permissions if p in Permission._value2member_map_]
        resolved = narrow(resolved, parse_permissions(known))
    try:
        kind = PrincipalKind(user.kind)
    except ValueError:
        raise AuthenticationError(
            f"user {user.name!r} has an unknown kind {user.kind!r}; fix the users row"
        ) from None
    return Principal(
        kind=kind,
        id=user.id,
        name=user.name,
        grants=resolved,
        token_prefix=token.prefix if token else None,
        token_id=token.id if token else None,
    )


def authenticate(session: Session, token: str | None, *, now: datetime | None = None) -> Principal:
    """The principal of a bearer API token.

    Raises `AuthenticationError` for no token, an unknown, revoked or expired one, or one
    whose owner is disabled.
    """
    if not token:
        raise AuthenticationError("missing bearer token: send 'Authorization: Bearer <token>'")
    row = session.exec(
        select(TokenRow).where(col(TokenRow.token_sha256) == hash_token(token))
    ).first()
    if row is None:
        raise AuthenticationError("the bearer token matches no API token of this fleet")
    now = now or utcnow()
    if row.revoked_at is not None:
        raise AuthenticationError(f"token {row.prefix} was revoked")
    if row.expires_at is not None and row.expires_at <= now:
        raise AuthenticationError(f"token {row.prefix} expired at {row.expires_at.isoformat()}")
    user = session.get(UserRow, row.user_id)
    if user is None or user.disabled:
        raise AuthenticationError(f"the owner of token {row.prefix} is disabled or gone")
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        session.execute(update(TokenRow).where(col(TokenRow.id) == row.id).values(last_used_at=now))
        session.commit()
    return user_principal(session, user, token=row)


def _commit_or_lost_race(session: Session) -> bool:
    try:
        session.commit()
    except IntegrityError:
        # Another replica created the bootstrap admin first; theirs stands.
        session.rollback()
        return False
    return True
