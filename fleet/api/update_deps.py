"""Dependencies of the signed-update routes: the services, role checks, device auth.

`UpdateServices` is built once per app (by `edgefleet.fleet.service.FleetService` with the keys
loaded, or by `create_app` with none: uploads work, publishing answers 503) and read
through `get_updates`, so tests can override it like any other dependency.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from edgefleet.fleet.api.auth import authenticate
from edgefleet.fleet.api.deps import CurrentToken, context_of
from edgefleet.fleet.director import Director
from edgefleet.fleet.errors import FleetError, PermissionDeniedError
from edgefleet.fleet.registry import ModelRegistry, UpdatesDisabledError
from edgefleet.fleet.repo_access import RepositoryAccess
from edgefleet.fleet.store.tables import ApiToken, TokenRole

ROLE_ORDER = (TokenRole.VIEWER, TokenRole.OPERATOR, TokenRole.APPROVER, TokenRole.ADMIN)
DEVICE_TOKEN_NAME = "device"  # noqa: S105  (how a device caller is named in logs, not a secret)


class PayloadTooLargeError(FleetError):
    """A request body larger than the fleet accepts."""

    code = "payload_too_large"


@dataclass(frozen=True)
class UpdateServices:
    """The registry, and when keys are loaded the repository and the director."""

    registry: ModelRegistry
    repository: RepositoryAccess | None = None
    director: Director | None = None

    def require_director(self) -> Director:
        """The director; raises `UpdatesDisabledError` without keys."""
        if self.director is None:
            raise UpdatesDisabledError(
                "signed updates are off: start the fleet with --keys-dir to sign desired states"
            )
        return self.director

    def require_repository(self) -> RepositoryAccess:
        """The image repository; raises `UpdatesDisabledError` without keys."""
        if self.repository is None:
            raise UpdatesDisabledError(
                "signed updates are off: start the fleet with --keys-dir to serve a repository"
            )
        return self.repository


async def get_updates(request: Request) -> UpdateServices:
    """The app's `UpdateServices` (async: a plain attribute read needs no worker thread)."""
    services: UpdateServices = request.app.state.updates
    return services


# Every check `require_role` made, so the OpenAPI document can list their 403.
ROLE_CHECKS: set[Callable[..., object]] = set()


def require_role(role: TokenRole) -> Callable[[ApiToken], ApiToken]:
    """A dependency that lets through tokens of ``role`` or higher (403 otherwise)."""

    def check(token: CurrentToken) -> ApiToken:
        if ROLE_ORDER.index(TokenRole(token.role)) < ROLE_ORDER.index(role):
            raise PermissionDeniedError(
                f"token {token.name!r} has role {token.role}; this needs {role} or higher"
            )
        return token

    ROLE_CHECKS.add(check)
    return check


_bearer = HTTPBearer(auto_error=False, description="the device token or an API token")


async def repository_client(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """Who fetches from the repository: ``device``, an API token's name, or ``public``.

    Raises `edgefleet.fleet.errors.AuthenticationError` (401) without a valid token unless the
    repository is configured public.

    Every device of a rollout calls this at once, so the public and device-token cases
    run on the event loop and touch no database (the settings are read straight from the
    app's context); only an API token is looked up, in a worker thread.
    """
    context = context_of(request)
    settings = context.settings
    if settings.repository_public:
        return "public"
    token = credentials.credentials if credentials else None
    device_token = settings.repository_device_token
    if (
        token
        and device_token is not None
        and hmac.compare_digest(token.encode(), device_token.get_secret_value().encode())
    ):
        return DEVICE_TOKEN_NAME
    return await run_in_threadpool(_api_token_name, context.engine, token)


def _api_token_name(engine: Engine, token: str | None) -> str:
    with Session(engine) as session:
        return authenticate(session, token).name


UpdatesDep = Annotated[UpdateServices, Depends(get_updates)]
RepositoryClient = Annotated[str, Depends(repository_client)]
Operator = Annotated[ApiToken, Depends(require_role(TokenRole.OPERATOR))]
Approver = Annotated[ApiToken, Depends(require_role(TokenRole.APPROVER))]
