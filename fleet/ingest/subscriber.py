"""The MQTT side of ingest: subscribe, queue, and a writer that persists batches.

Threads: paho's network thread only timestamps each message and appends it to a bounded
`BatchHandoff` (a full one blocks it, which pushes back on the broker instead of growing
memory); one writer thread takes a batch at a time (``ingest_batch_size`` messages or
``ingest_flush_interval_s`` after the oldest, whichever comes first) and has it decoded
and written (`edgefleet.fleet.ingest.batches`) by the writer process
(`edgefleet.fleet.ingest.worker`, ``ingest_writer_process``), so that decoding and
writing do not take the GIL from paho's thread, or in this thread when there is no such
process (an in-memory database, the setting off, a process that cannot start). A
payload beyond ``ingest_max_payload_bytes`` is cut to its first bytes (with its size and
sha256) on the network thread, so the hand-off holds at most ``ingest_queue_size``
bounded items. The writer also applies the dead letters' retention every
``dead_letter_sweep_interval_s``. A batch the database cannot take is retried with
capped exponential backoff and is not dropped; only at `stop` does the writer give up,
after ``stop_timeout_s``, and it logs what it lost. A writer process that dies is
replaced and its batch sent again (it was not acknowledged).

End-to-end delivery: after each committed batch the writer thread records the seqs it
stored (`edgefleet.fleet.ingest.stored`), and every ``ingest_stored_interval_s`` publishes
one retained QoS-1 `StoredMessage` per device on its ``stored`` topic with this
ingester's client (paho queues them while the broker is away). A batch that is not
committed is never acknowledged, so its devices send it again.
"""

from __future__ import annotations

import logging
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

from edgefleet.fleet.ingest.batches import BatchProcessor, Outcome, Raw
from edgefleet.fleet.ingest.decode import Oversized
from edgefleet.fleet.ingest.handoff import BatchHandoff, ClosedError
from edgefleet.fleet.ingest.metrics import IngestMetrics
from edgefleet.fleet.ingest.stored import StoredAcks
from edgefleet.fleet.ingest.worker import WorkerLostError, WriterProcess
from edgefleet.fleet.mqtt_client import make_client
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.engine import engine_recipe
from edgefleet.shared.messages import encode
from edgefleet.shared.topics import Channel, device_filter, device_topic, shared_filter

logger = logging.getLogger(__name__)
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
        self._engine = engine
        # In-thread writer: without a writer process (ingest_writer_process off, or a
        # database only this process can reach), or if that process cannot start.
        self._processor: BatchProcessor | None = None
        self._process: WriterProcess | None = None
        self._process_refused = False  # lost twice on one batch: the thread from then on
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

    @property
    def writer_pid(self) -> int | None:
        """The writer process's pid; None while batches are written in this process."""
        return self._process.pid if self._process is not None else None

    def wait_connected(self, timeout_s: float) -> bool:
        """True once subscribed to the broker, False if ``timeout_s`` passed first."""
        return self._connected.wait(timeout_s)

    def start_writer(self) -> None:
        """Start the writer process (or the in-thread writer) if not yet started; `start`
        does it too. Starting a process takes a second or two (it imports the fleet's
        modules), which is why it can be done ahead of connecting."""
        if self._processor is not None or self._process is not None:
            return
        recipe = engine_recipe(self._engine)
        wanted = self._settings.ingest_writer_process and not self._process_refused
        if wanted and recipe is not None:
            process = WriterProcess(
                self._settings,
                recipe,
                on_retry=self._metrics.db_retries.inc,
                on_decoded=self._count_decoded,
                on_written=self._metrics.record,
            )
            try:
                process.start()
            except WorkerLostError as e:
                logger.error("ingest writer process unavailable, writing in a thread: %s", e)
            else:
                if self._give_up_at is not None:  # a replacement during `stop`
                    process.give_up_at(self._give_up_at)
                self._process = process
                return
        self._processor = BatchProcessor(
            self._settings,
            self._engine,
            on_retry=self._metrics.db_retries.inc,
            on_decoded=self._count_decoded,
            on_written=self._metrics.record,
            give_up_at=lambda: self._give_up_at,
        )

    def start(self) -> None:
        """Start the writer and connect in the background (the broker may be down)."""
        self.start_writer()
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
            if self._process is not None:
                self._process.give_up_at(self._give_up_at)
            self._handoff.close()
            self._thread.join()
            self._thread = None
        if self._process is not None:
            self._process.stop()
            self._process = None
        self._processor = None

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
            # An empty batch still runs: the dead letters' retention sweep is due by time.
            self._apply(self._run_batch(raws))
            self._publish_stored()
        # What the last batches stored at `stop` is not acknowledged (the client is gone):
        # those devices send it again and the next replica finds duplicates.

    def _run_batch(self, raws: list[Raw]) -> Outcome:
        lost = 0
        while self._process is not None:
            try:
                return self._process.run(raws)
            except WorkerLostError as e:
                # Nothing of the batch was acknowledged: a new process stores it again
                # (what the lost one committed is found as duplicates). A batch that
                # takes two processes down goes to the thread, as does all that follows.
                lost += 1
                self._process.stop(timeout_s=1.0)
                self._process = None
                if lost >= 2:
                    logger.error("ingest writer process lost twice, writing in a thread: %s", e)
                    self._process_refused = True
                else:
                    logger.error("ingest writer process lost, starting another: %s", e)
                self.start_writer()
        assert self._processor is not None  # start_writer made one or the other
        return self._processor.run(raws)

    def _count_decoded(self, received: int, ignored: int) -> None:
        self._metrics.received.inc(received)
        self._metrics.ignored.inc(ignored)

    def _apply(self, outcome: Outcome) -> None:
        """Count what a batch did and queue its acknowledgements (after its commit)."""
        metrics = self._metrics
        if outcome.expired:
            metrics.dead_letters_dropped.labels("retention").inc(outcome.expired)
        if outcome.result is None:
            return
        if outcome.batch_seconds is not None:
            metrics.batch_seconds.observe(outcome.batch_seconds)
        metrics.observe_lags(outcome.lags)
        self._stored.add(outcome.result.stored)

    def _publish_stored(self) -> None:
        """Tell devices what was committed since the last publish, once an interval."""
        at = time.monotonic()
        if not self._stored or at < self._next_stored:
            return
        self._next_stored = at + self._settings.ingest_stored_interval_s
        for message in self._stored.take():
            topic = device_topic(message.device_id, Channel.STORED)
            self._client.publish(topic, encode(message), qos=1, retain=True)

    def identities_changed(self) -> None:
        """An identity changed in this process: read the table afresh for the next batch."""
        if self._process is not None:
            self._process.identities_changed()
        if self._processor is not None:
            self._processor.identities_changed()
