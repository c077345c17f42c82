"""Dependencies of the signed-update routes: the services and the repository's callers.

`UpdateServices` is built once per app (by `edgefleet.fleet.service.FleetService` with the keys
loaded, or by `create_app` with none: uploads work, publishing answers 503) and read
through `get_updates`, so tests can override it like any other dependency.
"""

from __future__ import annotations

import hmac
import logging
import threading
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
from edgefleet.fleet.api.identity import identity_service
from edgefleet.fleet.director import Director
from edgefleet.fleet.errors import AuthenticationError, FleetError, PermissionDeniedError
from edgefleet.fleet.governance.permissions import DEVICE_PERMISSIONS, Permission
from edgefleet.fleet.governance.principal import DEVICE as DEVICE_PRINCIPAL
from edgefleet.fleet.governance.principal import PUBLIC as PUBLIC_PRINCIPAL
from edgefleet.fleet.governance.principal import Principal, PrincipalKind
from edgefleet.fleet.identity.device_auth import DeviceAuthenticator, DeviceAuthRefused
from edgefleet.fleet.registry import ModelRegistry, UpdatesDisabledError
from edgefleet.fleet.repo_access import RepositoryAccess
from edgefleet.shared.device_auth import is_device_authorization
from edgefleet.shared.logs import DEVICE_ID

logger = logging.getLogger(__name__)


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
_AUTHENTICATOR_LOCK = threading.Lock()


def device_authenticator(request: Request) -> DeviceAuthenticator:
    """The app's `DeviceAuthenticator`, made on first use (it opens the CA lazily)."""
    state = request.app.state
    found: DeviceAuthenticator | None = getattr(state, "device_authenticator", None)
    if found is not None:
        return found
    with _AUTHENTICATOR_LOCK:
        found = getattr(state, "device_authenticator", None)
        if found is None:
            context = context_of(request)
            service = identity_service(request)
            found = DeviceAuthenticator(
                ca=service.ca,
                engine=context.engine,
                identity_ttl_s=context.settings.device_identity_cache_s,
                max_skew_s=context.settings.device_signature_max_skew_s,
            )
            state.device_authenticator = found
    return found


def device_principal(device_id: str) -> Principal:
    """The principal of an enrolled device proven by its signature: repository reads."""
    return Principal(
        kind=PrincipalKind.DEVICE, id=device_id, name=device_id, extra=DEVICE_PERMISSIONS
    )


async def repository_client(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """Who fetches from the repository: a device, the public, or an API token's holder.

    A device proves who it is with a signed request (``Authorization: EdgefleetDevice``,
    `edgefleet.shared.device_auth`, checked by
    `edgefleet.fleet.identity.device_auth.DeviceAuthenticator`); the shared
    ``repository_device_token`` is the weaker option for devices without an identity.

    Raises `edgefleet.fleet.errors.AuthenticationError` (401) without a valid credential
    unless the repository is configured public (a refused device signature says why),
    `PermissionDeniedError` (403) for a caller without ``repository:read``, and
    `IdentityUnavailableError` (503) for a signed request when the CA cannot be opened.

    Every device of a rollout calls this at once, so the public, device-token and
    device-signature cases run on the event loop and touch no database (a signature
    costs one ECDSA check against a cached certificate; only when the identities are
    older than ``device_identity_cache_s`` is the check made in a worker thread); only an
    API token is looked up, in a worker thread.
    """
    context = context_of(request)
    settings = context.settings
    if settings.repository_public:
        return caller_of(request, PUBLIC_PRINCIPAL)
    authorization = request.headers.get("authorization")
    if authorization is not None and is_device_authorization(authorization):
        device_id = await _signed_device(request, authorization)
        DEVICE_ID.set(device_id)  # this request's log lines name the device
        return caller_of(request, device_principal(device_id))
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


async def _signed_device(request: Request, authorization: str) -> str:
    """The device id a signed request proves; raises `AuthenticationError` (401)."""
    authenticator = device_authenticator(request)
    target = _request_target(request)
    try:
        if authenticator.needs_io():
            return await run_in_threadpool(
                authenticator.authenticate, authorization, request.method, target
            )
        return authenticator.authenticate(authorization, request.method, target)
    except DeviceAuthRefused as e:
        logger.warning("device request %s %s refused: %s", request.method, target, e)
        raise AuthenticationError(f"device signature refused: {e}") from None


def _request_target(request: Request) -> str:
    """The request target as the client sent it (what the device signed)."""
    scope = request.scope
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string", b"")
    target = raw.decode("latin-1")
    return f"{target}?{query.decode('latin-1')}" if query else target


def _principal(context: AppContext, token: str | None) -> Principal:
    with Session(context.engine) as session:
        return context.principals.resolve(session, token)


UpdatesDep = Annotated[UpdateServices, Depends(get_updates)]
RepositoryClient = Annotated[Caller, Depends(repository_client)]
