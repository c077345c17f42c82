"""The messages on the wire: one pydantic model per topic kind.

Invariants:
- every message carries ``"schema": "edgefleet/v1/<kind>"`` and the kind matches its topic;
- every device message carries its ``device_id`` (equal to the topic's) and a per-device
  ``seq`` that only grows, so the fleet can drop the duplicates QoS 1 allows;
- readers ignore unknown fields, so old and new agents can share one fleet;
- everything a device sends is bounded (see "Bounds" below), so no payload can make the
  fleet store a value its columns, its REST schemas or its rollout selectors cannot take.

Bounds: every float is finite (no NaN, no Infinity: JSON has neither and REST would show
``null``); every int fits a signed 64-bit column (``seq`` and counters 0..2**63-1);
durations (``interval_s``, ``uptime_s``) are 0..1e10 s, latencies 0..1e7 ms,
``cpu_percent`` 0..102_400 (1024 busy cores); ``hardware`` is at most 100 characters,
``tags`` at most 64 of at most 100 characters each, ``runtimes`` at most 16; free-text
``reason`` fields keep their first 1000 characters; an event's ``detail`` has at most 64
keys and 16 KiB of JSON; drift sketches are bounded in `edgefleet.shared.drift.bounds`.
Fleet→subscriber alerts: ``id`` and ``kind`` at most 200 characters, ``message`` keeps
its first 2000, ``device_id`` follows the device id pattern, ``evidence`` at most 256
keys and 256 KiB of JSON; a desired state has at most 16 signatures; a stored
acknowledgement at most `MAX_STORED_RANGES` seq ranges. The constants below are the single
source of these numbers (the AsyncAPI document carries them).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from edgefleet.shared.drift.compact import CompactSketch, parse_wire_sketch, sketch_to_wire
from edgefleet.shared.drift.window import WindowSketch
from edgefleet.shared.limits import MAX_INT64
from edgefleet.shared.signing.director import DesiredBody, DirectorSignature
from edgefleet.shared.topics import DEVICE_ID_PATTERN, Channel

SCHEMA_PREFIX = "edgefleet/v1/"

MAX_DURATION_S = 1e10  # ~317 years
MAX_LATENCY_MS = 1e7  # ~2.8 hours for one inference
MAX_CPU_PERCENT = 102_400.0  # psutil reports 100 per busy core: 1024 cores
MAX_HARDWARE_CHARS = 100  # as the agent's config allows
MAX_TAGS = 64
MAX_TAG_CHARS = 100
MAX_RUNTIMES = 16
MAX_NAME_CHARS = 200  # platform strings, agent versions, rollout ids
MAX_REASON_CHARS = 1000
MAX_DETAIL_KEYS = 64
MAX_DETAIL_JSON_BYTES = 16 * 1024
MAX_ALERT_MESSAGE_CHARS = 2000
MAX_EVIDENCE_KEYS = 256
MAX_EVIDENCE_JSON_BYTES = 256 * 1024
MAX_SIGNATURES = 16
MAX_STORED_RANGES = 256

Count = Annotated[int, Field(ge=0, le=MAX_INT64)]
DurationS = Annotated[float, Field(ge=0, le=MAX_DURATION_S)]
LatencyMs = Annotated[float, Field(ge=0, le=MAX_LATENCY_MS)]
Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]


def _cut_reason(value: object) -> object:
    # A reason is an exception's text on the device, of any length; cutting it keeps
    # the agent able to report it and the fleet's rows bounded.
    return value[:MAX_REASON_CHARS] if isinstance(value, str) else value


Reason = Annotated[str, BeforeValidator(_cut_reason), Field(max_length=MAX_REASON_CHARS)]


def _json_bytes_at_most(limit: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def check(value: dict[str, Any]) -> dict[str, Any]:
        # Any-typed values escape allow_inf_nan, so the dump refuses NaN and Infinity here.
        try:
            size = len(json.dumps(value, separators=(",", ":"), allow_nan=False).encode())
        except (TypeError, ValueError) as e:
            raise ValueError(f"not finite JSON: {e}") from e
        if size > limit:
            raise ValueError(f"at most {limit} bytes of JSON, found {size}")
        return value

    return check


Detail = Annotated[
    dict[str, Any],
    Field(max_length=MAX_DETAIL_KEYS),
    AfterValidator(_json_bytes_at_most(MAX_DETAIL_JSON_BYTES)),
]
Evidence = Annotated[
    dict[str, Any],
    Field(max_length=MAX_EVIDENCE_KEYS),
    AfterValidator(_json_bytes_at_most(MAX_EVIDENCE_JSON_BYTES)),
]


def _cut_alert_message(value: object) -> object:
    # The fleet writes alert messages from names and errors of any length: cut, not refuse.
    return value[:MAX_ALERT_MESSAGE_CHARS] if isinstance(value, str) else value


AlertText = Annotated[
    str, BeforeValidator(_cut_alert_message), Field(max_length=MAX_ALERT_MESSAGE_CHARS)
]


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (the only kind of time on the wire)."""
    return datetime.now(UTC)


class MessageError(ValueError):
    """A payload that is not a valid edgefleet message for its topic."""


class WireModel(BaseModel):
    """Base of everything that crosses a wire: unknown fields ignored, aliases accepted."""

    model_config = ConfigDict(
        extra="ignore", populate_by_name=True, frozen=True, allow_inf_nan=False
    )


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
    seq: int = Field(ge=0, le=MAX_INT64, description="per-device sequence number; only grows")
    ts: datetime = Field(default_factory=utcnow, description="when the device made it")


class PlatformInfo(WireModel):
    """What the device's hardware and OS report about themselves."""

    machine: Name = ""
    system: Name = ""
    python: Name = ""
    cpu_count: int = Field(default=0, ge=0, le=1 << 20)
    memory_bytes: Count = 0


class StateMessage(DeviceMessageBase):
    """Birth (retained, online) and the last will (retained, offline)."""

    schema_: Literal["edgefleet/v1/state"] = Field(default="edgefleet/v1/state", alias="schema")
    online: bool
    agent_version: Name = ""
    hardware: str = Field(
        default="",
        max_length=MAX_HARDWARE_CHARS,
        description="hardware type, used by rollout selectors",
    )
    platform: PlatformInfo = Field(default_factory=PlatformInfo)
    tags: list[Annotated[str, Field(max_length=MAX_TAG_CHARS)]] = Field(
        default_factory=list, max_length=MAX_TAGS
    )
    runtimes: list[Annotated[str, Field(max_length=32)]] = Field(
        default_factory=list, max_length=MAX_RUNTIMES
    )
    active_model: ModelRef | None = None
    reason: Reason | None = Field(default=None, description="why offline: shutdown, will, ...")


class LatencyPercentiles(WireModel):
    """Inference latency percentiles over one telemetry interval, in milliseconds."""

    p50_ms: LatencyMs
    p95_ms: LatencyMs
    p99_ms: LatencyMs


class TelemetryMessage(DeviceMessageBase):
    """Periodic health of one device over the last interval."""

    schema_: Literal["edgefleet/v1/telemetry"] = Field(
        default="edgefleet/v1/telemetry", alias="schema"
    )
    interval_s: DurationS
    inferences: Count = Field(description="in this interval")
    errors: Count = Field(description="in this interval")
    inferences_total: Count
    errors_total: Count
    latency: LatencyPercentiles | None = None
    cpu_percent: float = Field(ge=0, le=MAX_CPU_PERCENT)
    rss_bytes: Count
    disk_free_bytes: Count
    outbox_depth: Count
    outbox_dropped_total: Count = 0
    uptime_s: DurationS = 0
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
    desired_seq: Count | None = None
    rollout_id: Name | None = None
    reason: Reason | None = None
    detail: Detail = Field(default_factory=dict)


# On the wire the sketch is compact (version 2, `edgefleet.shared.drift.compact`); agents
# before it send version 1, which is still read. Either way the message holds the same
# `WindowSketch`, so nothing past the decoder knows which form came in.
WireSketch = Annotated[
    WindowSketch | None,
    BeforeValidator(parse_wire_sketch, json_schema_input_type=CompactSketch | WindowSketch | None),
    PlainSerializer(sketch_to_wire, when_used="json"),
]


class DriftMessage(DeviceMessageBase):
    """One closed drift window: mergeable summaries of inputs and outputs."""

    schema_: Literal["edgefleet/v1/drift"] = Field(default="edgefleet/v1/drift", alias="schema")
    model: ModelRef | None = None
    window_start: datetime
    window_end: datetime
    count: Count
    # Counts in the bins of the model package's reference profile (see shared.drift);
    # None only from agents that predate drift sketches.
    sketch: WireSketch = Field(
        default=None,
        description="the window: compact (v 2) from current agents, version 1 from older "
        "ones; bin edges and categories are the profile's (profile_id)",
    )

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
    signatures: list[DirectorSignature] = Field(min_length=1, max_length=MAX_SIGNATURES)

    @property
    def device_id(self) -> str:
        return self.signed.device_id

    @property
    def seq(self) -> int:
        return self.signed.seq


Seq = Annotated[int, Field(ge=0, le=MAX_INT64)]


class StoredMessage(WireModel):
    """Fleet→device (retained): seqs of this device's messages that the fleet has stored.

    Published on ``edgefleet/v1/devices/{d}/stored`` after the database transaction that
    holds them committed. ``seqs`` are inclusive ``[lo, hi]`` ranges (`edgefleet.shared.seqranges`)
    of seqs that are in the database: stored now, found already stored (a duplicate), or
    dead-lettered (a message the fleet refuses is never worth sending again). A range says
    nothing about seqs inside it that the device never sent. Each publish covers what one
    replica stored since its previous publish for the device, so the retained copy is only
    the latest of them; an agent takes the union of everything it receives.
    """

    schema_: Literal["edgefleet/v1/stored"] = Field(default="edgefleet/v1/stored", alias="schema")
    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    seqs: list[tuple[Seq, Seq]] = Field(
        min_length=1, max_length=MAX_STORED_RANGES, description="inclusive [lo, hi] ranges"
    )
    ts: datetime = Field(default_factory=utcnow, description="when the fleet published it")

    @field_validator("seqs")
    @classmethod
    def _ranges_are_ordered(cls, seqs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        for lo, hi in seqs:
            if lo > hi:
                raise ValueError(f"range [{lo}, {hi}] ends before it starts")
        return seqs


def decode_stored(device_id: str, payload: bytes) -> StoredMessage:
    """Validate a stored acknowledgement received on ``device_id``'s stored topic.

    Raises `MessageError` if it is not one, or names another device.
    """
    try:
        message = StoredMessage.model_validate_json(payload)
    except ValidationError as e:
        raise MessageError(_describe(e)) from e
    if message.device_id != device_id:
        raise MessageError(
            f"device_id {message.device_id!r} in a message on device {device_id!r}'s topic"
        )
    return message


class AlertMessage(WireModel):
    """Fleet→subscribers: something an operator or a pipeline should act on."""

    schema_: Literal["edgefleet/v1/alert"] = Field(default="edgefleet/v1/alert", alias="schema")
    id: Name
    kind: Name
    severity: Literal["info", "warning", "critical"] = "warning"
    message: AlertText
    ts: datetime = Field(default_factory=utcnow)
    device_id: str | None = Field(default=None, pattern=DEVICE_ID_PATTERN)
    evidence: Evidence = Field(default_factory=dict)


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
    Channel.STORED: StoredMessage,
}


_DEVICE_CHANNEL_MODELS: dict[
    Channel, type[StateMessage | TelemetryMessage | EventMessage | DriftMessage]
] = {
    Channel.STATE: StateMessage,
    Channel.TELEMETRY: TelemetryMessage,
    Channel.EVENTS: EventMessage,
    Channel.DRIFT: DriftMessage,
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
    # The topic's own model first: a quarter cheaper than the discriminated union, which
    # the ingester pays per message. Only a payload that names its schema is taken
    # (the models default it); anything else gets the union's verdict and error.
    model = _DEVICE_CHANNEL_MODELS.get(channel)
    if model is not None:
        try:
            direct = model.model_validate_json(payload)
        except ValidationError:
            pass
        else:
            if "schema_" in direct.model_fields_set and direct.device_id == device_id:
                return direct
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
