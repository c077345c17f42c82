"""The MQTT side of ingest: subscribe, queue, and a writer thread that persists batches.

Threads: paho's network thread only timestamps each message and appends it to a bounded
`BatchHandoff` (a full one blocks it, which pushes back on the broker instead of growing
memory); one writer thread takes a batch at a time (``ingest_batch_size`` messages or
``ingest_flush_interval_s`` after the oldest, whichever comes first), decodes it and
writes it. The two threads share the GIL, so the network thread is kept to the least
work that cannot wait, and everything else is done per batch. A payload beyond
``ingest_max_payload_bytes`` is cut to its first bytes (with its size and sha256) on the
network thread, so the hand-off holds at most ``ingest_queue_size`` bounded items. The
writer thread also applies the dead letters' retention every
``dead_letter_sweep_interval_s``. A batch the database
cannot take is retried with capped exponential backoff and is not dropped; only at
`stop` does the writer give up, after ``stop_timeout_s``, and it logs what it lost.

End-to-end delivery: after each committed batch the writer thread records the seqs it
stored (`edgefleet.fleet.ingest.stored`), and every ``ingest_stored_interval_s`` publishes
one retained QoS-1 `StoredMessage` per device on its ``stored`` topic with this
ingester's client (paho queues them while the broker is away). A batch that is not
committed is never acknowledged, so its devices send it again.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from edgefleet.fleet.identity.snapshot import Identities, IdentityCache
from edgefleet.fleet.ingest.dead_letters import DeadLetterLimits
from edgefleet.fleet.ingest.decode import Accepted, Ignored, Oversized, Rejected, decode
from edgefleet.fleet.ingest.handoff import BatchHandoff, ClosedError
from edgefleet.fleet.ingest.metrics import IngestMetrics
from edgefleet.fleet.ingest.stored import StoredAcks
from edgefleet.fleet.ingest.writer import BatchWriter, TransientStoreError
from edgefleet.fleet.mqtt_client import make_client
from edgefleet.fleet.settings import FleetSettings
from edgefleet.shared.messages import encode, utcnow
from edgefleet.shared.topics import (
    Channel,
    TopicError,
    device_filter,
    device_topic,
    parse_topic,
    shared_filter,
)

logger = logging.getLogger(__name__)

Raw = tuple[str, bytes | Oversized, bool, datetime]
SESSION_EXPIRY_S = 24 * 3600  # MQTT 5 persistent session: how long the broker keeps it


class Ingester:
    """Subscribes to every device topic and persists what arrives; `start` / `stop`."""

    def __init__(
        self,
        settings: FleetSettings,
        engine: Engine,
        metrics: IngestMetrics,
        *,
        client_id: str | None = None,
    ) -> None:
        self._settings = settings
        self._writer = BatchWriter(
            engine,
            dead_letter_limits(settings),
            check_desired_seqs=settings.require_device_identity,
        )
        self._identities = (
            IdentityCache(engine, settings.device_identity_cache_s)
            if settings.require_device_identity
            else None
        )
        self._next_sweep = 0.0  # monotonic time of the next dead-letter retention sweep
        self._stored = StoredAcks()
        self._next_stored = 0.0  # monotonic time the next stored acknowledgements may go
        self._metrics = metrics
        self._handoff: BatchHandoff[Raw] = BatchHandoff(
            maxsize=settings.ingest_queue_size,
            batch_size=settings.ingest_batch_size,
            linger_s=settings.ingest_flush_interval_s,
        )
        metrics.queue_depth.set_function(self._handoff.qsize)
        self._client_id = (
            client_id or settings.broker_client_id or f"edgefleet-fleet-{uuid.uuid4().hex[:12]}"
        )
        self._client = self._make_client()
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()
        self._idle = threading.Event()
        self._give_up_at: float | None = None
        topic = device_filter()
        if settings.shared_subscription:
            topic = shared_filter(settings.subscription_group, topic)
        self.subscription = topic

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        """True once subscribed to the broker, False if ``timeout_s`` passed first."""
        return self._connected.wait(timeout_s)

    def start(self) -> None:
        """Start the writer thread and connect in the background (the broker may be down)."""
        self._thread = threading.Thread(target=self._run_writer, name="fleet-ingest-writer")
        self._thread.start()
        s = self._settings
        clean_start: bool | Literal[3] = mqtt.MQTT_CLEAN_START_FIRST_ONLY
        properties = None
        if s.broker_protocol == "5" and s.broker_persistent_session:
            clean_start = False
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
        self._client.connect_async(
            s.broker_host,
            s.broker_port,
            keepalive=s.broker_keepalive_s,
            clean_start=clean_start,
            properties=properties,
        )
        self._client.loop_start()

    def stop(self, stop_timeout_s: float = 10.0) -> None:
        """Disconnect, write what is queued, and join the writer thread."""
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        self._metrics.connected.set(0)
        if self._thread is not None:
            self._give_up_at = time.monotonic() + stop_timeout_s
            self._handoff.close()
            self._thread.join()
            self._thread = None

    def _make_client(self) -> mqtt.Client:
        client = make_client(
            self._settings,
            self._client_id,
            clean_session=not self._settings.broker_persistent_session,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            logger.warning(
                "broker %s refused the connection: %s", self._settings.broker_url, reason_code
            )
            return
        # Subscriptions do not survive a clean session, so every (re)connect subscribes.
        client.subscribe(self.subscription, qos=1)
        self._connected.set()
        self._metrics.connected.set(1)
        logger.info(
            "ingester connected to %s, subscribed to %s",
            self._settings.broker_url,
            self.subscription,
        )

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._connected.clear()
        self._metrics.connected.set(0)
        log = logger.warning if reason_code.is_failure else logger.info
        log("ingester disconnected from %s: %s", self._settings.broker_url, reason_code)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = repr(msg._topic)  # kept verbatim for the dead letter
        raw = bytes(msg.payload)
        payload: bytes | Oversized = raw
        limit = self._settings.ingest_max_payload_bytes
        if len(raw) > limit:
            keep = self._settings.dead_letter_payload_prefix_bytes
            payload = Oversized.of(raw, limit=limit, keep=keep)
        try:
            self._handoff.put((topic, payload, msg.retain, datetime.now(UTC)))
        except ClosedError:
            # Only after `stop` has stopped the network loop; cannot happen in order.
            logger.warning("ingester stopped: message on %s not stored", topic)

    def _run_writer(self) -> None:
        idle_s = min(1.0, self._settings.ingest_stored_interval_s)
        while (raws := self._handoff.take(idle_timeout_s=idle_s)) is not None:
            if raws:
                batch = self._decode(raws)
                if batch:
                    self._write_with_retry(batch)
            self._publish_stored()
            self._sweep_dead_letters()
        # What the last batches stored at `stop` is not acknowledged (the client is gone):
        # those devices send it again and the next replica finds duplicates.

    def _publish_stored(self) -> None:
        """Tell devices what was committed since the last publish, once an interval."""
        at = time.monotonic()
        if not self._stored or at < self._next_stored:
            return
        self._next_stored = at + self._settings.ingest_stored_interval_s
        for message in self._stored.take():
            topic = device_topic(message.device_id, Channel.STORED)
            self._client.publish(topic, encode(message), qos=1, retain=True)

    def _sweep_dead_letters(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._settings.dead_letter_sweep_interval_s
        try:
            expired = self._writer.expire_dead_letters(datetime.now(UTC))
        except TransientStoreError as e:
            logger.warning("dead-letter retention postponed: %s", e)
            return
        if expired:
            self._metrics.dead_letters_dropped.labels("retention").inc(expired)
            logger.info("deleted %d dead letters past their retention", expired)

    def _decode(self, raws: list[Raw]) -> list[Accepted | Rejected]:
        batch: list[Accepted | Rejected] = []
        ignored = 0
        max_ahead_s = self._settings.ingest_seq_max_ahead_s
        # Every message of the batch arrived before this instant.
        arrived_by = self._identities.now() if self._identities is not None else 0.0
        identities = self._identity_snapshot()
        for topic, payload, retained, received_at in raws:
            decoded = decode(
                topic, payload, received_at, retained=retained, seq_max_ahead_s=max_ahead_s
            )
            if isinstance(decoded, Ignored):
                ignored += 1
                continue
            if identities is not None and isinstance(decoded, Accepted):
                refusal = identities.refusal(decoded.message.device_id)
                # A copy older than the message may predate the device's enrollment at
                # another replica, and a dead letter is acknowledged (the device drops
                # the message): refuse only on identities read after it arrived. At most
                # one reread a batch, and only for a refusal.
                if (
                    refusal is not None
                    and identities.read_at < arrived_by
                    and (reread := self._identity_snapshot(read_after=arrived_by))
                ):
                    identities = reread
                    refusal = identities.refusal(decoded.message.device_id)
                if refusal is not None:
                    # The raw payload as received: decode took it, so it is bytes.
                    raw = payload if isinstance(payload, bytes) else payload.prefix
                    error = f"{decoded.channel.value}: {refusal} (require_device_identity)"
                    decoded = Rejected(topic, raw, received_at, error)
            if isinstance(decoded, Rejected):
                logger.warning(
                    "dead-lettering a message on %s: %s",
                    decoded.topic,
                    decoded.error,
                    extra={"device_id": _claimed_device(decoded.topic), "topic": decoded.topic},
                )
            batch.append(decoded)
        # Fleet-to-device topics (desired states, the `stored` acknowledgements every
        # replica publishes) come back on the wildcard subscription: not device traffic.
        self._metrics.received.inc(len(raws) - ignored)
        self._metrics.ignored.inc(ignored)
        return batch

    def identities_changed(self) -> None:
        """An identity changed in this process: read the table afresh for the next batch."""
        if self._identities is not None:
            self._identities.invalidate()

    def _identity_snapshot(self, *, read_after: float | None = None) -> Identities | None:
        """The active device ids (read after ``read_after``, if given), or None if the fleet
        does not require identities; retried like a batch while the database is away (the
        batch waits, nothing is let through)."""
        if self._identities is None:
            return None
        backoff_s = 0.05
        while True:
            try:
                return self._identities.snapshot(read_after=read_after)
            except SQLAlchemyError as e:
                self._metrics.db_retries.inc()
                logger.warning("cannot read device identities, retrying in %.2fs: %s", backoff_s, e)
                time.sleep(backoff_s * random.uniform(0.5, 1.0))
                backoff_s = min(backoff_s * 2, self._settings.ingest_retry_max_s)

    def _write_with_retry(self, batch: list[Accepted | Rejected]) -> None:
        backoff_s = 0.05
        while True:
            started = time.perf_counter()
            try:
                result = self._writer.write(batch)
            except TransientStoreError as e:
                self._metrics.db_retries.inc()
                if self._give_up_at is not None and time.monotonic() > self._give_up_at:
                    logger.error("stopping with %d messages not stored: %s", len(batch), e)
                    return
                logger.warning("retrying a batch of %d in %.2fs: %s", len(batch), backoff_s, e)
                time.sleep(backoff_s * random.uniform(0.5, 1.0))
                backoff_s = min(backoff_s * 2, self._settings.ingest_retry_max_s)
                continue
            self._metrics.batch_seconds.observe(time.perf_counter() - started)
            self._metrics.record(result)
            self._metrics.record_lag(batch, utcnow())
            self._stored.add(result.stored)
            return


def dead_letter_limits(settings: FleetSettings) -> DeadLetterLimits:
    """The dead-letter bounds the settings ask for."""
    return DeadLetterLimits(
        prefix_bytes=settings.dead_letter_payload_prefix_bytes,
        max_rows=settings.dead_letter_max_rows,
        max_bytes=settings.dead_letter_max_bytes,
        retention_s=settings.dead_letter_retention_s,
    )


def _claimed_device(topic: str) -> str | None:
    """The device id a topic names (for a log line's ``device_id``), None outside the scheme."""
    try:
        return parse_topic(topic).device_id
    except TopicError:
        return None
