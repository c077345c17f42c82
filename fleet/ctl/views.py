"""The parts of the API's answers that ``edgefleet ctl`` reads.

The command line's own models, not the server's: they declare only the fields it shows
or decides on, and keep every other field (``extra="allow"``), so ``--output json``
prints the answer whole and a newer fleet that adds fields (or rollout statuses) still
works. Strings, lists and numbers are bounded like every model on a wire.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Text = Field(default="", max_length=2000)
Name = Field(max_length=200)


class View(BaseModel):
    """Tolerant reader of one API object."""

    model_config = ConfigDict(extra="allow", protected_namespaces=(), frozen=True)

    def as_json(self) -> dict[str, Any]:
        """The object as the API sent it (declared fields and extras)."""
        return self.model_dump(mode="json")


class Device(View):
    device_id: str = Field(max_length=128)
    online: bool = False
    last_seen: datetime | None = None
    agent_version: str = Field(default="", max_length=200)
    hardware: str = Field(default="", max_length=200)
    tags: list[str] = Field(default_factory=list, max_length=1000)
    model_name: str | None = Field(default=None, max_length=200)
    model_version: str | None = Field(default=None, max_length=200)
    offline_reason: str | None = Field(default=None, max_length=2000)


class DevicePage(View):
    items: list[Device] = Field(max_length=10_000)
    total: int = Field(ge=0)


class Review(View):
    state: str = Field(max_length=64)
    reviewed_by: str | None = Field(default=None, max_length=200)
    remark: str | None = Field(default=None, max_length=2000)


class ModelVersion(View):
    name: str = Name
    version: str = Field(max_length=200)
    runtime: str = Field(default="", max_length=64)
    sha256: str = Field(default="", max_length=64)
    length: int = Field(default=0, ge=0)
    uploaded_by: str = Field(default="", max_length=200)
    uploaded_at: datetime | None = None
    published: bool = False
    review: Review | None = None
    aliases: list[str] = Field(default_factory=list, max_length=1000)


class GateDecision(View):
    wave: int = Field(ge=-1, le=10_000)
    passed: bool
    reasons: list[str] = Field(default_factory=list, max_length=1000)


class Wave(View):
    index: int = Field(ge=0, le=10_000)
    size: int = Field(ge=0)
    end: int = Field(ge=0)
    started: bool = False
    counts: dict[str, int] = Field(default_factory=dict, max_length=100)
    gate_decision: GateDecision | None = None


class RolloutSummary(View):
    id: str = Field(max_length=100)
    model: str = Name
    version: str = Field(max_length=200)
    status: str = Field(max_length=64, description="a string: a newer fleet may add statuses")
    status_reason: str | None = Field(default=None, max_length=10_000)
    created_by: str = Field(default="", max_length=200)
    created_at: datetime | None = None
    current_wave: int = Field(default=-1, ge=-1, le=10_000)
    targets: int = Field(default=0, ge=0)
    wave_sizes: list[int] = Field(default_factory=list, max_length=10_000)
    counts: dict[str, int] = Field(default_factory=dict, max_length=100)
    held: str | None = Field(default=None, max_length=10_000)


class Rollout(RolloutSummary):
    """A rollout's detail (``GET /v1/rollouts/{id}``): what `progress` renders."""

    waves: list[Wave] = Field(default_factory=list, max_length=10_000)


class RolloutPage(View):
    items: list[RolloutSummary] = Field(max_length=10_000)
    total: int = Field(ge=0)


class Alert(View):
    id: str = Field(max_length=32)
    kind: str = Field(max_length=64)
    severity: str = Field(max_length=16)
    model_name: str = Name
    model_version: str = Field(max_length=200)
    slice_key: str = Field(default="", max_length=300)
    message: str = Field(default="", max_length=100_000)
    created_at: datetime | None = None
    acknowledged: dict[str, Any] | None = None


class AlertPage(View):
    items: list[Alert] = Field(max_length=10_000)


class Deployment(View):
    rollout_id: str | None = Field(default=None, max_length=100)
    model_name: str | None = Field(default=None, max_length=200)
    model_version: str | None = Field(default=None, max_length=200)
    phase: str | None = Field(default=None, max_length=64)
    outcome: str = Field(default="", max_length=64)
    started_at: datetime | None = None
    reasons: list[str] = Field(default_factory=list, max_length=1000)


class DeviceDeployments(View):
    device_id: str = Field(max_length=128)
    current: Deployment | None = None
    history: list[Deployment] = Field(default_factory=list, max_length=10_000)


class DesiredTarget(View):
    name: str = Field(max_length=200, description="the TUF target's name, not the model's")
    version: str = Field(max_length=200)


class DesiredBody(View):
    seq: int = Field(ge=0)
    target: DesiredTarget
    rollback: bool = False


class DesiredState(View):
    """A signed desired state as ``PUT /v1/devices/{id}/desired`` answers it."""

    signed: DesiredBody


class EnrollmentToken(View):
    """A new one-time enrollment token (the only answer that shows it)."""

    token: str = Field(max_length=128)
    expires_at: datetime | None = None
    device_id: str | None = Field(default=None, max_length=128)


class WhoAmI(View):
    name: str = Name
