"""FastAPI dependencies: the app's context, a DB session, the caller and its permission.

Everything a route needs arrives through these, so tests can override any of them
(``app.dependency_overrides[get_settings] = ...``) and nothing is a module global.

Every route declares the one permission it needs with `require` (or the repository's
`edgefleet.fleet.api.update_deps.repository_client`); `permission_of` finds it in a
route's dependencies, for the OpenAPI document (``x-required-permission``) and for the
test that fails on a route without one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlmodel import Session

from edgefleet.fleet.api.principals import PrincipalResolver
from edgefleet.fleet.audit.entry import (
    AuditActor,
    AuditObject,
    AuditOutcome,
    AuditRecord,
)
from edgefleet.fleet.audit.log import append
from edgefleet.fleet.errors import PermissionDeniedError
from edgefleet.fleet.governance.permissions import Permission
from edgefleet.fleet.governance.principal import Principal
from edgefleet.fleet.settings import FleetSettings

logger = logging.getLogger(__name__)

# Routes anyone may call (health, metrics): declared so, not forgotten.
PUBLIC = "none"


class IngestStatus(Protocol):
    """What the health check needs to know about the ingester."""

    @property
    def connected(self) -> bool: ...


@dataclass(frozen=True)
class AppContext:
    """What one app instance runs on."""

    settings: FleetSettings
    engine: Engine
    registry: CollectorRegistry
    ingester: IngestStatus | None
    principals: PrincipalResolver


def context_of(request: Request) -> AppContext:
    """The app's context, for code that has the request but is not a dependency."""
    context: AppContext = request.app.state.context
    return context


# The two below are async only because FastAPI runs a sync dependency in a worker
# thread: a thread round trip per request for an attribute read.
async def get_context(request: Request) -> AppContext:
    return context_of(request)


async def get_settings(context: Annotated[AppContext, Depends(get_context)]) -> FleetSettings:
    return context.settings


def get_session(context: Annotated[AppContext, Depends(get_context)]) -> Iterator[Session]:
    with Session(context.engine) as session:
        yield session


@dataclass(frozen=True)
class Caller:
    """Who makes a request, and what its audit entries say about it."""

    principal: Principal
    request_id: str | None = None
    source: str | None = None

    def actor(self) -> AuditActor:
        p = self.principal
        return AuditActor(kind=p.kind.value, id=p.id, name=p.name, token_prefix=p.token_prefix)

    def record(
        self,
        action: str,
        kind: str,
        object_id: str,
        *,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
        outcome: AuditOutcome = AuditOutcome.OK,
    ) -> AuditRecord:
        """An audit record of this caller doing ``action`` on (``kind``, ``object_id``)."""
        return AuditRecord(
            actor=self.actor(),
            action=action,
            object=AuditObject(kind=kind, id=object_id[:300]),
            outcome=outcome,
            request_id=self.request_id,
            source=self.source,
            before=before,
            after=after,
        )


def caller_of(request: Request, principal: Principal) -> Caller:
    """The `Caller` of ``request`` acting as ``principal``."""
    client = request.client
    return Caller(
        principal=principal,
        request_id=getattr(request.state, "request_id", None),
        source=client.host[:64] if client else None,
    )


_bearer = HTTPBearer(auto_error=False, description="an API token of this fleet, or an OIDC JWT")


def current_caller(
    request: Request,
    context: Annotated[AppContext, Depends(get_context)],
    session: Annotated[Session, Depends(get_session)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller; raises `AuthenticationError` (401) without a valid credential."""
    token = credentials.credentials if credentials else None
    return caller_of(request, context.principals.resolve(session, token))


def require(permission: Permission) -> Callable[..., Caller]:
    """A dependency that lets through callers holding ``permission`` in some scope.

    A refusal is recorded in the audit log (outcome ``denied``) and answered 403
    (`PermissionDeniedError`) naming the permission. Object scopes (device tags, model
    names) are checked by the route, which knows the object.
    """

    def check(
        request: Request,
        caller: Annotated[Caller, Depends(current_caller)],
        context: Annotated[AppContext, Depends(get_context)],
    ) -> Caller:
        if not caller.principal.has(permission):
            record_denial(context.engine, caller, request, permission)
            raise PermissionDeniedError(
                f"{caller.principal.describe()} lacks permission {permission.value}",
                permission=permission,
            )
        return caller

    setattr(check, REQUIRED_PERMISSION, permission.value)
    check.__name__ = f"require_{permission.value.replace(':', '_')}"
    return check


def record_denial(engine: Engine, caller: Caller, request: Request, permission: Permission) -> None:
    """One ``denied`` audit entry for a refused request (its own transaction: the
    request changes nothing else)."""
    record = caller.record(
        "permission.denied",
        "route",
        f"{request.method} {request.url.path}",
        outcome=AuditOutcome.DENIED,
        after={"missing_permission": permission.value},
    )
    with Session(engine) as session:
        append(session, record)
        session.commit()


REQUIRED_PERMISSION = "edgefleet_required_permission"


def declare_public(function: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a dependency as what makes a route public (no permission needed)."""
    setattr(function, REQUIRED_PERMISSION, PUBLIC)
    return function


def permission_of(dependant: Dependant) -> str | None:
    """The permission a route's dependencies declare (`require`), else None."""
    call = dependant.call
    declared = getattr(call, REQUIRED_PERMISSION, None) if call is not None else None
    if isinstance(declared, str):
        return declared
    for sub in dependant.dependencies:
        found = permission_of(sub)
        if found is not None:
            return found
    return None


ContextDep = Annotated[AppContext, Depends(get_context)]
SettingsDep = Annotated[FleetSettings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]


@declare_public
async def public_route() -> None:
    """What a public route depends on: nothing to check, declared so."""
