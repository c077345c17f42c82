"""API tokens: hashing, the bootstrap admin token, and looking a bearer token up.

Only sha256(token) is stored. Tokens are 256-bit random strings, so a plain hash (no
salt, no slow KDF) is enough: there is no dictionary to attack.
"""

from __future__ import annotations

import hashlib
import logging
import secrets

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from edgefleet.fleet.errors import AuthenticationError
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.tables import ApiToken, TokenRole

logger = logging.getLogger(__name__)

ADMIN_TOKEN_NAME = "admin"  # noqa: S105  (the token row's name, not a secret)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def bootstrap_admin_token(engine: Engine, settings: FleetSettings) -> str | None:
    """Make sure an admin token exists; return its plaintext only if this call made it.

    With ``settings.admin_token`` set, that token is (re)registered as the admin token.
    Otherwise the first start generates one and returns it once, for the operator to
    copy; later starts, and a replica that lost the race to create it, return None.
    """
    configured = settings.admin_token.get_secret_value() if settings.admin_token else None
    with Session(engine) as session:
        existing = session.exec(
            select(ApiToken).where(col(ApiToken.name) == ADMIN_TOKEN_NAME)
        ).first()
        if configured is not None:
            digest = hash_token(configured)
            if existing is None:
                session.add(
                    ApiToken(name=ADMIN_TOKEN_NAME, role=TokenRole.ADMIN, token_sha256=digest)
                )
            elif existing.token_sha256 != digest:
                existing.token_sha256 = digest
                session.add(existing)
            else:
                return None
            _commit_or_lost_race(session)
            return None
        if existing is not None:
            return None
        token = new_token()
        session.add(
            ApiToken(name=ADMIN_TOKEN_NAME, role=TokenRole.ADMIN, token_sha256=hash_token(token))
        )
        if not _commit_or_lost_race(session):
            return None
        logger.info("generated the bootstrap admin token (shown once)")
        return token


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else None.

    Parsed as FastAPI's ``HTTPBearer`` does (scheme case-insensitive), for code that sees
    the header before FastAPI does (`edgefleet.fleet.api.guard`).
    """
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def authenticate(session: Session, token: str | None) -> ApiToken:
    """The token row for a bearer token; raises `AuthenticationError` if there is none."""
    if not token:
        raise AuthenticationError("missing bearer token: send 'Authorization: Bearer <token>'")
    row = session.exec(
        select(ApiToken).where(col(ApiToken.token_sha256) == hash_token(token))
    ).first()
    if row is None:
        raise AuthenticationError("the bearer token matches no API token of this fleet")
    return row


def _commit_or_lost_race(session: Session) -> bool:
    try:
        session.commit()
    except IntegrityError:
        # Another replica created the admin token first; theirs stands.
        session.rollback()
        return False
    return True
