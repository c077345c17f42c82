"""Generated MQTT payloads for fuzzing the fleet's ingest, each labelled with its fate.

`fuzz_messages` is deterministic for a seed. Every message says what the fleet must do
with it: ``stored`` (a valid message, hostile values at the documented bounds included),
``dead`` (dead-lettered: garbage, huge, deeply nested, non-finite, out of range, wrong
schema, wrong device, a seq from far in the future) or ``ignored`` (fleet-to-device
traffic). Labels come from the documented bounds in `edgefleet.shared.messages`, not
from the fleet's decoder, so a decoder that accepts too much or too little fails.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from edgefleet.shared.limits import MAX_INT64
from edgefleet.shared.messages import (
    MAX_CPU_PERCENT,
    MAX_DETAIL_KEYS,
    MAX_DURATION_S,
    MAX_HARDWARE_CHARS,
    MAX_REASON_CHARS,
    MAX_RUNTIMES,
    MAX_TAG_CHARS,
    MAX_TAGS,
    DriftMessage,
    EventKind,
    EventMessage,
    LatencyPercentiles,
    StateMessage,
    TelemetryMessage,
    WireModel,
    encode,
)
from edgefleet.shared.topics import DEVICE_TO_FLEET, Channel, device_topic

Fate = Literal["stored", "dead", "ignored"]
HUGE_BYTES = 1_000_000
T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class FuzzMessage:
    """One publish: where, what, and what the fleet must do with it (and why)."""

    topic: str
    payload: bytes
    fate: Fate
    why: str


def _base(channel: Channel, device_id: str, seq: int) -> dict[str, Any]:
    message: WireModel
    if channel is Channel.STATE:
        message = StateMessage(device_id=device_id, seq=seq, ts=T0, online=True, hardware="rpi4")
    elif channel is Channel.TELEMETRY:
        message = TelemetryMessage(
            device_id=device_id,
            seq=seq,
            ts=T0,
            interval_s=10.0,
            inferences=1,
            errors=0,
            inferences_total=1,
            errors_total=0,
            latency=LatencyPercentiles(p50_ms=1.0, p95_ms=2.0, p99_ms=3.0),
            cpu_percent=5.0,
            rss_bytes=1,
            disk_free_bytes=1,
            outbox_depth=0,
        )
    elif channel is Channel.EVENTS:
        message = EventMessage(device_id=device_id, seq=seq, ts=T0, kind=EventKind.INFO)
    else:
        message = DriftMessage(
            device_id=device_id, seq=seq, ts=T0, window_start=T0, window_end=T0, count=1
        )
    raw: dict[str, Any] = json.loads(encode(message))
    return raw


def valid_payload(channel: Channel, device_id: str, seq: int) -> bytes:
    """A valid device message of ``channel`` for ``device_id``, as the wire carries it."""
    return _dump(_base(channel, device_id, seq))


def _dump(value: object) -> bytes:
    # allow_nan: a hostile peer writes NaN and Infinity, which JSON itself does not have.
    return json.dumps(value, allow_nan=True).encode()


# Values out of the documented bounds, per channel: (field path, value, why).
_COMMON_BAD: list[tuple[str, object, str]] = [
    ("seq", -1, "negative seq"),
    ("seq", MAX_INT64 + 1, "seq beyond int64"),
    ("seq", 2**64, "seq beyond uint64"),
    ("seq", 2**62, "seq far in the future"),
    ("seq", MAX_INT64, "seq at int64 max: far in the future"),
    ("seq", "twelve", "seq as a word"),
    ("seq", 1.5, "fractional seq"),
    ("seq", None, "null seq"),
    ("device_id", "-bad", "device id outside the alphabet"),
    ("schema", "edgefleet/v9/telemetry", "unknown schema"),
    ("ts", "yesterday", "not a time"),
    ("ts", 1e300, "time out of range"),
]
_BAD: dict[Channel, list[tuple[str, object, str]]] = {
    Channel.TELEMETRY: [
        ("cpu_percent", float("inf"), "infinite cpu"),
        ("cpu_percent", float("nan"), "NaN cpu"),
        ("cpu_percent", 1e308, "cpu beyond the bound"),
        ("cpu_percent", MAX_CPU_PERCENT * 1.01, "cpu just beyond the bound"),
        ("cpu_percent", -1.0, "negative cpu"),
        ("interval_s", float("-inf"), "minus infinite interval"),
        ("interval_s", MAX_DURATION_S * 10, "interval beyond the bound"),
        ("uptime_s", float("inf"), "infinite uptime"),
        ("latency.p99_ms", float("nan"), "NaN latency"),
        ("latency.p50_ms", 1e308, "latency beyond the bound"),
        ("rss_bytes", MAX_INT64 + 1, "counter beyond int64"),
        ("inferences", -5, "negative counter"),
        ("inferences_total", 10**40, "huge counter"),
        ("outbox_depth", [1], "list for a counter"),
    ],
    Channel.STATE: [
        ("hardware", "h" * (MAX_HARDWARE_CHARS + 1), "hardware too long"),
        ("tags", ["t"] * (MAX_TAGS + 1), "too many tags"),
        ("tags", ["t" * (MAX_TAG_CHARS + 1)], "tag too long"),
        ("runtimes", ["onnx"] * (MAX_RUNTIMES + 1), "too many runtimes"),
        ("online", [], "list for a bool"),
        ("platform.cpu_count", 2**40, "cpu count beyond the bound"),
        ("platform.memory_bytes", float("inf"), "infinite memory"),
    ],
    Channel.EVENTS: [
        ("kind", "explode", "unknown event kind"),
        ("detail", {f"k{i}": i for i in range(MAX_DETAIL_KEYS + 1)}, "too many detail keys"),
        ("detail", {"blob": "x" * 20_000}, "detail beyond 16 KiB"),
        ("detail", {"x": float("nan")}, "NaN in detail"),
        ("detail", {"x": float("inf")}, "Infinity in detail"),
        ("desired_seq", -1, "negative desired seq"),
    ],
    Channel.DRIFT: [
        ("count", -1, "negative count"),
        ("count", MAX_INT64 + 1, "count beyond int64"),
        ("window_start", "soon", "not a time"),
        ("sketch", [1, 2], "list for a sketch"),
        ("sketch", {"profile_id": 5}, "sketch of the wrong shape"),
    ],
}
# Values at the documented bounds that must still be stored.
_EDGE: dict[Channel, list[tuple[str, object, str]]] = {
    Channel.TELEMETRY: [
        ("cpu_percent", MAX_CPU_PERCENT, "cpu at the bound"),
        ("interval_s", MAX_DURATION_S, "interval at the bound"),
        ("inferences_total", MAX_INT64, "counter at int64 max"),
        ("rss_bytes", MAX_INT64, "rss at int64 max"),
        ("latency", None, "no latency"),
    ],
    Channel.STATE: [
        ("hardware", "h" * MAX_HARDWARE_CHARS, "hardware at the bound"),
        ("tags", ["t" * MAX_TAG_CHARS] * MAX_TAGS, "tags at the bound"),
        ("reason", "r" * (MAX_REASON_CHARS * 50), "a long reason (cut)"),
        ("agent_version", "\u2603\U0001f600", "unicode agent version"),
    ],
    Channel.EVENTS: [
        ("reason", "r" * (MAX_REASON_CHARS * 50), "a long reason (cut)"),
        ("detail", {f"k{i}": i for i in range(MAX_DETAIL_KEYS)}, "detail keys at the bound"),
        ("desired_seq", MAX_INT64, "desired seq at int64 max"),
    ],
    Channel.DRIFT: [
        ("count", MAX_INT64, "count at int64 max"),
        ("sketch", {}, "an empty sketch of an old agent"),
    ],
}


def _set(raw: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    changed: dict[str, Any] = json.loads(json.dumps(raw))
    *parents, last = path.split(".")
    target = changed
    for part in parents:
        target = target[part]
    target[last] = value
    return changed


def _nested(depth: int, rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


_GARBAGE: list[Callable[[random.Random], bytes]] = [
    lambda rng: rng.randbytes(rng.randrange(0, 2000)),
    lambda rng: b"",
    lambda rng: rng.choice([b"[]", b"42", b'"text"', b"null", b"true", b"{}", b"NaN", b"-Inf"]),
    lambda rng: b'{"schema": "edgefleet/v1/' + rng.randbytes(20) + b'"}',
    lambda rng: "\ud800".encode("utf-8", "surrogatepass"),  # not valid UTF-8
    # A NUL and a lone surrogate in a string the decoder's reason echoes.
    lambda rng: rng.choice([b'{"schema": "a\\u0000b"}', b'{"schema": "\\ud800"}']),
    lambda rng: b'{"seq": 1, "device_id": "x", "schema": ' + b"9" * rng.randrange(1, 5000) + b"}",
]


def _garbage(rng: random.Random) -> bytes:
    return rng.choice(_GARBAGE)(rng)


def fuzz_messages(
    seed: int, prefix: str, *, per_channel: int, max_payload_bytes: int
) -> list[FuzzMessage]:
    """About ``per_channel`` messages for each device-to-fleet channel, plus a few on the
    desired and unknown topics, shuffled by ``seed``. Device ids start with ``prefix``;
    every stored message has a (device, seq) of its own and every state its own device,
    so each stored message counts once. ``max_payload_bytes`` is the fleet's setting:
    a few huge payloads are just under it, a few over it."""
    rng = random.Random(seed)
    out: list[FuzzMessage] = []
    seq = 0

    def next_seq() -> int:
        nonlocal seq
        seq += 1
        return seq

    for channel in sorted(DEVICE_TO_FLEET):
        device = f"{prefix}-{channel.value}"
        topic = device_topic(device, channel)
        bad = _COMMON_BAD + _BAD[channel]
        edge = _EDGE[channel]
        for i in range(per_channel):
            n = next_seq()
            owner = f"{device}-{n}" if channel is Channel.STATE else device
            here = device_topic(owner, channel)
            base = _base(channel, owner, n)
            roll = rng.random()
            if roll < 0.15:
                out.append(FuzzMessage(here, _dump(base), "stored", "valid"))
            elif roll < 0.25:
                path, value, why = edge[i % len(edge)]
                out.append(FuzzMessage(here, _dump(_set(base, path, value)), "stored", why))
            elif roll < 0.6:
                path, value, why = bad[i % len(bad)]
                out.append(FuzzMessage(here, _dump(_set(base, path, value)), "dead", why))
            elif roll < 0.65:
                other = _base(channel, f"{prefix}-someone-else", n)
                out.append(FuzzMessage(here, _dump(other), "dead", "device id not the topic's"))
            elif roll < 0.7:
                kinds = [c for c in sorted(DEVICE_TO_FLEET) if c is not channel]
                wrong = _base(rng.choice(kinds), owner, n)
                out.append(FuzzMessage(here, _dump(wrong), "dead", "schema of another topic"))
            elif roll < 0.74:
                depth = rng.choice([100, 1000, 100_000])
                out.append(FuzzMessage(topic, _nested(depth, rng), "dead", f"nested {depth}"))
            elif roll < 0.76:
                nested = _set(base, "tags" if channel is Channel.STATE else "ts", [[[[[[1]]]]]])
                out.append(FuzzMessage(here, _dump(nested), "dead", "nested value"))
            else:
                out.append(FuzzMessage(topic, _garbage(rng), "dead", "garbage"))
        # Huge payloads: JSON just under the ingester's limit, and beyond it.
        padding = "x" * (min(HUGE_BYTES, max_payload_bytes) - 200)
        near = _dump(_set(_base(channel, device, next_seq()), "schema", padding))
        out.append(FuzzMessage(topic, near, "dead", "huge, under the limit"))
        out.append(FuzzMessage(topic, b"[" * HUGE_BYTES, "dead", "huge and nested"))
        out.append(FuzzMessage(topic, rng.randbytes(max_payload_bytes + 1), "dead", "over limit"))
        out.append(FuzzMessage(f"edgefleet/v1/devices/{device}/firmware", b"{}", "dead", "topic"))
        desired = device_topic(device, Channel.DESIRED)
        out.append(FuzzMessage(desired, rng.randbytes(50), "ignored", "fleet-to-device"))
    rng.shuffle(out)
    return out
