"""The app factory: one FastAPI app per call, with its own engine, registry and context."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgefleet.fleet.api import (
    audit,
    deployments,
    devices,
    drift,
    health,
    identity,
    models,
    repository,
    rollouts,
)
from edgefleet.fleet.api import people as people_api
from edgefleet.fleet.api.deps import AppContext, IngestStatus
from edgefleet.fleet.api.errors import document_errors, error_response, http_error, validation_error
from edgefleet.fleet.api.guard import RequestGuard
from edgefleet.fleet.api.principals import PrincipalResolver
from edgefleet.fleet.api.update_deps import PayloadTooLargeError, UpdateServices
from edgefleet.fleet.errors import (
    AuthenticationError,
    FleetError,
    FourEyesError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    PublishError,
)
from edgefleet.fleet.governance.lifecycle import LifecycleError
from edgefleet.fleet.governance.oidc import oidc_verifier
from edgefleet.fleet.observability.metrics import FleetMetrics
from edgefleet.fleet.observability.repository_traffic import RepositoryTraffic
from edgefleet.fleet.registry import ConflictError, ModelRegistry, UpdatesDisabledError
from edgefleet.fleet.rollouts.model import RolloutConflictError
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.engine import make_engine
from edgefleet.fleet.store.migrate import create_all
from edgefleet.shared import __version__

HTTP_STATUS: dict[type[FleetError], int] = {
    NotFoundError: 404,
    AuthenticationError: 401,
    PermissionDeniedError: 403,
    FourEyesError: 403,
    InvalidRequestError: 422,
    ConflictError: 409,
    RolloutConflictError: 409,
    LifecycleError: 409,
    PayloadTooLargeError: 413,
    UpdatesDisabledError: 503,
    PublishError: 503,
}


# Each router with the domain errors its services raise (beyond what `document_errors`
# derives from its dependencies), for the OpenAPI document.
ROUTERS: tuple[tuple[APIRouter, tuple[int, ...]], ...] = (
    (health.router, ()),
    (devices.router, ()),
    (deployments.router, (409, 503)),
    (models.router, (409, 422, 503)),
    (repository.router, (422, 503)),
    (rollouts.router, (409,)),
    (drift.router, ()),
    (identity.router, (401, 403, 409, 503)),
    (people_api.router, (409, 422)),
    (audit.router, ()),
)
# Uploads stream to disk under their own, larger limits (max_upload_bytes,
# MAX_TARGETS_METADATA_BYTES); every other body is capped by max_request_body_bytes.
OWN_BODY_LIMITS = frozenset({("POST", "/v1/models"), ("PUT", "/v1/repository/targets-metadata")})


def create_app(
    settings: FleetSettings,
    *,
    engine: Engine | None = None,
    registry: CollectorRegistry | None = None,
    ingester: IngestStatus | None = None,
    updates: UpdateServices | None = None,
    metrics: FleetMetrics | None = None,
) -> FastAPI:
    """A fleet API app. Without ``engine`` it makes one from settings and creates tables.

    Without ``updates`` the registry accepts uploads but nothing can be published or
    assigned (`edgefleet.fleet.service.FleetService` passes the services built from the keys).

    ``metrics`` are the service's (on ``registry``, which ``/metrics`` serves); without,
    the app makes its own on ``registry`` (a new one if None).

    Raises `ValueError` for an unsupported ``settings.database_url``.
    """
    if engine is None:
        engine = make_engine(settings.database_url)
        create_all(engine)
    app = FastAPI(title="edgefleet", version=__version__)
    if metrics is None:
        metrics = FleetMetrics(registry or CollectorRegistry())
    elif registry is not None and registry is not metrics.registry:
        raise ValueError("metrics must be on the registry the app serves")
    app.state.metrics = metrics
    principals = PrincipalResolver(engine, jwt_verifier=oidc_verifier(settings))
    app.state.context = AppContext(
        settings=settings,
        engine=engine,
        registry=metrics.registry,
        ingester=ingester,
        principals=principals,
    )
    app.state.updates = updates or UpdateServices(
        registry=ModelRegistry(engine, settings.resolved_models_dir, None)
    )
    for router, statuses in ROUTERS:
        app.include_router(document_errors(router, domain_statuses=statuses))
    app.add_exception_handler(FleetError, _fleet_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_middleware(
        RequestGuard,
        principals=principals,
        max_body_bytes=settings.max_request_body_bytes,
        own_limits=OWN_BODY_LIMITS,
    )
    # Outermost (added last): it counts the guard's refusals and 500s too.
    app.add_middleware(RepositoryTraffic, metrics=metrics.repository)
    return app


async def _fleet_error(_request: Request, error: FleetError) -> JSONResponse:
    # async: Starlette runs a sync handler in a worker thread, and every TUF refresh
    # probes for a next root.json that is not there (a 404 each time).
    status = next((s for cls, s in HTTP_STATUS.items() if isinstance(error, cls)), 400)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return error_response(status, error.code, str(error), headers=headers)
