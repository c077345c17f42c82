"""``/v1/rollouts``: staged rollouts of a published model version.

Every route names the permission it needs; the routes that act on devices also check
the caller's scope: every target device (its tags) and the model must be within the
grant that holds the permission, else 403 naming the first device (or the model)
outside it, and nothing is written. Every mutation appends one audit entry (``rollout.
create|patch|approve|deny|pause|resume|abort|rollback``, object kind ``rollout``, the
status and plan before and after) in the transaction of the change; the orchestrator's
decisions append theirs with actor ``system`` (``rollout.wave_started``,
``rollout.gate_passed``, ``rollout.gate_failed``, ``rollout.held``, ``rollout.paused``,
``rollout.rolling_back``, ``rollout.rolled_back``, ``rollout.completed``,
``rollout.failed``).

- ``POST /v1/rollouts`` (``rollout:create``): plan a rollout. Body: `RolloutCreate`. 201
  with the plan (``wave_sizes``, per-wave gates), status ``created``, or
  ``waiting_for_approval`` when the fleet's approval rules apply to its targets
  (``rollout_approval_required``; more than ``rollout_approval_min_devices`` devices;
  a device tagged one of ``rollout_approval_tags``), ``approval.reasons`` saying which.
  404 unknown model version; 409 a version that is not published, or is rejected or
  retired, or devices another active rollout holds (the message names them and the
  rollout); 422 a bad spec or a selector that matches nothing.
- ``PATCH /v1/rollouts/{id}`` (``rollout:create``): change ``selector``, ``waves``,
  ``gate`` or ``failure_policy`` (fields left out stay) while the rollout is waiting
  for approval, created, running, soaking or paused and has not started a wave past
  its first; 409 otherwise (a finished one too). A changed selector re-plans the targets
  with the rollout's seed; devices already assigned must stay in the first wave (409
  naming them). When approval applies to the changed rollout it goes back to
  ``waiting_for_approval`` (an approval does not cover a change). See
  `edgefleet.fleet.rollouts.patch`.
- ``POST /v1/rollouts/{id}/approve`` {remark?} and ``/deny`` {remark} (``rollout:approve``):
  a person other than the creator (two tokens of one user are one person) approves
  (→ ``created``, or ``running`` when its canary had started) or denies (→
  ``approval_denied``: final, frees its devices, leaves any it assigned as they are);
  403 ``four_eyes`` for the creator unless the fleet runs with
  ``single_person_approval``; 409 when it is not waiting; 422 a deny without a remark.
  Who, when and the remark are in the detail's ``approval`` and the history.
- ``GET /v1/rollouts`` (``rollout:read``): summaries, newest first, ``?status=`` filter.
- ``GET /v1/rollouts/{id}`` (``rollout:read``): per-wave and per-state device counts
  (pending, assigned, downloading, installed, healthy, failed, rolled_back, timed_out,
  offline), gate decisions with their reasons, ``approval``, ``held`` (why it does not
  go on past a passed gate: "waiting for model approval of NAME VERSION") and the
  rollout-level timeline.
- ``GET /v1/rollouts/{id}/devices`` (``rollout:read``): each target's progress.
- ``GET /v1/rollouts/{id}/history`` (``rollout:read``): every action, gate decision,
  command, approval and device step, oldest first; ``?device_id=``, ``?kind=``, paging by
  ``after_id``.
- ``POST /v1/rollouts/{id}/pause|resume|abort|rollback`` (``rollout:handle``): 200 with
  the rollout; 409 when its status does not allow the command, and for a resume of a
  rollout whose version is rejected or retired, or not approved when the resume would
  go past the canary wave (the message says why). Repeating a command is a no-op. The
  orchestrator acts on the new status at its next tick.

Model lifecycle (`edgefleet.fleet.rollouts.policy`, rule 9): the canary (first) wave
runs whatever the version's review state, but the rollout goes on past a passed gate
only once the version is approved (until then it is held, ``held`` saying so, one
``held`` history line); a version rejected or retired mid-rollout pauses it with the
reason, whatever its failure policy (roll it back or abort it).

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
from collections.abc import Sequence
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
from edgefleet.fleet.governance.principal import Principal
from edgefleet.fleet.rollout_service import store, views
from edgefleet.fleet.rollouts.approval import ApprovalRules
from edgefleet.fleet.rollouts.model import (
    DEFAULT_WAVES,
    MAX_ASSIGNMENTS_PER_MINUTE,
    MAX_WAVES,
    Candidate,
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
from edgefleet.fleet.rollouts.patch import RolloutChange
from edgefleet.fleet.settings import FleetSettings
from edgefleet.shared.manifest import NAME_PATTERN
from edgefleet.shared.messages import utcnow

router = APIRouter(prefix="/v1/rollouts", tags=["rollouts"])

RolloutReader = Annotated[Caller, Depends(require(Permission.ROLLOUT_READ))]
RolloutCreator = Annotated[Caller, Depends(require(Permission.ROLLOUT_CREATE))]
RolloutHandler = Annotated[Caller, Depends(require(Permission.ROLLOUT_HANDLE))]
RolloutApprover = Annotated[Caller, Depends(require(Permission.ROLLOUT_APPROVE))]
MAX_REMARK = 2000

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
    principal = caller.principal
    principal.require(
        Permission.ROLLOUT_CREATE, model=request.model, what=f"model {request.model!r}"
    )
    await run_in_threadpool(updates.registry.require_deployable, request.model, request.version)
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
        created_by=principal.name,
        creator=principal.person,
        approval=approval_rules(context.settings),
        check=_in_scope(principal, Permission.ROLLOUT_CREATE),
        audit=caller.record(
            "rollout.create",
            "rollout",
            rollout_id,
            after={"spec": request.model_dump(mode="json", exclude_defaults=True)},
        ),
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


def approval_rules(settings: FleetSettings) -> ApprovalRules:
    """The fleet's rollout approval rules, from its settings."""
    return ApprovalRules(
        required=settings.rollout_approval_required,
        min_devices=settings.rollout_approval_min_devices,
        tags=tuple(settings.rollout_approval_tags),
    )


def _in_scope(principal: Principal, permission: Permission) -> store.DeviceCheck:
    """A check that a rollout's model and every one of its devices is within
    ``principal``'s ``permission`` scope: 403 (`PermissionDeniedError`) naming the model
    or the first device outside it. Device and model are checked together, so a grant on
    site-a for every model and one on site-b for another model do not add up to this
    model on site-b."""

    def check(model: str, devices: Sequence[Candidate]) -> None:
        principal.require(permission, model=model, what=f"model {model!r}")
        for device in devices:
            principal.require(
                permission,
                device_tags=device.tags,
                model=model,
                what=f"device {device.device_id!r}",
            )

    return check


def _command(
    context: ContextDep, rollout_id: str, command: OperatorCommand, caller: Caller
) -> views.RolloutDetail:
    stored = store.command(
        context.engine,
        rollout_id,
        command,
        by=caller.principal.name,
        now=utcnow(),
        check=_in_scope(caller.principal, Permission.ROLLOUT_HANDLE),
        audit=caller.record(f"rollout.{command.value}", "rollout", rollout_id),
    )
    return _detail(context, stored)


class RolloutPatch(BaseModel):
    """What to change in a rollout; a field left out stays as it is. See
    `edgefleet.fleet.rollouts.patch` for when a rollout may change."""

    model_config = ConfigDict(extra="forbid")

    selector: Selector | None = None
    waves: tuple[Wave, ...] | None = Field(default=None, max_length=MAX_WAVES)
    gate: Gate | None = None
    failure_policy: FailurePolicy | None = None


class ApproveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    remark: str | None = Field(default=None, max_length=MAX_REMARK)


class DenyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    remark: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_REMARK)
    ] = Field(description="why it is denied")


@router.patch("/{rollout_id}", response_model=views.RolloutDetail)
def patch_rollout(
    rollout_id: RolloutId, request: RolloutPatch, context: ContextDep, caller: RolloutCreator
) -> views.RolloutDetail:
    """Change the selector, waves, gate or failure policy until the first wave is done;
    back to waiting_for_approval when approval applies; 409 for a finished rollout or
    one past its first wave (see the module docstring)."""
    principal = caller.principal
    stored = _load(context, rollout_id)
    name = stored.state.spec.model.name
    principal.require(Permission.ROLLOUT_CREATE, model=name, what=f"model {name!r}")
    changed = store.change(
        context.engine,
        rollout_id,
        RolloutChange(**dict(request)),
        by=principal.name,
        rules=approval_rules(context.settings),
        now=utcnow(),
        check=_in_scope(principal, Permission.ROLLOUT_CREATE),
        audit=caller.record(
            "rollout.patch",
            "rollout",
            rollout_id,
            after={"change": request.model_dump(mode="json", exclude_unset=True)},
        ),
    )
    return _detail(context, changed)


def _review(
    context: ContextDep, rollout_id: str, caller: Caller, *, approve: bool, remark: str | None
) -> views.RolloutDetail:
    principal = caller.principal
    stored = store.review(
        context.engine,
        rollout_id,
        approve=approve,
        reviewer=principal.person,
        reviewer_name=principal.name,
        remark=remark,
        single_person_approval=context.settings.single_person_approval,
        now=utcnow(),
        check=_in_scope(principal, Permission.ROLLOUT_APPROVE),
        audit=caller.record(
            "rollout.approve" if approve else "rollout.deny",
            "rollout",
            rollout_id,
            after={"remark": remark},
        ),
    )
    return _detail(context, stored)


@router.post("/{rollout_id}/approve", response_model=views.RolloutDetail)
def approve_rollout(
    rollout_id: RolloutId,
    context: ContextDep,
    caller: RolloutApprover,
    body: ApproveRequest | None = None,
) -> views.RolloutDetail:
    """waiting_for_approval → created (or running); 403 ``four_eyes`` for its creator
    (any token of that person) unless the fleet runs with ``single_person_approval``;
    409 when it is not waiting for approval."""
    return _review(context, rollout_id, caller, approve=True, remark=body.remark if body else None)


@router.post("/{rollout_id}/deny", response_model=views.RolloutDetail)
def deny_rollout(
    rollout_id: RolloutId, context: ContextDep, caller: RolloutApprover, body: DenyRequest
) -> views.RolloutDetail:
    """waiting_for_approval → approval_denied (final; frees its devices), with a remark
    saying why; the same four-eyes rule as approval."""
    return _review(context, rollout_id, caller, approve=False, remark=body.remark)


@router.post("/{rollout_id}/pause", response_model=views.RolloutDetail)
def pause_rollout(
    rollout_id: RolloutId, context: ContextDep, caller: RolloutHandler
) -> views.RolloutDetail:
    """Stop assigning (created, running, soaking → paused); 409 otherwise."""
    return _command(context, rollout_id, OperatorCommand.PAUSE, caller)


@router.post("/{rollout_id}/resume", response_model=views.RolloutDetail)
def resume_rollout(
    rollout_id: RolloutId, context: ContextDep, caller: RolloutHandler
) -> views.RolloutDetail:
    """Paused → running; past a failed gate, that gate is recorded as passed by you."""
    return _command(context, rollout_id, OperatorCommand.RESUME, caller)


@router.post("/{rollout_id}/abort", response_model=views.RolloutDetail | views.RolloutSummary)
def abort_rollout(
    rollout_id: RolloutId, context: ContextDep, caller: RolloutHandler
) -> views.RolloutDetail | views.RolloutSummary:
    """Stop for good, leaving devices as they are; 409 for a finished rollout. One whose
    stored state does not parse is aborted too, answered with its summary."""
    aborted = store.abort(
        context.engine,
        rollout_id,
        by=caller.principal.name,
        now=utcnow(),
        check=_in_scope(caller.principal, Permission.ROLLOUT_HANDLE),
        audit=caller.record("rollout.abort", "rollout", rollout_id),
    )
    if isinstance(aborted, store.UnreadableRollout):
        return views.summary(aborted)
    return _detail(context, aborted)


@router.post("/{rollout_id}/rollback", response_model=views.RolloutDetail)
def rollback_rollout(
    rollout_id: RolloutId, context: ContextDep, caller: RolloutHandler
) -> views.RolloutDetail:
    """Roll every touched device back to the version it ran before (any status)."""
    return _command(context, rollout_id, OperatorCommand.ROLLBACK, caller)
