"""Turn one MQTT message into an accepted device message or a reason to reject it.

Pure: no broker, no database, no clock (the receive time is passed in), so every way a
payload can be wrong is tested as a table. The writer stores what is `Accepted` and
dead-letters what is `Rejected`; `Ignored` is traffic the fleet itself publishes (the
retained desired state) that a ``devices/+/+`` subscription sees too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

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


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid device message, with when and how it arrived."""

    channel: Channel
    message: DeviceMessage
    received_at: datetime
    retained: bool = False


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that is not valid for its topic, kept verbatim with the reason."""

    topic: str
    payload: bytes
    received_at: datetime
    error: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """A valid topic the fleet does not ingest (fleet→device traffic)."""

    topic: str
    channel: Channel


Decoded = Accepted | Rejected | Ignored


def decode(topic: str, payload: bytes, received_at: datetime, *, retained: bool = False) -> Decoded:
    """Classify one message; never raises for anything a peer can send."""
    try:
        parsed = parse_topic(topic)
    except TopicError as e:
        return Rejected(topic, payload, received_at, str(e))
    if parsed.channel not in DEVICE_TO_FLEET:
        return Ignored(topic, parsed.channel)
    try:
        message = decode_device_message(parsed.channel, parsed.device_id, payload)
    except MessageError as e:
        return Rejected(topic, payload, received_at, f"{parsed.channel.value}: {e}")
    return Accepted(parsed.channel, message, received_at, retained)
