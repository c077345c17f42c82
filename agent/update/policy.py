"""The update machine's phases and config-given limits, apart from the machine itself.

`edgefleet.agent.config` and the metrics exposition need these two names on every
device; the machine (`edgefleet.agent.update.machine`), its acceptance rules and its event
models are only imported where updates are enabled, which keeps ~0.5 MiB of modules and
pydantic schemas out of an idle agent without updates (issue 15).
"""

from __future__ import annotations

from enum import StrEnum, auto

from pydantic import BaseModel, ConfigDict, Field


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Phase(StrEnum):
    IDLE = auto()
    DOWNLOADING = auto()
    VERIFYING = auto()
    STAGED = auto()
    ACTIVATING = auto()
    PROBATION = auto()
    COMMITTED = auto()
    ROLLED_BACK = auto()
    FAILED = auto()


class UpdatePolicy(Frozen):
    """Limits of the machine that come from the agent's config, not from the model."""

    max_download_attempts: int = Field(default=5, ge=1)
    retry_base_s: float = Field(default=2.0, ge=0)
    retry_max_s: float = Field(default=300.0, ge=0)
    retry_jitter: float = Field(
        default=0.5, ge=0, le=1, description="share of a retry delay that is random"
    )
    max_activation_attempts: int = Field(default=3, ge=1)
    max_probation_restarts: int = Field(default=2, ge=0)
    golden_timeout_s: float = Field(
        default=120.0, ge=0, description="after the probation window, wait this long for golden"
    )
    max_latency_samples: int = Field(default=1000, ge=1)
