"""Dependencies of the signed-update routes: the services and the repository's callers.

`UpdateServices` is built once per app (by `edgefleet.fleet.service.FleetService` with the keys
loaded, or by `create_app` with none: uploads work, publishing answers 503) and read
through `get_updates`, so tests can override it like any other dependency.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from edgefleet.fleet.api.deps import (
    REQUIRED_PERMISSION,
    AppContext,
    Caller,
    caller_of,
    context_of,
    record_denial,
)
from edgefleet.fleet.director import Director
from edgefleet.fleet.errors import FleetError, PermissionDeniedError
from edgefleet.fleet.governance.permissions import Permission
from edgefleet.fleet.governance.principal import DEVICE as DEVICE_PRINCIPAL
from edgefleet.fleet.governance.principal import PUBLIC as PUBLIC_PRINCIPAL
from edgefleet.fleet.governance.principal import Principal
from edgefleet.fleet.registry import ModelRegistry, UpdatesDisabledError
from edgefleet.fleet.repo_access import RepositoryAccess


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


_bearer = HTTPBearer(auto_error=False, description="the device token or an API token")


async def repository_client(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """Who fetches from the repository: a device, the public, or an API token's holder.

    Raises `edgefleet.fleet.errors.AuthenticationError` (401) without a valid credential
    unless the repository is configured public, and `PermissionDeniedError` (403) for a
    caller without ``repository:read``.

    Every device of a rollout calls this at once, so the public and device-token cases
    run on the event loop and touch no database (the settings are read straight from the
    app's context); only an API token is looked up, in a worker thread.
    """
    context = context_of(request)
    settings = context.settings
    if settings.repository_public:
        return caller_of(request, PUBLIC_PRINCIPAL)
    token = credentials.credentials if credentials else None
    device_token = settings.repository_device_token
    if (
        token
        and device_token is not None
        and hmac.compare_digest(token.encode(), device_token.get_secret_value().encode())
    ):
        return caller_of(request, DEVICE_PRINCIPAL)
    principal = await run_in_threadpool(_principal, context, token)
    caller = caller_of(request, principal)
    if not principal.has(Permission.REPOSITORY_READ):
        await run_in_threadpool(
            record_denial, context.engine, caller, request, Permission.REPOSITORY_READ
        )
        raise PermissionDeniedError(
            f"{principal.describe()} lacks permission {Permission.REPOSITORY_READ.value}",
            permission=Permission.REPOSITORY_READ,
        )
    return caller


setattr(repository_client, REQUIRED_PERMISSION, Permission.REPOSITORY_READ.value)


def _principal(context: AppContext, token: str | None) -> Principal:
    with Session(context.engine) as session:
        return context.principals.resolve(session, token)


UpdatesDep = Annotated[UpdateServices, Depends(get_updates)]
RepositoryClient = Annotated[Caller, Depends(repository_client)]
