"""The MQTT topic scheme, as builders and one parser.

Every topic edgefleet uses is built here and parsed here, so the scheme lives in one
place. ``parse_topic(device_topic(d, k)) == DeviceTopic(d, k)`` holds for every valid
device id and kind (tested round trip).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

PREFIX = "edgefleet/v1"
ALERTS_TOPIC = f"{PREFIX}/fleet/alerts"

# Device ids become topic levels and file names, so keep them to a safe alphabet.
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)


class Channel(StrEnum):
    """A device's topics, one per kind of message."""

    STATE = "state"
    TELEMETRY = "telemetry"
    DRIFT = "drift"
    EVENTS = "events"
    DESIRED = "desired"
    STORED = "stored"  # fleet→device: seqs the fleet has durably stored (see messages)


DEVICE_TO_FLEET: frozenset[Channel] = frozenset(
    {Channel.STATE, Channel.TELEMETRY, Channel.DRIFT, Channel.EVENTS}
)


class TopicError(ValueError):
    """A topic or device id that is not part of the edgefleet scheme."""


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    """A parsed device topic."""

    device_id: str
    channel: Channel


def validate_device_id(device_id: str) -> str:
    """Return ``device_id`` unchanged, or raise `TopicError` if it is not topic-safe."""
    if not _DEVICE_ID_RE.match(device_id):
        raise TopicError(
            f"device id {device_id!r} must be 1-128 characters of letters, digits, '.', '_'"
            " or '-', starting with a letter or digit"
        )
    return device_id


def device_topic(device_id: str, channel: Channel) -> str:
    """``edgefleet/v1/devices/{device_id}/{channel}``; raises `TopicError` on a bad id."""
    return f"{PREFIX}/devices/{validate_device_id(device_id)}/{channel.value}"


def device_filter(channel: Channel | None = None) -> str:
    """A subscription filter for one channel of every device, or all of their channels."""
    return f"{PREFIX}/devices/+/{channel.value if channel else '+'}"


def shared_filter(group: str, topic_filter: str) -> str:
    """An MQTT 5 shared subscription, so several fleet replicas split the load."""
    return f"$share/{group}/{topic_filter}"


def parse_topic(topic: str) -> DeviceTopic:
    """Parse a device topic; raises `TopicError` for anything outside the scheme."""
    match topic.split("/"):
        case ["edgefleet", "v1", "devices", device_id, channel]:
            try:
                parsed = Channel(channel)
            except ValueError:
                raise TopicError(f"unknown channel {channel!r} in topic {topic!r}") from None
            return DeviceTopic(validate_device_id(device_id), parsed)
        case _:
            raise TopicError(f"topic {topic!r} is not an edgefleet v1 device topic")
