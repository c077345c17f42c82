"""``/healthz`` and ``/metrics``: unauthenticated, for load balancers and Prometheus."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from edgefleet.fleet.api.deps import ContextDep, public_route

router = APIRouter(tags=["operations"], dependencies=[Depends(public_route)])


class Health(BaseModel):
    """Whether this replica can serve: database reachable, ingester connected; and how
    it approves (``approval``: ``four_eyes``, or ``single_person`` in a one-person lab)."""

    status: Literal["ok", "degraded"]
    database: Literal["ok", "unreachable"]
    ingester: Literal["connected", "disconnected", "disabled"]
    approval: Literal["four_eyes", "single_person"] = "four_eyes"


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
def healthz(context: ContextDep) -> JSONResponse:
    try:
        with context.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        database: Literal["ok", "unreachable"] = "ok"
    except SQLAlchemyError:
        database = "unreachable"
    ingester: Literal["connected", "disconnected", "disabled"] = "disabled"
    if context.ingester is not None:
        ingester = "connected" if context.ingester.connected else "disconnected"
    ok = database == "ok" and ingester != "disconnected"
    health = Health(
        status="ok" if ok else "degraded",
        database=database,
        ingester=ingester,
        approval="single_person" if context.settings.single_person_approval else "four_eyes",
    )
    return JSONResponse(health.model_dump(), status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response)
def metrics(context: ContextDep) -> Response:
    return Response(generate_latest(context.registry), media_type=CONTENT_TYPE_LATEST)
