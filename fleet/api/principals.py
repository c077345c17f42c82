"""Resolving a bearer credential to a principal: an API token, or a JWT from the OIDC issuer.

One resolver per app (in `edgefleet.fleet.api.deps.AppContext`), used by the routes'
dependencies and by `edgefleet.fleet.api.guard` before a body is read.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import Engine
from sqlmodel import Session

from edgefleet.fleet.api.auth import TOKEN_SCHEME, authenticate, custom_roles
from edgefleet.fleet.errors import AuthenticationError
from edgefleet.fleet.governance.permissions import Permission
from edgefleet.fleet.governance.principal import Principal


class BearerJwtVerifier(Protocol):
    """Turns a bearer JWT into a principal (`edgefleet.fleet.governance.oidc`)."""

    def principal(self, token: str, custom_roles: dict[str, frozenset[Permission]]) -> Principal:
        """Raises `AuthenticationError` for a token it does not accept."""
        ...


def looks_like_jwt(token: str) -> bool:
    """Three base64url parts separated by dots, and not one of our own tokens."""
    return not token.startswith(TOKEN_SCHEME) and token.count(".") == 2


class PrincipalResolver:
    """API tokens from the database; JWTs through ``jwt_verifier`` when one is set."""

    def __init__(self, engine: Engine, jwt_verifier: BearerJwtVerifier | None = None) -> None:
        self.engine = engine
        self.jwt_verifier = jwt_verifier

    def resolve(self, session: Session, token: str | None) -> Principal:
        """Raises `AuthenticationError` for a missing or unaccepted credential."""
        if token and self.jwt_verifier is not None and looks_like_jwt(token):
            return self.jwt_verifier.principal(token, custom_roles(session))
        if token and looks_like_jwt(token):
            raise AuthenticationError(
                "the bearer token is a JWT, but this fleet has no OIDC issuer configured"
            )
        return authenticate(session, token)

    def check(self, token: str | None) -> None:
        """`resolve` in a session of its own, for the guard; raises as it does."""
        with Session(self.engine) as session:
            self.resolve(session, token)
