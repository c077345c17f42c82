"""Watches the retained desired states on the broker, so the fleet sees one vanish.

`RetainedWatcher` holds a connection of its own with a plain (not shared) subscription to
every device's ``desired`` topic: a shared subscription gets no retained messages, and
each replica must see all of them. On every (re)connect it forgets what it saw and
subscribes again, so the broker sends each retained message anew; a device whose message
does not arrive within ``settle_s`` of the SUBACK has none (a broker restarted without
persistence). Live messages keep it current afterwards: the director's publishes, and an
empty retained publish that clears a topic, which the broker forwards like any other.

It only records, per device id, the seq of the last envelope seen (or `EMPTY` /
`INVALID`); the reconciler compares that with the store. The record is bounded: beyond
`MAX_WATCHED` device ids, messages for new ids are not recorded (`prune` keeps the ones
with a stored desired state), so publishes to made-up device ids cannot grow memory.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from edgefleet.fleet.mqtt_client import make_client
from edgefleet.fleet.reconcile.policy import EMPTY, INVALID
from edgefleet.fleet.settings import FleetSettings
from edgefleet.shared.signing.director import MAX_ENVELOPE_BYTES, SignedDesiredState
from edgefleet.shared.topics import Channel, TopicError, device_filter, parse_topic

logger = logging.getLogger(__name__)

MAX_WATCHED = 1_000_000


def observed_seq(device_id: str, payload: bytes) -> int:
    """What a payload on ``device_id``'s desired topic says: its seq, `EMPTY` or `INVALID`.

    Never raises: a payload that is not a bounded envelope for this device is `INVALID`.
    """
    if not payload:
        return EMPTY
    if len(payload) > MAX_ENVELOPE_BYTES:
        return INVALID
    try:
        envelope = SignedDesiredState.model_validate_json(payload)
    except (ValidationError, ValueError, RecursionError):
        return INVALID
    if envelope.signed.device_id != device_id:
        return INVALID
    return envelope.signed.seq


class RetainedWatcher:
    """Records the retained desired state of every device; `start` / `stop`.

    ``on_lost`` is called (on paho's thread; keep it short) when a topic is cleared or
    gets something that is not an envelope, so the reconciler can act at once.
    """

    def __init__(
        self,
        settings: FleetSettings,
        *,
        settle_s: float,
        on_lost: Callable[[], None] = lambda: None,
        max_watched: int = MAX_WATCHED,
    ) -> None:
        self._settings = settings
        self._settle_s = settle_s
        self._on_lost = on_lost
        self._max_watched = max_watched
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self._subscribed_at: float | None = None
        self._subscribe_mid: int | None = None
        self._refused = 0
        base = settings.broker_client_id or "edgefleet-fleet"
        self._client = make_client(settings, f"{base}-reconcile-{uuid.uuid4().hex[:8]}")
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self.topic = device_filter(Channel.DESIRED)

    def start(self) -> None:
        """Connect in the background (paho retries until the broker is there)."""
        s = self._settings
        self._client.connect_async(s.broker_host, s.broker_port, keepalive=s.broker_keepalive_s)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def settled(self) -> bool:
        """True once subscribed for ``settle_s``: a device not seen by then has no message."""
        with self._lock:
            at = self._subscribed_at
        return at is not None and time.monotonic() - at >= self._settle_s

    def seconds_to_settle(self) -> float | None:
        """How long until `settled` turns true; None when not subscribed (or settled)."""
        with self._lock:
            at = self._subscribed_at
        if at is None:
            return None
        left = at + self._settle_s - time.monotonic()
        return left if left > 0 else None

    def observed(self) -> dict[str, int]:
        """A copy of what was seen per device since the last subscription."""
        with self._lock:
            return dict(self._seen)

    def prune(self, keep: Collection[str]) -> None:
        """Forget the device ids not in ``keep`` (those without a stored desired state)."""
        with self._lock:
            for device_id in [d for d in self._seen if d not in keep]:
                del self._seen[device_id]

    def _on_connect(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any = None
    ) -> None:
        if reason.is_failure:
            logger.warning("reconciler watcher: broker refused the connection: %s", reason)
            return
        with self._lock:
            # A new subscription makes the broker send every retained message again;
            # what was seen before may have vanished meanwhile (a broker restart).
            self._seen.clear()
            self._subscribed_at = None
            self._subscribe_mid = client.subscribe(self.topic, qos=1)[1]

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, mid: int, codes: list[ReasonCode], _p: Any
    ) -> None:
        if any(code.is_failure for code in codes):
            # Never settled: without the subscription every device would look lost.
            logger.warning("reconciler watcher: broker refused %s: %s", self.topic, codes)
            return
        with self._lock:
            if mid == self._subscribe_mid:
                self._subscribed_at = time.monotonic()
        logger.debug("reconciler watcher subscribed to %s", self.topic)

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any = None
    ) -> None:
        with self._lock:
            self._subscribed_at = None
        if reason.is_failure:
            logger.warning("reconciler watcher lost the broker: %s", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            device_id = parse_topic(msg.topic).device_id
        except TopicError:
            return
        seq = observed_seq(device_id, bytes(msg.payload))
        with self._lock:
            if device_id not in self._seen and len(self._seen) >= self._max_watched:
                self._refused += 1
                if self._refused == 1 or self._refused % 10_000 == 0:
                    logger.warning(
                        "reconciler watcher: %s device ids recorded, not recording %s (%s so far)",
                        len(self._seen),
                        device_id,
                        self._refused,
                    )
                return
            self._seen[device_id] = seq
        if seq in (EMPTY, INVALID):
            self._on_lost()
