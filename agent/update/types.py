"""The vocabulary of the update state machine: what it works on, hears and asks for.

- `UpdateTarget`: the model one desired state asks for, with its seq (the runner's view of
  the director's `edgefleet.shared.signing.director.DesiredBody`).
- `Event`: something that happened (a discriminated union on ``kind``); events about a
  model carry its ``sha256`` so a late event about a superseded target is ignored.
- `Effect`: something the runner must do; the machine never does I/O itself.

All are frozen pydantic models so the state that holds them can be persisted as JSON.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, Field

from edgefleet.agent.update.policy import Frozen
from edgefleet.shared.messages import EventKind

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class InstalledModel(Frozen):
    """A model the store holds, by content address."""

    name: str
    version: str
    sha256: Sha256


class UpdateTarget(Frozen):
    """The model a desired state asks this device to run, signed by the director."""

    desired_seq: int = Field(ge=0)
    name: str
    version: str
    sha256: Sha256 = Field(description="of the package artifact: the store's content address")
    length: int = Field(ge=0, description="of the package artifact, in bytes")
    rollout_id: str | None = None
    rollback: bool = Field(default=False, description="the director signed it as a rollback")

    @property
    def model(self) -> InstalledModel:
        return InstalledModel(name=self.name, version=self.version, sha256=self.sha256)


class Budget(Frozen):
    """Probation budget of one model (same fields as `edgefleet.shared.manifest.ProbationBudget`).

    Probation ends after ``min_inferences`` samples or ``duration_s`` seconds, whichever
    comes first; the model is committed only if its golden samples passed and the samples
    seen stay within ``max_error_rate`` and ``max_latency_p95_ms``.
    """

    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    max_latency_p95_ms: float = Field(default=250.0, gt=0)
    min_inferences: int = Field(default=50, ge=0)
    duration_s: float = Field(default=300.0, ge=0)


# --- events -----------------------------------------------------------------------------


class DesiredReceived(Frozen):
    """A desired state whose envelope opened: signed by a pinned director key, for this device.

    Whether the agent takes it (sequence, expiry, redelivery) is not decided yet: the
    machine asks `edgefleet.agent.update.acceptance`.
    """

    kind: Literal["desired_received"] = "desired_received"
    target: UpdateTarget
    expires_at: AwareDatetime
    envelope_sha256: Sha256 = Field(description="of the payload: the same message again")


class DesiredRejected(Frozen):
    """A payload of the ``desired`` topic whose envelope did not open (signature, shape, device)."""

    kind: Literal["desired_rejected"] = "desired_rejected"
    reason: str
    desired_seq: int | None = Field(default=None, description="claimed, not verified")
    envelope_sha256: Sha256 = Field(description="of the payload: the same message again")


class DownloadProgress(Frozen):
    kind: Literal["download_progress"] = "download_progress"
    sha256: Sha256
    downloaded_bytes: int = Field(ge=0)


class DownloadDone(Frozen):
    kind: Literal["download_done"] = "download_done"
    sha256: Sha256


class DownloadFailed(Frozen):
    """``transient``: the network failed, retry later; otherwise the peer sent bad data.

    ``jitter`` is a uniform draw in [0, 1) made by the runner (the machine has no
    randomness of its own); it spreads the retry delay, so the devices of a wave that
    failed together do not all retry at the same instant against one repository.
    """

    kind: Literal["download_failed"] = "download_failed"
    sha256: Sha256
    transient: bool
    reason: str
    jitter: float = Field(ge=0, lt=1)


class Verified(Frozen):
    kind: Literal["verified"] = "verified"
    sha256: Sha256


class VerifyFailed(Frozen):
    kind: Literal["verify_failed"] = "verify_failed"
    sha256: Sha256
    reason: str


class Staged(Frozen):
    kind: Literal["staged"] = "staged"
    sha256: Sha256
    budget: Budget = Field(default_factory=Budget, description="from the package manifest")


class StageFailed(Frozen):
    kind: Literal["stage_failed"] = "stage_failed"
    sha256: Sha256
    reason: str


class Activated(Frozen):
    kind: Literal["activated"] = "activated"
    sha256: Sha256


class ActivationFailed(Frozen):
    kind: Literal["activation_failed"] = "activation_failed"
    sha256: Sha256
    reason: str


class ProbationSample(Frozen):
    """One inference served by the model on probation."""

    kind: Literal["probation_sample"] = "probation_sample"
    ok: bool
    latency_ms: float = Field(ge=0)


class GoldenResult(Frozen):
    kind: Literal["golden_result"] = "golden_result"
    sha256: Sha256
    passed: bool
    detail: str = ""


class ProbationTimerExpired(Frozen):
    kind: Literal["probation_timer_expired"] = "probation_timer_expired"


class Tick(Frozen):
    """Time passes: drives retries, activation and probation deadlines."""

    kind: Literal["tick"] = "tick"
    now: datetime


class Resumed(Frozen):
    """The agent started again with this persisted state (after a clean stop or a crash)."""

    kind: Literal["resumed"] = "resumed"


Event = Annotated[
    DesiredReceived
    | DesiredRejected
    | DownloadProgress
    | DownloadDone
    | DownloadFailed
    | Verified
    | VerifyFailed
    | Staged
    | StageFailed
    | Activated
    | ActivationFailed
    | ProbationSample
    | GoldenResult
    | ProbationTimerExpired
    | Tick
    | Resumed,
    Field(discriminator="kind"),
]


# --- effects ----------------------------------------------------------------------------


class StartDownload(Frozen):
    """Fetch the target's artifact; a partial download on disk resumes (HTTP Range)."""

    kind: Literal["start_download"] = "start_download"
    target: UpdateTarget


class Verify(Frozen):
    """Check the downloaded artifact against the signed target (hash, length, version)."""

    kind: Literal["verify"] = "verify"
    target: UpdateTarget


class Stage(Frozen):
    """Extract the verified artifact into the store under its content address."""

    kind: Literal["stage"] = "stage"
    target: UpdateTarget


class Activate(Frozen):
    """Re-verify the staged model, switch the store's active slot to it, load it.

    Idempotent: activating what is already active only re-verifies and reloads it.
    """

    kind: Literal["activate"] = "activate"
    target: UpdateTarget


class RunGolden(Frozen):
    """Run the package's golden samples through the active model."""

    kind: Literal["run_golden"] = "run_golden"
    target: UpdateTarget


class RollBack(Frozen):
    """Make ``restore`` active again (``None``: no model was active before) and load it."""

    kind: Literal["roll_back"] = "roll_back"
    reason: str
    failed: InstalledModel
    restore: InstalledModel | None


class Commit(Frozen):
    """The model passed probation: keep it, let the store drop what is no longer needed."""

    kind: Literal["commit"] = "commit"
    model: InstalledModel


class Cleanup(Frozen):
    """Forget a target's partial download and anything staged but never activated."""

    kind: Literal["cleanup"] = "cleanup"
    sha256: Sha256


class CollectGarbage(Frozen):
    """At rest after a restart: drop stored models other than active and previous, and
    leftover downloads. A crash between persisting a terminal phase and its Commit or
    Cleanup effect would otherwise leave them on the disk for good."""

    kind: Literal["collect_garbage"] = "collect_garbage"


class EnsureActive(Frozen):
    """At startup: make sure ``model`` is the store's active model and is loaded."""

    kind: Literal["ensure_active"] = "ensure_active"
    model: InstalledModel | None


class Report(Frozen):
    """Tell the fleet (the events topic) how the deployment is going."""

    kind: Literal["report"] = "report"
    event: EventKind
    target: UpdateTarget | None = None
    reason: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


Effect = Annotated[
    StartDownload
    | Verify
    | Stage
    | Activate
    | RunGolden
    | RollBack
    | Commit
    | Cleanup
    | CollectGarbage
    | EnsureActive
    | Report,
    Field(discriminator="kind"),
]
