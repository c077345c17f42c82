"""The vocabulary of staged rollouts: what an operator asks for, what the fleet observes,
what the rollout remembers and what it asks the orchestrator to do.

- `RolloutSpec`: the operator's request (model target, `Selector`, `Wave` list, `Gate`,
  `FailurePolicy`, optional `MaintenanceWindow`, optional assignment rate).
- `DeviceObservation` / `WaveMetrics`: what the orchestrator read from the database for
  one tick; `decide` never reads anything else.
- `RolloutState`: everything the rollout remembers, persisted as JSON between ticks; the
  plan (ordered targets, wave boundaries and gates) is fixed when the rollout is created.
- `Action`: an effect for the orchestrator (a discriminated union on ``kind``).

All are frozen pydantic models so they can be persisted and compared. Times are
timezone-aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, time
from enum import StrEnum
from itertools import pairwise
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from edgefleet.fleet.errors import FleetError, InvalidRequestError
from edgefleet.shared.limits import MAX_INT64
from edgefleet.shared.messages import EventKind

# --- errors -----------------------------------------------------------------------------


class RolloutConflictError(FleetError):
    """The request is valid but conflicts with the current state of the fleet (HTTP 409)."""

    code = "conflict"


class RolloutOverlapError(RolloutConflictError):
    """Some selected devices already belong to another active rollout."""

    code = "rollout_overlap"

    def __init__(self, held: dict[str, list[str]]) -> None:
        self.held = held
        parts = [
            f"{_names(devices)} (held by active rollout {rid!r})" for rid, devices in held.items()
        ]
        super().__init__(
            "a device belongs to at most one active rollout, but the selection includes "
            + "; ".join(parts)
        )


class SelectionError(InvalidRequestError):
    """A selector that cannot be turned into a target list (unknown ids, nothing matched)."""


class RolloutCommandError(RolloutConflictError):
    """An operator command that the rollout's current status does not allow."""

    code = "rollout_command_rejected"


class UnreadableRolloutError(RolloutConflictError):
    """The rollout's stored state does not parse (an older schema or a hand edit wrote
    it): it can be listed, its history read and it can be aborted, nothing else."""

    code = "rollout_unreadable"


def _names(devices: list[str], limit: int = 10) -> str:
    shown = ", ".join(devices[:limit])
    more = f" and {len(devices) - limit} more" if len(devices) > limit else ""
    return f"{len(devices)} device(s) {shown}{more}"


# --- the operator's request -------------------------------------------------------------

# Bounds of what an operator may ask for. Durations stay far below what `timedelta`
# holds (999,999,999 days), so adding one to a time can never overflow.
MAX_DURATION_S = 366 * 24 * 3600
MAX_WAVES = 100
MAX_SELECTOR_ITEMS = 10_000
MAX_DEVICES = 10_000_000
MAX_ASSIGNMENTS_PER_MINUTE = 1_000_000
MAX_METRIC_SAMPLES = 1_000_000_000
MAX_LATENCY_RATIO = 1000.0
MAX_DRIFT_SCORE = 1000.0

Name = Annotated[str, Field(max_length=200)]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelTarget(Frozen):
    """The model version being rolled out, as the registry describes it."""

    name: str = Field(min_length=1, max_length=200)
    version: str = Field(min_length=1, max_length=64)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    length: int | None = Field(default=None, ge=0, le=MAX_INT64, description="artifact bytes")


class Candidate(Frozen):
    """A device the selector may choose, as the device registry knows it."""

    device_id: str = Field(min_length=1)
    tags: tuple[str, ...] = ()
    hardware: str = ""


class Selector(Frozen):
    """Which devices a rollout targets. Every criterion given must hold (an empty selector
    matches the whole fleet); then ``fraction`` of the matching devices is taken, chosen
    by a hash of (rollout seed, device id), so the same seed always picks the same ones.
    """

    tags: tuple[Name, ...] = Field(
        default=(), max_length=MAX_SELECTOR_ITEMS, description="the device has all of these"
    )
    hardware: tuple[Name, ...] = Field(
        default=(), max_length=MAX_SELECTOR_ITEMS, description="the device is one of these"
    )
    device_ids: tuple[Name, ...] = Field(
        default=(), max_length=MAX_SELECTOR_ITEMS, description="the device is one of these"
    )
    fraction: float = Field(default=1.0, gt=0, le=1, allow_inf_nan=False)

    def matches(self, device: Candidate) -> bool:
        """Whether ``device`` meets every criterion (before ``fraction`` is applied)."""
        if self.device_ids and device.device_id not in self.device_ids:
            return False
        if self.hardware and device.hardware not in self.hardware:
            return False
        return set(self.tags).issubset(device.tags)


class Gate(Frozen):
    """What a wave must show before the next wave starts.

    Ratios are over the wave's own devices. ``soak_s`` counts from the moment the wave's
    last healthy device became healthy. Metric guards compare the new version's devices
    with the previous version's (``WaveMetrics``); a guard needs ``min_metric_samples``
    on each side, and fails the gate if samples are still missing ``metrics_timeout_s``
    after the soak ended. The drift guard judges the new version alone, against the
    reference profile its package carries (``VersionMetrics.drift_score``); it needs
    ``min_metric_samples`` rows and a verdict of the drift thresholds (their
    ``min_count``).
    """

    min_success_ratio: float = Field(default=1.0, ge=0, le=1, allow_inf_nan=False)
    max_failure_ratio: float = Field(default=0.0, ge=0, le=1, allow_inf_nan=False)
    soak_s: float = Field(default=0.0, ge=0, le=MAX_DURATION_S, allow_inf_nan=False)
    timeout_s: float = Field(
        default=3600.0,
        gt=0,
        le=MAX_DURATION_S,
        allow_inf_nan=False,
        description="per device, from assignment",
    )
    timeouts_count_as_failure: bool = True
    max_error_rate_increase: float | None = Field(
        default=None, ge=0, le=1, allow_inf_nan=False, description="absolute"
    )
    max_latency_p95_ratio: float | None = Field(
        default=None, gt=0, le=MAX_LATENCY_RATIO, allow_inf_nan=False, description="new / old"
    )
    max_drift_score: float | None = Field(
        default=None,
        ge=0,
        le=MAX_DRIFT_SCORE,
        allow_inf_nan=False,
        description="largest PSI of any input or output feature of the new version's "
        "windows on this wave against its reference profile (0.25: a clear shift)",
    )
    min_metric_samples: int = Field(default=100, ge=1, le=MAX_METRIC_SAMPLES)
    metrics_timeout_s: float = Field(default=3600.0, ge=0, le=MAX_DURATION_S, allow_inf_nan=False)

    @property
    def has_metric_guards(self) -> bool:
        guards = (self.max_error_rate_increase, self.max_latency_p95_ratio, self.max_drift_score)
        return any(g is not None for g in guards)


class Wave(Frozen):
    """One stage: a cumulative share of the selected set, as a fraction or a count.

    ``gate`` overrides the rollout's gate for this wave (e.g. a longer canary soak).
    """

    fraction: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    count: int | None = Field(default=None, ge=1, le=MAX_DEVICES)
    gate: Gate | None = None

    @model_validator(mode="after")
    def _one_size(self) -> Wave:
        if (self.fraction is None) == (self.count is None):
            raise ValueError(
                f"a wave has exactly one of fraction or count, found fraction={self.fraction} "
                f"and count={self.count}"
            )
        return self


class FailurePolicy(StrEnum):
    """What a failed gate does."""

    PAUSE = "pause"
    ROLLBACK_ALL = "rollback_all"
    ROLLBACK_FAILED = "rollback_failed"


class MaintenanceWindow(Frozen):
    """A daily UTC window; new assignments happen only inside it. ``end`` before ``start``
    wraps past midnight (22:00-04:00)."""

    start: time
    end: time

    @model_validator(mode="after")
    def _valid(self) -> MaintenanceWindow:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("maintenance window times are UTC wall-clock times, without zone")
        if self.start == self.end:
            raise ValueError(f"maintenance window start and end are both {self.start}")
        return self

    def contains(self, now: datetime) -> bool:
        """Whether the UTC instant ``now`` is inside the window (start inclusive)."""
        t = now.astimezone(UTC).time()
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end


DEFAULT_WAVES = (Wave(count=1), Wave(fraction=0.1), Wave(fraction=0.5), Wave(fraction=1.0))


class RolloutSpec(Frozen):
    """An operator's rollout request."""

    model: ModelTarget
    selector: Selector = Selector()
    waves: tuple[Wave, ...] = Field(default=DEFAULT_WAVES, max_length=MAX_WAVES)
    gate: Gate = Gate()
    failure_policy: FailurePolicy = FailurePolicy.PAUSE
    maintenance_window: MaintenanceWindow | None = None
    max_assignments_per_minute: int | None = Field(
        default=None, ge=1, le=MAX_ASSIGNMENTS_PER_MINUTE
    )
    seed: str | None = Field(
        default=None, max_length=200, description="selection seed; the rollout id if unset"
    )

    @model_validator(mode="after")
    def _waves_grow_to_all(self) -> RolloutSpec:
        if not self.waves:
            raise ValueError("a rollout needs at least one wave")
        if self.waves[-1].fraction != 1.0:
            raise ValueError(
                f"the last wave must be fraction=1.0 (the whole selected set), found "
                f"{self.waves[-1]!r}; use selector.fraction to target part of the fleet"
            )
        for kind in ("fraction", "count"):
            sizes = [getattr(w, kind) for w in self.waves if getattr(w, kind) is not None]
            if any(b <= a for a, b in pairwise(sizes)):
                raise ValueError(f"wave {kind}s are cumulative and must grow, found {sizes}")
        return self


# --- what the orchestrator observes -----------------------------------------------------


class DeviceObservation(Frozen):
    """One device as the orchestrator sees it at this tick (from the device registry and
    its latest deployment event). ``assigned_at``/``wave`` come from the director's record
    of desired states for this rollout, if the orchestrator keeps one; they let a rollout
    whose own state lost an assignment adopt it instead of repeating it."""

    device_id: str
    online: bool
    last_event_kind: EventKind | None = None
    last_event_at: AwareDatetime | None = None
    current_version: str | None = None
    previous_version: str | None = None
    assigned_at: AwareDatetime | None = None
    wave: int | None = None


class VersionMetrics(Frozen):
    """Aggregated health of the devices of one wave running one version.

    ``drift_score`` is the largest PSI over the version's input and output features of
    the merged drift windows against the version's reference profile
    (`edgefleet.fleet.rollout_service.observe` defines which windows); None while there is
    no verdict (no reference profile, or fewer rows than the drift thresholds' ``min_count``),
    with ``drift_unavailable`` saying why. ``drift_samples`` counts the merged rows.
    """

    version: str
    error_rate: float | None = Field(default=None, ge=0, le=1)
    latency_p95_ms: float | None = Field(default=None, ge=0)
    drift_score: float | None = Field(default=None, ge=0)
    drift_feature: str | None = Field(
        default=None, description="where drift_score comes from, e.g. 'input alcohol'"
    )
    drift_unavailable: str | None = Field(
        default=None, description="why there is no drift score, when there is none"
    )
    inference_samples: int = Field(default=0, ge=0)
    drift_samples: int = Field(default=0, ge=0)


class WaveMetrics(Frozen):
    """The new version's devices (``candidate``) against the previous version's devices of
    the same wave (``baseline``; None when the wave's devices ran no earlier version)."""

    wave: int = Field(ge=0)
    candidate: VersionMetrics
    baseline: VersionMetrics | None = None


# --- what the rollout remembers ---------------------------------------------------------


class DeviceRolloutState(StrEnum):
    PENDING = "pending"
    ASSIGNED = "assigned"
    DOWNLOADING = "downloading"
    INSTALLED = "installed"
    HEALTHY = "healthy"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    TIMED_OUT = "timed_out"
    OFFLINE = "offline"


class RolloutStatus(StrEnum):
    WAITING_FOR_APPROVAL = "waiting_for_approval"
    APPROVAL_DENIED = "approval_denied"
    CREATED = "created"
    RUNNING = "running"
    SOAKING = "soaking"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


TERMINAL_STATUSES = frozenset(
    {
        RolloutStatus.COMPLETED,
        RolloutStatus.ABORTED,
        RolloutStatus.ROLLED_BACK,
        RolloutStatus.FAILED,
        RolloutStatus.APPROVAL_DENIED,
    }
)


class PlannedWave(Frozen):
    """A wave resolved against the selected set: targets ``[0, end)`` are in waves so far."""

    end: int = Field(ge=1)
    gate: Gate


class DeviceRecord(Frozen):
    """One target device's progress in this rollout.

    ``failure`` is kept after a rollback so the wave's ratios still count the failure.
    """

    device_id: str
    wave: int = Field(ge=0)
    state: DeviceRolloutState = DeviceRolloutState.PENDING
    assigned_at: AwareDatetime | None = None
    from_version: str | None = None
    healthy_at: AwareDatetime | None = None
    failure: str | None = None
    timed_out: bool = False
    rollback_requested_at: AwareDatetime | None = None

    @property
    def touched(self) -> bool:
        return self.assigned_at is not None


class ApprovalRecord(Frozen):
    """Why a rollout waits for approval, and who decided it (see
    `edgefleet.fleet.rollouts.approval`). ``decided_by`` is a person id
    (`Principal.person`), ``decided_by_name`` what to show."""

    reasons: tuple[str, ...] = Field(max_length=100)
    requested_at: AwareDatetime
    approved: bool | None = Field(default=None, description="None while waiting")
    decided_by: str | None = Field(default=None, max_length=300)
    decided_by_name: str | None = Field(default=None, max_length=200)
    decided_at: AwareDatetime | None = None
    remark: str | None = Field(default=None, max_length=2000)


class RolloutState(Frozen):
    """Everything a rollout remembers between ticks.

    ``creator`` is the person id (`Principal.person`) of who created it, for the
    four-eyes rule of its approval (None for a rollout stored before it was kept).
    ``held`` says why a rollout whose gate passed does not go on (its model version is
    not approved yet); ``held_wave`` is the wave whose gate passed.
    """

    rollout_id: str = Field(min_length=1)
    spec: RolloutSpec
    seed: str
    status: RolloutStatus = RolloutStatus.CREATED
    status_reason: str | None = None
    targets: tuple[str, ...] = Field(description="the selected devices, in wave order")
    waves: tuple[PlannedWave, ...]
    devices: dict[str, DeviceRecord]
    current_wave: int = -1
    wave_started_at: AwareDatetime | None = None
    paused_wave: int | None = Field(default=None, description="whose failed gate paused it")
    overridden_waves: tuple[int, ...] = Field(
        default=(), description="waves whose failed gate the operator resumed past"
    )
    created_at: AwareDatetime
    updated_at: AwareDatetime
    finished_at: AwareDatetime | None = None
    creator: str | None = Field(default=None, max_length=300)
    approval: ApprovalRecord | None = None
    held: str | None = Field(default=None, max_length=500)
    held_wave: int | None = None

    @property
    def active(self) -> bool:
        """Whether the rollout still holds its devices (not in a terminal status)."""
        return self.status not in TERMINAL_STATUSES

    def wave_members(self, wave: int) -> list[DeviceRecord]:
        start = self.waves[wave - 1].end if wave > 0 else 0
        return [self.devices[d] for d in self.targets[start : self.waves[wave].end]]


# --- what the rollout asks for ----------------------------------------------------------


class Assign(Frozen):
    """Publish a director-signed desired state for the rollout's target to the device."""

    kind: Literal["assign"] = "assign"
    device_id: str
    wave: int


class RollBack(Frozen):
    """Publish a director-signed rollback to ``to_version`` (None: the device ran no
    model of this name before the rollout)."""

    kind: Literal["roll_back"] = "roll_back"
    device_id: str
    to_version: str | None


class MarkTimedOut(Frozen):
    kind: Literal["mark_timed_out"] = "mark_timed_out"
    device_id: str


class GateDecision(Frozen):
    kind: Literal["gate_decision"] = "gate_decision"
    wave: int
    passed: bool
    reasons: tuple[str, ...]


class StartWave(Frozen):
    kind: Literal["start_wave"] = "start_wave"
    index: int


class Pause(Frozen):
    kind: Literal["pause"] = "pause"
    reason: str


class Complete(Frozen):
    kind: Literal["complete"] = "complete"


class Hold(Frozen):
    """The rollout's gate passed but it may not go on yet (its version is not approved)."""

    kind: Literal["hold"] = "hold"
    reason: str


Action = Annotated[
    Assign | RollBack | MarkTimedOut | GateDecision | StartWave | Pause | Complete | Hold,
    Field(discriminator="kind"),
]


class TimelineEntry(Frozen):
    """One line of the rollout's history, for the console and the audit log."""

    at: AwareDatetime
    event: str
    message: str
    wave: int | None = None
    device_id: str | None = None


class OperatorCommand(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    ROLLBACK = "rollback"


class Decision(Frozen):
    """The outcome of one tick: persist ``state`` first, then carry out ``actions``."""

    state: RolloutState
    actions: tuple[Action, ...] = ()
    timeline: tuple[TimelineEntry, ...] = ()
