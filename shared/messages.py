"""The messages on the wire: one pydantic model per topic kind.

Invariants:
- every message carries ``"schema": "edgefleet/v1/<kind>"`` and the kind matches its topic;
- every device message carries its ``device_id`` (equal to the topic's) and a per-device
  ``seq`` that only grows, so the fleet can drop the duplicates QoS 1 allows;
- readers ignore unknown fields, so old and new agents can share one fleet.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from edgefleet.shared.drift.window import WindowSketch
from edgefleet.shared.signing.director import DesiredBody, DirectorSignature
from edgefleet.shared.topics import DEVICE_ID_PATTERN, Channel

SCHEMA_PREFIX = "edgefleet/v1/"


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (the only kind of time on the wire)."""
    return datetime.now(UTC)


class MessageError(ValueError):
    """A payload that is not a valid edgefleet message for its topic."""


class WireModel(BaseModel):
    """Base of everything that crosses a wire: unknown fields ignored, aliases accepted."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class ModelRef(WireModel):
    """Which model a device runs or is deploying; one meaning in every message.

    ``name`` is the model's manifest name (``wine``), ``sha256`` the content address of
    the package (the TUF target's hash, the agent's store directory) and ``target`` the
    TUF target name the package was deployed as (``wine-1.1.0.efpkg``), when there is
    one. The fleet identifies a model by ``sha256``; ``name`` and ``version`` are for
    people and for models without a package (a bare factory model has no sha256).

    Agents before ``target`` existed put the target name in ``name`` on the events
    topic; such messages still parse (the fleet compares by ``sha256``, so they are
    attributed the same).
    """

    name: str = Field(min_length=1, max_length=200, description="the manifest's model name")
    version: str = Field(min_length=1, max_length=64, description="the manifest's version")
    sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="of the package (TUF target)"
    )
    target: str | None = Field(
        default=None, min_length=1, max_length=200, description="the TUF target name, if any"
    )


class DeviceMessageBase(WireModel):
    """Fields every device→fleet message has."""

    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    seq: int = Field(ge=0, description="per-device sequence number; only grows")
    ts: datetime = Field(default_factory=utcnow, description="when the device made it")


class PlatformInfo(WireModel):
    """What the device's hardware and OS report about themselves."""

    machine: str = ""
    system: str = ""
    python: str = ""
    cpu_count: int = 0
    memory_bytes: int = 0


class StateMessage(DeviceMessageBase):
    """Birth (retained, online) and the last will (retained, offline)."""

    schema_: Literal["edgefleet/v1/state"] = Field(default="edgefleet/v1/state", alias="schema")
    online: bool
    agent_version: str = ""
    hardware: str = Field(default="", description="hardware type, used by rollout selectors")
    platform: PlatformInfo = Field(default_factory=PlatformInfo)
    tags: list[str] = Field(default_factory=list)
    runtimes: list[str] = Field(default_factory=list)
    active_model: ModelRef | None = None
    reason: str | None = Field(default=None, description="why offline: shutdown, will, ...")


class LatencyPercentiles(WireModel):
    """Inference latency percentiles over one telemetry interval, in milliseconds."""

    p50_ms: float
    p95_ms: float
    p99_ms: float


class TelemetryMessage(DeviceMessageBase):
    """Periodic health of one device over the last interval."""

    schema_: Literal["edgefleet/v1/telemetry"] = Field(
        default="edgefleet/v1/telemetry", alias="schema"
    )
    interval_s: float = Field(ge=0)
    inferences: int = Field(ge=0, description="in this interval")
    errors: int = Field(ge=0, description="in this interval")
    inferences_total: int = Field(ge=0)
    errors_total: int = Field(ge=0)
    latency: LatencyPercentiles | None = None
    cpu_percent: float = Field(ge=0)
    rss_bytes: int = Field(ge=0)
    disk_free_bytes: int = Field(ge=0)
    outbox_depth: int = Field(ge=0)
    outbox_dropped_total: int = Field(ge=0, default=0)
    uptime_s: float = Field(ge=0, default=0)
    active_model: ModelRef | None = None


class EventKind(StrEnum):
    """Deployment progress as the device reports it."""

    DOWNLOADING = "downloading"
    VERIFIED = "verified"
    STAGED = "staged"
    ACTIVATED = "activated"
    HEALTHY = "healthy"
    COMMITTED = "committed"
    FAILED = "failed"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"
    INFO = "info"


class EventMessage(DeviceMessageBase):
    """One step of a deployment, with the reason when something went wrong."""

    schema_: Literal["edgefleet/v1/events"] = Field(default="edgefleet/v1/events", alias="schema")
    kind: EventKind
    model: ModelRef | None = None
    desired_seq: int | None = None
    rollout_id: str | None = None
    reason: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class DriftMessage(DeviceMessageBase):
    """One closed drift window: mergeable summaries of inputs and outputs."""

    schema_: Literal["edgefleet/v1/drift"] = Field(default="edgefleet/v1/drift", alias="schema")
    model: ModelRef | None = None
    window_start: datetime
    window_end: datetime
    count: int = Field(ge=0)
    # Counts in the bins of the model package's reference profile (see shared.drift);
    # None only from agents that predate drift sketches.
    sketch: WindowSketch | None = None

    @field_validator("sketch", mode="before")
    @classmethod
    def _empty_sketch_is_none(cls, value: object) -> object:
        # Agents before drift sketches sent an empty object here.
        return None if value == {} else value


class DesiredMessage(WireModel):
    """Fleet→device (retained): the director's signed desired state, as it is on the wire.

    The payload on ``edgefleet/v1/devices/{d}/desired`` *is* the director's envelope
    (`edgefleet.shared.signing.director.SignedDesiredState`): ``{"signed": <body>, "signatures":
    [...]}``; the body carries ``"schema": "edgefleet/v1/desired-state"``, the device id,
    a growing ``seq``, the target (name, sha256, length, version), ``expires_at``,
    ``rollout_id`` and ``rollback``. This model only types that shape (for the AsyncAPI
    document and for subscribers that want to read it): it does not check signatures.
    A device must verify the raw bytes with `edgefleet.shared.signing.director.verify_desired`,
    because the signature covers the body exactly as received.
    """

    signed: DesiredBody
    signatures: list[DirectorSignature] = Field(min_length=1)

    @property
    def device_id(self) -> str:
        return self.signed.device_id

    @property
    def seq(self) -> int:
        return self.signed.seq


class AlertMessage(WireModel):
    """Fleet→subscribers: something an operator or a pipeline should act on."""

    schema_: Literal["edgefleet/v1/alert"] = Field(default="edgefleet/v1/alert", alias="schema")
    id: str
    kind: str
    severity: Literal["info", "warning", "critical"] = "warning"
    message: str
    ts: datetime = Field(default_factory=utcnow)
    device_id: str | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)


AnyDeviceMessage = Annotated[
    StateMessage | TelemetryMessage | EventMessage | DriftMessage,
    Field(discriminator="schema_"),
]
_DEVICE_MESSAGE = TypeAdapter[StateMessage | TelemetryMessage | EventMessage | DriftMessage](
    AnyDeviceMessage
)

CHANNEL_MODELS: dict[Channel, type[WireModel]] = {
    Channel.STATE: StateMessage,
    Channel.TELEMETRY: TelemetryMessage,
    Channel.EVENTS: EventMessage,
    Channel.DRIFT: DriftMessage,
    Channel.DESIRED: DesiredMessage,
}


def encode(message: WireModel) -> bytes:
    """Serialise a message to the JSON bytes published on MQTT."""
    return message.model_dump_json(by_alias=True, exclude_none=False).encode()


def decode_device_message(
    channel: Channel, device_id: str, payload: bytes
) -> StateMessage | TelemetryMessage | EventMessage | DriftMessage:
    """Validate a device→fleet payload received on ``channel`` of ``device_id``.

    Raises `MessageError` naming what is wrong: not JSON, schema of another kind,
    a field out of range, or a device id that differs from the topic's.
    """
    try:
        message = _DEVICE_MESSAGE.validate_json(payload)
    except ValidationError as e:
        raise MessageError(_describe(e)) from e
    expected = f"{SCHEMA_PREFIX}{channel.value}"
    if message.schema_ != expected:
        raise MessageError(f"schema {message.schema_!r} on the {channel.value} topic")
    if message.device_id != device_id:
        raise MessageError(
            f"device_id {message.device_id!r} in a message on device {device_id!r}'s topic"
        )
    return message


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "payload"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)
