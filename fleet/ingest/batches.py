"""What the ingester does with a batch of raw MQTT messages, wherever that runs.

`BatchProcessor.run` decodes a batch, checks device identities when the fleet requires
them, writes it with retries (capped exponential backoff while the database is away;
a batch is never dropped, except at stop after the give-up time), applies the dead
letters' retention once an interval, and returns an `Outcome`: the counts and lags the
metrics need and the `WriteResult` whose ``stored`` keys may be acknowledged. It runs in
the ingester's writer thread or in the writer process (`edgefleet.fleet.ingest.worker`);
either way the caller applies the outcome in the ingester's process.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from edgefleet.fleet.identity.snapshot import Identities, IdentityCache
from edgefleet.fleet.ingest.dead_letters import DeadLetterLimits
from edgefleet.fleet.ingest.decode import Accepted, Ignored, Oversized, Rejected, decode
from edgefleet.fleet.ingest.writer import BatchWriter, TransientStoreError, WriteResult
from edgefleet.fleet.settings import FleetSettings
from edgefleet.shared.messages import utcnow
from edgefleet.shared.topics import TopicError, parse_topic

logger = logging.getLogger(__name__)

# topic, payload (cut if oversized), retained, received at
Raw = tuple[str, bytes | Oversized, bool, datetime]


@dataclass
class Outcome:
    """What one `BatchProcessor.run` did, for the metrics and the acknowledgements."""

    # None: nothing written (empty, or given up at stop); its counts went to on_written,
    # its stored keys may be acknowledged now, after the commit.
    result: WriteResult | None = None
    batch_seconds: float | None = None  # the write that succeeded
    lags: list[tuple[str, float]] = field(default_factory=list)  # (channel, seconds)
    expired: int = 0  # dead letters deleted by the retention sweep


class BatchProcessor:
    """Decodes, checks and writes batches for one ingester; see the module docstring.

    ``on_retry`` is called at every database retry and ``on_decoded(received, ignored)``
    once a batch is decoded, before it is written (the ingester counts them as they
    happen, not when the batch lands; ``ignored`` is fleet-to-device traffic);
    ``on_written(result)`` before each commit, with what it stores (see
    `BatchWriter.write`: the counts are ahead of what readers can see);
    ``give_up_at`` says the monotonic time after
    which a failing batch is abandoned (None: never, until the ingester stops).
    """

    def __init__(
        self,
        settings: FleetSettings,
        engine: Engine,
        *,
        on_retry: Callable[[], None],
        on_decoded: Callable[[int, int], None],
        on_written: Callable[[WriteResult], None],
        give_up_at: Callable[[], float | None],
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
        self._on_retry = on_retry
        self._on_decoded = on_decoded
        self._on_written = on_written
        self._give_up_at = give_up_at
        self._next_sweep = 0.0  # monotonic time of the next dead-letter retention sweep

    def identities_changed(self) -> None:
        """An identity changed: read the table afresh for the next batch."""
        if self._identities is not None:
            self._identities.invalidate()

    def run(self, raws: list[Raw]) -> Outcome:
        """Decode and store ``raws`` (may be empty: only the retention sweep is due)."""
        outcome = Outcome()
        if raws:
            batch, ignored = self._decode(raws)
            self._on_decoded(len(raws) - ignored, ignored)
            if batch:
                self._write_with_retry(batch, outcome)
        outcome.expired = self._sweep_dead_letters()
        return outcome

    def _sweep_dead_letters(self) -> int:
        now = time.monotonic()
        if now < self._next_sweep:
            return 0
        self._next_sweep = now + self._settings.dead_letter_sweep_interval_s
        try:
            expired = self._writer.expire_dead_letters(datetime.now(UTC))
        except TransientStoreError as e:
            logger.warning("dead-letter retention postponed: %s", e)
            return 0
        if expired:
            logger.info("deleted %d dead letters past their retention", expired)
        return expired

    def _decode(self, raws: list[Raw]) -> tuple[list[Accepted | Rejected], int]:
        """The items to write, and how many messages were fleet-to-device traffic."""
        batch: list[Accepted | Rejected] = []
        ignored = 0
        max_ahead_s = self._settings.ingest_seq_max_ahead_s
        # Every message of the batch arrived before this instant (the monotonic clock is
        # the machine's, so this holds in the writer process too).
        arrived_by = self._identities.now() if self._identities is not None else 0.0
        identities = self._identity_snapshot()
        for topic, payload, retained, received_at in raws:
            decoded = decode(
                topic, payload, received_at, retained=retained, seq_max_ahead_s=max_ahead_s
            )
            if isinstance(decoded, Ignored):
                # Fleet-to-device topics (desired states, the `stored` acknowledgements
                # every replica publishes) come back on the wildcard subscription.
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
        return batch, ignored

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
                self._on_retry()
                logger.warning("cannot read device identities, retrying in %.2fs: %s", backoff_s, e)
                time.sleep(backoff_s * random.uniform(0.5, 1.0))
                backoff_s = min(backoff_s * 2, self._settings.ingest_retry_max_s)

    def _write_with_retry(self, batch: list[Accepted | Rejected], outcome: Outcome) -> None:
        backoff_s = 0.05
        while True:
            started = time.perf_counter()
            try:
                result = self._writer.write(batch, before_commit=self._on_written)
            except TransientStoreError as e:
                self._on_retry()
                give_up_at = self._give_up_at()
                if give_up_at is not None and time.monotonic() > give_up_at:
                    logger.error("stopping with %d messages not stored: %s", len(batch), e)
                    return
                logger.warning("retrying a batch of %d in %.2fs: %s", len(batch), backoff_s, e)
                time.sleep(backoff_s * random.uniform(0.5, 1.0))
                backoff_s = min(backoff_s * 2, self._settings.ingest_retry_max_s)
                continue
            outcome.batch_seconds = time.perf_counter() - started
            outcome.result = result
            outcome.lags = lags(batch, utcnow())
            return


def lags(batch: list[Accepted | Rejected], committed_at: datetime) -> list[tuple[str, float]]:
    """Each live message's (channel, lag): ``committed_at`` minus its ``ts``, at least 0
    (a device clock ahead of the fleet's); a retained message is not live."""
    return [
        (item.channel.value, max(0.0, (committed_at - item.message.ts).total_seconds()))
        for item in batch
        if isinstance(item, Accepted) and not item.retained
    ]


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
