"""``/v1/rollouts``: staged rollouts of a published model version.

- ``POST /v1/rollouts`` (operator): plan a rollout. Body: `RolloutCreate`. 201 with the
  plan (``wave_sizes``, per-wave gates); 404 unknown model version; 409 a version that
  is not published, or devices another active rollout holds (the message names them
  and the rollout); 422 a bad spec or a selector that matches nothing.
- ``GET /v1/rollouts`` (viewer): summaries, newest first, ``?status=`` filter.
- ``GET /v1/rollouts/{id}`` (viewer): per-wave and per-state device counts (pending,
  assigned, downloading, installed, healthy, failed, rolled_back, timed_out, offline),
  gate decisions with their reasons, and the rollout-level timeline.
- ``GET /v1/rollouts/{id}/devices`` (viewer): each target's progress.
- ``GET /v1/rollouts/{id}/history`` (viewer): every action, gate decision, command and
  device step, oldest first; ``?device_id=``, ``?kind=``, paging by ``after_id``.
- ``POST /v1/rollouts/{id}/pause|resume|abort|rollback`` (operator): 200 with the
  rollout; 409 when its status does not allow the command. Repeating a command is a
  no-op. The orchestrator acts on the new status at its next tick.

A rollout whose stored state does not parse (an older schema or a hand edit wrote it) is
listed with its ``status_reason`` saying so and its plan and counts empty; its history
can be read, its detail, devices and other commands answer 409 ``rollout_unreadable``,
and abort answers 200 with its summary (status aborted), freeing the devices it held.

Gate guards (``gate``, or a wave's own ``gate``): ``max_error_rate_increase`` (absolute)
and ``max_latency_p95_ratio`` (new / old) compare the new version with the version it
replaces on the same wave's devices; ``max_drift_score`` bounds the new version's drift
on the wave: the largest PSI of any input or output feature of the drift windows its
devices sent since their assignment, merged, against the reference profile in the
version's package (0.1 is a small shift, 0.25 a clear one; see
`edgefleet.fleet.rollout_service.observe`). Each guard waits for ``min_metric_samples``
(the drift guard also for the model's drift ``min_count`` rows, and for a reference
profile) and fails the gate if they are still missing ``metrics_timeout_s`` after the
soak; the gate's reasons say which feature and score failed it.

The orchestrator (`edgefleet.fleet.rollout_service.orchestrator`) does the assigning;
these routes only read and write the stored rollout.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from edgefleet.fleet.api.bounds import AfterId, Offset
from edgefleet.fleet.api.deps import Caller, ContextDep, require
from edgefleet.fleet.api.update_deps import UpdatesDep
from edgefleet.fleet.governance.permissions import Permission
from edgefleet.fleet.rollout_service import store, views
from edgefleet.fleet.rollouts.model import (
    DEFAULT_WAVES,
    MAX_ASSIGNMENTS_PER_MINUTE,
    MAX_WAVES,
    FailurePolicy,
    Gate,
    MaintenanceWindow,
    ModelTarget,
    OperatorCommand,
    RolloutSpec,
    RolloutStatus,
    Selector,
    Wave,
)
from edgefleet.shared.manifest import NAME_PATTERN
from edgefleet.shared.messages import utcnow

router = APIRouter(prefix="/v1/rollouts", tags=["rollouts"])

RolloutReader = Annotated[Caller, Depends(require(Permission.ROLLOUT_READ))]
RolloutCreator = Annotated[Caller, Depends(require(Permission.ROLLOUT_CREATE))]
RolloutHandler = Annotated[Caller, Depends(require(Permission.ROLLOUT_HANDLE))]

RolloutId = Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,100}$", description="the rollout id")]


class RolloutCreate(BaseModel):
    """A rollout request. Waves are cumulative shares of the selected devices, each
    ``{"fraction": f}`` or ``{"count": n}``, optionally with its own ``gate``; the last
    is ``{"fraction": 1.0}``. Default waves: 1 device, 10 %, 50 %, 100 %."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(pattern=NAME_PATTERN, description="model name in the registry")
    version: str = Field(min_length=1, max_length=64)
    selector: Selector = Selector()
    waves: tuple[Wave, ...] = Field(default=DEFAULT_WAVES, max_length=MAX_WAVES)
    gate: Gate = Gate()
    failure_policy: FailurePolicy = FailurePolicy.PAUSE
    maintenance_window: MaintenanceWindow | None = None
    max_assignments_per_minute: int | None = Field(
        default=None, ge=1, le=MAX_ASSIGNMENTS_PER_MINUTE
    )
    seed: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _valid_spec(self) -> RolloutCreate:
        try:
            self.spec(ModelTarget(name=self.model, version=self.version))
        except ValidationError as e:
            raise ValueError("; ".join(str(err["msg"]) for err in e.errors())) from e
        return self

    def spec(self, model: ModelTarget) -> RolloutSpec:
        """The rollout spec for ``model``; raises `pydantic.ValidationError`."""
        return RolloutSpec(
            model=model,
            selector=self.selector,
            waves=self.waves,
            gate=self.gate,
            failure_policy=self.failure_policy,
            maintenance_window=self.maintenance_window,
            max_assignments_per_minute=self.max_assignments_per_minute,
            seed=self.seed,
        )


class DetailCache:
    """Rollout details by ``(database, id, version)``, the most recent ``size`` of them.

    A version names the rollout's state and the history lines its detail shows (gate
    decisions, rollout-level lines: `edgefleet.fleet.rollout_service.store` writes them
    only with a new version), so one detail serves every request until the next version. The console
    and the rollout benchmark poll a running rollout twice a second, and each request
    read its history twice and counted its devices wave by wave.
    """

    def __init__(self, size: int = 32) -> None:
        self._size = size
        self._details: OrderedDict[tuple[str, str, int], views.RolloutDetail] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, engine: Engine, stored: store.StoredRollout) -> views.RolloutDetail:
        """The detail of ``stored`` (read from ``engine``'s database), built if need be."""
        key = (str(engine.url), stored.id, stored.version)
        with self._lock:
            found = self._details.get(key)
            if found is not None:
                self._details.move_to_end(key)
                return found
        built = build_detail(engine, stored)
        with self._lock:
            self._details[key] = built
            while len(self._details) > self._size:
                self._details.popitem(last=False)
        return built


def build_detail(engine: Engine, stored: store.StoredRollout) -> views.RolloutDetail:
    """The detail of ``stored``, from its history as stored now (no cache)."""
    # Gate decisions are rollout-level lines too: one read of the history, not two.
    timeline = store.history(engine, stored.id, rollout_level=True, limit=10_000)
    gates = [line for line in timeline if line.kind == "gate_decision"]
    return views.detail(stored, gates, timeline)


_DETAILS = DetailCache()


def _detail(context: ContextDep, stored: store.StoredRollout) -> views.RolloutDetail:
    return _DETAILS.get(context.engine, stored)


def _load(context: ContextDep, rollout_id: str) -> store.StoredRollout:
    with context.engine.connect() as conn:
        return store.load(conn, rollout_id)


@router.post("", response_model=views.RolloutDetail, status_code=201)
async def create_rollout(
    request: RolloutCreate, context: ContextDep, updates: UpdatesDep, caller: RolloutCreator
) -> views.RolloutDetail:
    """Plan a rollout; see the module docstring for the statuses."""
    target = await run_in_threadpool(
        updates.registry.published_target, request.model, request.version
    )
    model = ModelTarget(
        name=request.model, version=request.version, sha256=target.sha256, length=target.length
    )
    rollout_id = f"ro-{uuid.uuid4().hex[:16]}"
    stored = await run_in_threadpool(
        store.create,
        context.engine,
        rollout_id,
        request.spec(model),
        created_by=caller.principal.name,
        now=utcnow(),
    )
    return await run_in_threadpool(_detail, context, stored)


@router.get("", response_model=views.RolloutPage)
def list_rollouts(
    context: ContextDep,
    _caller: RolloutReader,
    status: RolloutStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> views.RolloutPage:
    """Rollouts, newest first."""
    found, total = store.list_rollouts(
        context.engine, status=status.value if status else None, limit=limit, offset=offset
    )
    return views.RolloutPage(items=[views.summary(s) for s in found], total=total)


@router.get("/{rollout_id}", response_model=views.RolloutDetail)
def get_rollout(
    rollout_id: RolloutId, context: ContextDep, _caller: RolloutReader
) -> views.RolloutDetail:
    """One rollout with per-wave counts, gate decisions and timeline; 404 if unknown."""
    return _detail(context, _load(context, rollout_id))


@router.get("/{rollout_id}/devices", response_model=list[views.DeviceView])
def get_rollout_devices(
    rollout_id: RolloutId, context: ContextDep, _caller: RolloutReader
) -> list[views.DeviceView]:
    """Each target device's progress, in wave order; 404 if unknown."""
    return views.devices(_load(context, rollout_id))


@router.get("/{rollout_id}/history", response_model=views.HistoryPage)
def get_rollout_history(
    *,
    rollout_id: RolloutId,
    context: ContextDep,
    _caller: RolloutReader,
    device_id: Annotated[str | None, Query(max_length=128)] = None,
    kind: Annotated[
        list[Annotated[str, StringConstraints(max_length=64)]] | None,
        Query(max_length=50, description="repeat for several kinds"),
    ] = None,
    after_id: AfterId = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
) -> views.HistoryPage:
    """The rollout's history lines after ``after_id``, oldest first; 404 if unknown."""
    with context.engine.connect() as conn:  # 404 if unknown; lines need no state
        store.load_any(conn, rollout_id)
    rows = store.history(
        context.engine,
        rollout_id,
        device_id=device_id,
        kinds=kind or (),
        after_id=after_id,
        limit=limit,
    )
    items = [views.HistoryEntry.of(r) for r in rows]
    return views.HistoryPage(
        items=items, next_after_id=items[-1].id if len(items) == limit else None
    )


def _command(
    context: ContextDep, rollout_id: str, command: OperatorCommand, by: str
) -> views.RolloutDetail:
    stored = store.command(context.engine, rollout_id, command, by=by, now=utcnow())
    return _detail(context, stored)


@router.post("/{rollout_id}/pause", response_model=views.RolloutDetail)
def pause_rollout(
    rollout_id: RolloutId, context: ContextDep, caller: RolloutHandler
) -> views.RolloutDetail:
    """Stop assigning (created, running, soaking → paused); 409 otherwise."""
    return _command(context, rollout_id, OperatorCommand.PAUSE, caller.principal.name)


@router.post("/{rollout_id}/resume", response_model=views.RolloutDetail)
def resume_rollout(
    rollout_id: RolloutId, context: ContextDep, caller: RolloutHandler
) -> views.RolloutDetail:
    """Paused → running; past a failed gate, that gate is recorded as passed by you."""
    return _command(context, rollout_id, OperatorCommand.RESUME, caller.principal.name)


@router.post("/{rollout_id}/abort", response_model=views.RolloutDetail | views.RolloutSummary)
def abort_rollout(
    rollout_id: RolloutId, context: ContextDep, caller: RolloutHandler
) -> views.RolloutDetail | views.RolloutSummary:
    """Stop for good, leaving devices as they are; 409 for a finished rollout. One whose
    stored state does not parse is aborted too, answered with its summary."""
    aborted = store.abort(context.engine, rollout_id, by=caller.principal.name, now=utcnow())
    if isinstance(aborted, store.UnreadableRollout):
        return views.summary(aborted)
    return _detail(context, aborted)


@router.post("/{rollout_id}/rollback", response_model=views.RolloutDetail)
def rollback_rollout(
    rollout_id: RolloutId, context: ContextDep, caller: RolloutHandler
) -> views.RolloutDetail:
    """Roll every touched device back to the version it ran before (any status)."""
    return _command(context, rollout_id, OperatorCommand.ROLLBACK, caller.principal.name)
