"""Turn one MQTT message into an accepted device message or a reason to reject it.

Pure: no broker, no database, no clock (the receive time is passed in), so every way a
payload can be wrong is tested as a table. The writer stores what is `Accepted` and
dead-letters what is `Rejected`; `Ignored` is traffic the fleet itself publishes (the
retained desired state) that a ``devices/+/+`` subscription sees too.

Seq sanity: a device's ``seq`` is not a plain counter. The agent's outbox starts it at
its wall clock in microseconds (``clock_floor_seq`` in ``agent/outbox.py``, also after a
wiped data dir) and adds one a message, so a real device's seq never runs ahead of its
own clock, however long it was off. A seq beyond `seq_ceiling` (the fleet's clock plus
``max_ahead_s``) therefore cannot come from an agent whose clock is right within that
bound: it is rejected, because the registry keeps the state with the highest seq and a
forged one far in the future would freeze the device's state until then. The same
bound holds for the first message of a device the fleet has never seen (there is no
earlier seq to compare with, and none is needed), and a device that restarts after any
downtime is within it. Why not a bound on the jump from the last stored seq: a restart
jumps by the downtime in microseconds, so such a bound either refuses real devices
after a long outage or lets a forged seq through.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from edgefleet.shared.limits import MAX_INT64
from edgefleet.shared.messages import (
    DriftMessage,
    EventMessage,
    MessageError,
    StateMessage,
    TelemetryMessage,
    decode_device_message,
)
from edgefleet.shared.topics import DEVICE_TO_FLEET, Channel, TopicError, parse_topic

DeviceMessage = StateMessage | TelemetryMessage | EventMessage | DriftMessage

# Default of FleetSettings.ingest_seq_max_ahead_s (a test keeps the two equal).
SEQ_MAX_AHEAD_S = 24 * 3600.0
# Messages an agent may send within the millisecond its clock floor was taken in:
# without it a device with an exact clock could send a seq above a ceiling of now.
_SEQ_SLACK = 1_000_000


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid device message, with when and how it arrived."""

    channel: Channel
    message: DeviceMessage
    received_at: datetime
    retained: bool = False


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that is not valid for its topic, with the reason.

    ``payload`` is the payload as received, or only its first bytes when it was cut on
    arrival (`Oversized`); ``size`` and ``sha256`` are always of the whole payload.
    """

    topic: str
    payload: bytes
    received_at: datetime
    error: str
    size: int | None = None  # None: len(payload)
    sha256: str | None = None  # None: of payload

    @property
    def payload_size(self) -> int:
        return len(self.payload) if self.size is None else self.size

    @property
    def payload_sha256(self) -> str:
        return hashlib.sha256(self.payload).hexdigest() if self.sha256 is None else self.sha256


@dataclass(frozen=True, slots=True)
class Oversized:
    """A payload larger than the ingester takes, cut on arrival so that the hand-off
    never holds more than its first ``len(prefix)`` bytes; raises nothing."""

    prefix: bytes
    size: int
    sha256: str
    limit: int

    @classmethod
    def of(cls, payload: bytes, *, limit: int, keep: int) -> Oversized:
        """The first ``keep`` bytes of ``payload`` (larger than ``limit``), its size, hash."""
        return cls(payload[:keep], len(payload), hashlib.sha256(payload).hexdigest(), limit)


@dataclass(frozen=True, slots=True)
class Ignored:
    """A valid topic the fleet does not ingest (fleet→device traffic)."""

    topic: str
    channel: Channel


Decoded = Accepted | Rejected | Ignored


def seq_ceiling(received_at: datetime, max_ahead_s: float = SEQ_MAX_AHEAD_S) -> int:
    """The largest seq an agent whose clock is at most ``max_ahead_s`` ahead of the fleet's
    can send at ``received_at`` (see the module docstring)."""
    ceiling = int((received_at.timestamp() + max_ahead_s) * 1_000_000) + _SEQ_SLACK
    return min(ceiling, MAX_INT64)


def implied_clock(seq: int) -> str:
    """The device clock a seq implies (its start time, if it came from an agent)."""
    try:
        return datetime.fromtimestamp(seq / 1_000_000, UTC).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):
        return "after the year 9999"


def _rejected(topic: str, payload: bytes | Oversized, at: datetime, error: str) -> Rejected:
    if isinstance(payload, Oversized):
        return Rejected(topic, payload.prefix, at, error, payload.size, payload.sha256)
    return Rejected(topic, payload, at, error)


def decode(
    topic: str,
    payload: bytes | Oversized,
    received_at: datetime,
    *,
    retained: bool = False,
    seq_max_ahead_s: float = SEQ_MAX_AHEAD_S,
) -> Decoded:
    """Classify one message; never raises for anything a peer can send.

    A valid message whose seq is beyond `seq_ceiling` (``received_at`` plus
    ``seq_max_ahead_s``) is `Rejected`, not trusted; so is an `Oversized` payload.
    """
    try:
        parsed = parse_topic(topic)
    except TopicError as e:
        return _rejected(topic, payload, received_at, str(e))
    if parsed.channel not in DEVICE_TO_FLEET:
        return Ignored(topic, parsed.channel)
    if isinstance(payload, Oversized):
        return _rejected(
            topic,
            payload,
            received_at,
            f"{parsed.channel.value}: payload of {payload.size} bytes is larger than the"
            f" {payload.limit} the ingester takes (ingest_max_payload_bytes)",
        )
    try:
        message = decode_device_message(parsed.channel, parsed.device_id, payload)
    except MessageError as e:
        return Rejected(topic, payload, received_at, f"{parsed.channel.value}: {e}")
    ceiling = seq_ceiling(received_at, seq_max_ahead_s)
    if message.seq > ceiling:
        return Rejected(
            topic,
            payload,
            received_at,
            f"{parsed.channel.value}: seq {message.seq} is implausibly far ahead: agent seqs"
            f" count from the device's clock in microseconds, this one implies a clock at"
            f" {implied_clock(message.seq)}, more than {seq_max_ahead_s:g}s ahead of the"
            f" fleet's (at most {ceiling})",
        )
    return Accepted(parsed.channel, message, received_at, retained)
