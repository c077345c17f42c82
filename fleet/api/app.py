"""The app factory: one FastAPI app per call, with its own engine, registry and context."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from edgefleet.fleet.api import deployments, devices, drift, health, models, repository, rollouts
from edgefleet.fleet.api.deps import AppContext, IngestStatus
from edgefleet.fleet.api.update_deps import PayloadTooLargeError, UpdateServices
from edgefleet.fleet.errors import (
    AuthenticationError,
    FleetError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    PublishError,
)
from edgefleet.fleet.registry import ConflictError, ModelRegistry, UpdatesDisabledError
from edgefleet.fleet.rollouts.model import RolloutConflictError
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.engine import create_all, make_engine
from edgefleet.shared import __version__

HTTP_STATUS: dict[type[FleetError], int] = {
    NotFoundError: 404,
    AuthenticationError: 401,
    PermissionDeniedError: 403,
    InvalidRequestError: 422,
    ConflictError: 409,
    RolloutConflictError: 409,
    PayloadTooLargeError: 413,
    UpdatesDisabledError: 503,
    PublishError: 503,
}


def create_app(
    settings: FleetSettings,
    *,
    engine: Engine | None = None,
    registry: CollectorRegistry | None = None,
    ingester: IngestStatus | None = None,
    updates: UpdateServices | None = None,
) -> FastAPI:
    """A fleet API app. Without ``engine`` it makes one from settings and creates tables.

    Without ``updates`` the registry accepts uploads but nothing can be published or
    assigned (`edgefleet.fleet.service.FleetService` passes the services built from the keys).

    Raises `ValueError` for an unsupported ``settings.database_url``.
    """
    if engine is None:
        engine = make_engine(settings.database_url)
        create_all(engine)
    app = FastAPI(title="edgefleet", version=__version__)
    app.state.context = AppContext(
        settings=settings,
        engine=engine,
        registry=registry or CollectorRegistry(),
        ingester=ingester,
    )
    app.state.updates = updates or UpdateServices(
        registry=ModelRegistry(engine, settings.resolved_models_dir, None)
    )
    app.include_router(health.router)
    app.include_router(devices.router)
    app.include_router(deployments.router)
    app.include_router(models.router)
    app.include_router(repository.router)
    app.include_router(rollouts.router)
    app.include_router(drift.router)
    app.add_exception_handler(FleetError, _fleet_error)  # type: ignore[arg-type]
    return app


async def _fleet_error(_request: Request, error: FleetError) -> JSONResponse:
    # async: Starlette runs a sync handler in a worker thread, and every TUF refresh
    # probes for a next root.json that is not there (a 404 each time).
    status = next((s for cls, s in HTTP_STATUS.items() if isinstance(error, cls)), 400)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        {"error": {"code": error.code, "message": str(error)}}, status_code=status, headers=headers
    )
