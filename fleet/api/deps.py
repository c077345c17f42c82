"""FastAPI dependencies: the app's context, a DB session, the caller's token.

Everything a route needs arrives through these, so tests can override any of them
(``app.dependency_overrides[get_settings] = ...``) and nothing is a module global.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlmodel import Session

from edgefleet.fleet.api.auth import authenticate
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.tables import ApiToken


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


_bearer = HTTPBearer(auto_error=False, description="an API token of this fleet")


def current_token(
    session: Annotated[Session, Depends(get_session)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiToken:
    """The caller's token; raises `AuthenticationError` (401) without a valid one."""
    return authenticate(session, credentials.credentials if credentials else None)


ContextDep = Annotated[AppContext, Depends(get_context)]
SettingsDep = Annotated[FleetSettings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
CurrentToken = Annotated[ApiToken, Depends(current_token)]
