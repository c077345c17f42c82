"""Persist a batch of decoded messages: one transaction, one bulk insert per table.

The hot inserts (telemetry, events, drift, the device upsert) run on the driver
(`edgefleet.fleet.ingest.bulk`: multi-row statements on SQLite, ``COPY`` through a staging
table on PostgreSQL), storing exactly what the ORM would; state updates and dead letters
are rare and stay SQLAlchemy Core statements.

Invariants:
- a (device_id, seq) already stored is skipped (ON CONFLICT DO NOTHING), and counted as
  a duplicate only if it is the same message (every column but ``received_at`` equal),
  so QoS 1 redelivery and several replicas never store a message twice; a different
  message on a stored (device_id, seq) is a conflict and is dead-lettered, so a forged
  message on a device's next seq cannot make its real one vanish as a duplicate;
- a state message only changes the registry if its seq is newer than the stored one,
  checked in the UPDATE itself so two replicas cannot race;
- device rows are touched in device-id order, so concurrent writers on PostgreSQL take
  row locks in the same order and do not deadlock, and once each per batch (an upsert
  may not change one row twice in a statement);
- dead letters are kept within `DeadLetterLimits` (see `edgefleet.fleet.ingest.dead_letters`),
  trimmed in the transaction that adds them;
- with ``check_desired_seqs`` (the fleet's ``require_device_identity``), an event naming a
  ``desired_seq`` the director never issued to its device (above the device's stored
  desired seq, which the director allocates one by one in the transaction that stores
  the envelope, or any seq for a device with no desired state) is dead-lettered: a forged
  event cannot make a deployment the fleet never sent, or turn one into "committed";
- `write` raises `TransientStoreError` (the database is away or busy: retry the whole
  batch), and otherwise never raises for a bad row: a row the database refuses is
  dead-lettered on its own and the rest of the batch is stored;
- `WriteResult.stored` lists the (device_id, seq) of every item of the batch that is a
  row or a dead letter once `write` returns (all of them whose seq can be read, see
  `edgefleet.fleet.ingest.stored.stored_key`): what the fleet acknowledges to devices.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, event, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from edgefleet.fleet.ingest.bulk import BulkStatement, CopyInsert, forget_staging, quoted
from edgefleet.fleet.ingest.dead_letters import DeadLetterLimits, dead_letter_row, expire, trim
from edgefleet.fleet.ingest.decode import Accepted, Rejected
from edgefleet.fleet.ingest.rows import (
    DRIFT_COLUMNS,
    EVENT_COLUMNS,
    TELEMETRY_COLUMNS,
    Row,
    drift_row,
    event_row,
    seen_at,
    state_values,
    telemetry_row,
)
from edgefleet.fleet.ingest.stored import Key, stored_key
from edgefleet.fleet.store.tables import (
    DeadLetter,
    DesiredStateRow,
    Device,
    DriftWindowRow,
    EventRow,
    TelemetryRow,
)
from edgefleet.fleet.store.types import as_utc
from edgefleet.shared.messages import (
    DriftMessage,
    EventMessage,
    StateMessage,
    TelemetryMessage,
    encode,
)
from edgefleet.shared.topics import Channel, device_topic

logger = logging.getLogger(__name__)

_DEVICE: Table = Device.__table__  # type: ignore[attr-defined]
_TELEMETRY: Table = TelemetryRow.__table__  # type: ignore[attr-defined]
_EVENTS: Table = EventRow.__table__  # type: ignore[attr-defined]
_DRIFT: Table = DriftWindowRow.__table__  # type: ignore[attr-defined]
_DEAD: Table = DeadLetter.__table__  # type: ignore[attr-defined]
_DESIRED: Table = DesiredStateRow.__table__  # type: ignore[attr-defined]

Item = Accepted | Rejected

# What a database driver raises for a value it cannot store (an int beyond 64 bits, a NUL
# in a PostgreSQL string): the row is at fault, not the database.
_REFUSED = (SQLAlchemyError, ArithmeticError, ValueError, TypeError)

# The columns a device row needs before its first state message fills them in.
_NEW_DEVICE: dict[str, Any] = {
    "online": False,
    "agent_version": "",
    "hardware": "",
    "tags": [],
    "platform": {},
    "runtimes": [],
}


class TransientStoreError(Exception):
    """The database could not take the batch right now (down, locked, deadlock): retry."""


@dataclass
class WriteResult:
    """What one batch did to the store."""

    persisted: Counter[Channel] = field(default_factory=Counter)
    duplicates: Counter[Channel] = field(default_factory=Counter)
    conflicts: Counter[Channel] = field(default_factory=Counter)  # also in dead_lettered
    dead_lettered: int = 0
    dead_letters_dropped: int = 0  # older dead letters trimmed to stay within the caps
    stored: list[Key] = field(default_factory=list)  # committed: a row or a dead letter

    def add(self, other: WriteResult) -> None:
        self.persisted.update(other.persisted)
        self.duplicates.update(other.duplicates)
        self.conflicts.update(other.conflicts)
        self.dead_lettered += other.dead_lettered
        self.dead_letters_dropped += other.dead_letters_dropped
        self.stored.extend(other.stored)


class BatchWriter:
    """Writes batches of `Accepted` and `Rejected` items to one database."""

    def __init__(
        self,
        engine: Engine,
        limits: DeadLetterLimits | None = None,
        *,
        check_desired_seqs: bool = False,
    ) -> None:
        self._engine = engine
        self._before_commit: Callable[[WriteResult], None] | None = None
        self._check_desired_seqs = check_desired_seqs
        self._limits = limits or DeadLetterLimits()
        dialect = engine.dialect
        self._insert: Callable[[Table], Any] = (
            postgresql.insert if dialect.name == "postgresql" else sqlite.insert
        )
        new_only = "ON CONFLICT (device_id, seq) DO NOTHING"
        self._tables: dict[Channel, tuple[Table, tuple[str, ...]]] = {
            Channel.TELEMETRY: (_TELEMETRY, TELEMETRY_COLUMNS),
            Channel.EVENTS: (_EVENTS, EVENT_COLUMNS),
            Channel.DRIFT: (_DRIFT, DRIFT_COLUMNS),
        }
        if dialect.name == "postgresql" and not event.contains(engine, "rollback", forget_staging):
            event.listen(engine, "rollback", forget_staging)
        # PostgreSQL takes the rows by COPY, SQLite in multi-row VALUES (see `bulk`).
        bulk = CopyInsert if dialect.name == "postgresql" else BulkStatement
        self._inserts: dict[Channel, BulkStatement | CopyInsert] = {
            channel: bulk(table, columns, dialect, suffix=new_only)
            for channel, (table, columns) in self._tables.items()
        }
        # One upsert registers a new device and moves last_seen forward, never back.
        last_seen = quoted(_DEVICE, "last_seen", dialect)
        touch_suffix = (
            "ON CONFLICT (device_id) DO UPDATE SET last_seen = excluded.last_seen "
            f"WHERE {last_seen} IS NULL OR {last_seen} < excluded.last_seen"
        )
        touched = ("device_id", "first_seen", "last_seen")
        # Rows in device-id order either way (see the invariants): sorted here for SQLite,
        # ordered by the moving statement after COPY on PostgreSQL.
        self._touch: BulkStatement | CopyInsert = (
            CopyInsert(
                _DEVICE,
                touched,
                dialect,
                constants=_NEW_DEVICE,
                suffix=touch_suffix,
                order_by="device_id",
            )
            if dialect.name == "postgresql"
            else BulkStatement(
                _DEVICE, touched, dialect, constants=_NEW_DEVICE, suffix=touch_suffix
            )
        )

    def write(
        self, batch: Sequence[Item], before_commit: Callable[[WriteResult], None] | None = None
    ) -> WriteResult:
        """Store ``batch`` in one transaction; raises `TransientStoreError` to be retried.

        ``before_commit`` gets what each transaction did just before it commits (so that
        counts are ahead of what readers of the database can see; a commit that then
        fails, which is retried, has its batch counted again).
        """
        if not batch:
            return WriteResult()
        self._before_commit = before_commit
        try:
            with self._engine.begin() as conn:
                return self._counted(self._write(conn, batch))
        except (OperationalError, InterfaceError) as e:
            raise TransientStoreError(f"database unavailable: {e}") from e
        except DBAPIError as e:
            if e.connection_invalidated:
                raise TransientStoreError(f"database connection lost: {e}") from e
            logger.warning("database refused a batch of %d, storing one by one: %s", len(batch), e)
            return self._write_one_by_one(batch)
        except _REFUSED as e:
            logger.warning("database refused a batch of %d, storing one by one: %s", len(batch), e)
            return self._write_one_by_one(batch)

    def _counted(self, result: WriteResult) -> WriteResult:
        if self._before_commit is not None:
            self._before_commit(result)
        return result

    def expire_dead_letters(self, now: datetime) -> int:
        """Delete dead letters older than the retention; how many. Raises
        `TransientStoreError` if the database cannot take it now."""
        try:
            with self._engine.begin() as conn:
                return expire(conn, now, self._limits.retention_s)
        except SQLAlchemyError as e:
            raise TransientStoreError(f"cannot expire dead letters: {e}") from e

    def _write_one_by_one(self, batch: Sequence[Item]) -> WriteResult:
        result = WriteResult()
        for item in batch:
            try:
                with self._engine.begin() as conn:
                    result.add(self._counted(self._write(conn, [item])))
            except (OperationalError, InterfaceError) as e:
                raise TransientStoreError(f"database unavailable: {e}") from e
            except DBAPIError as e:
                if e.connection_invalidated:
                    raise TransientStoreError(f"database connection lost: {e}") from e
                self._dead_letter_refused(item, e, result)
            except _REFUSED as e:
                self._dead_letter_refused(item, e, result)
        return result

    def _dead_letter_refused(self, item: Item, error: Exception, result: WriteResult) -> None:
        if isinstance(item, Rejected):
            raise TransientStoreError(f"cannot store a dead letter: {error}") from error
        reason = error.__cause__ or error
        refused = _as_rejected(item, f"database refused the message: {reason}")
        with self._engine.begin() as conn:
            result.add(self._counted(self._write(conn, [refused])))

    def _write(self, conn: Connection, batch: Sequence[Item]) -> WriteResult:
        result = WriteResult()
        accepted = [item for item in batch if isinstance(item, Accepted)]
        dead = [item for item in batch if isinstance(item, Rejected)]
        if accepted and self._check_desired_seqs:
            accepted = self._refuse_unsent_desired(conn, accepted, dead)
        if accepted:
            self._touch_devices(conn, accepted)
            for channel, (items, rows) in _rows_by_channel(accepted).items():
                stored = self._inserts[channel].run(conn, rows)
                result.persisted[channel] += stored
                conflicts: list[Rejected] = []
                if stored < len(rows):
                    conflicts = self._conflicts(conn, channel, items, rows)
                    dead.extend(conflicts)
                result.conflicts[channel] += len(conflicts)
                result.duplicates[channel] += max(0, len(rows) - stored - len(conflicts))
            applied, stale = self._apply_states(conn, accepted)
            result.persisted[Channel.STATE] += applied
            result.duplicates[Channel.STATE] += stale
        if dead:
            prefix_bytes = self._limits.prefix_bytes
            conn.execute(self._insert(_DEAD), [dead_letter_row(d, prefix_bytes) for d in dead])
            result.dead_lettered = len(dead)
            result.dead_letters_dropped = trim(conn, self._limits)
        # Every item is now a row (new, a duplicate, a conflict's original) or a dead letter.
        result.stored = [key for item in batch if (key := stored_key(item)) is not None]
        return result

    def _refuse_unsent_desired(
        self, conn: Connection, accepted: list[Accepted], dead: list[Rejected]
    ) -> list[Accepted]:
        """``accepted`` without the events naming a desired seq their device was never
        sent, which go to ``dead``; one query, and only for a batch that names one."""
        devices = sorted(
            {
                a.message.device_id
                for a in accepted
                if isinstance(a.message, EventMessage) and a.message.desired_seq is not None
            }
        )
        if not devices:
            return accepted
        issued: dict[str, int] = {}
        for start in range(0, len(devices), 500):  # under every dialect's parameter limit
            query = select(_DESIRED.c.device_id, _DESIRED.c.seq).where(
                _DESIRED.c.device_id.in_(devices[start : start + 500])
            )
            issued.update({d: int(seq) for d, seq in conn.execute(query)})
        kept: list[Accepted] = []
        for a in accepted:
            m = a.message
            if isinstance(m, EventMessage) and m.desired_seq is not None:
                last = issued.get(m.device_id, 0)
                if m.desired_seq > last:
                    sent = f"up to {last}" if last else "none"
                    dead.append(
                        _as_rejected(
                            a,
                            f"events: desired seq {m.desired_seq} was never sent to device"
                            f" {m.device_id} (desired seqs sent: {sent})",
                        )
                    )
                    continue
            kept.append(a)
        return kept

    def _conflicts(
        self, conn: Connection, channel: Channel, items: list[Accepted], rows: list[Row]
    ) -> list[Rejected]:
        """The items whose (device_id, seq) is stored with other content, as dead letters."""
        table, columns = self._tables[channel]
        keys = {(row[0], row[1]) for row in rows}
        stored: dict[tuple[str, int], Row] = {}
        key_list = sorted(keys)
        for start in range(0, len(key_list), 500):  # under every dialect's parameter limit
            chunk = key_list[start : start + 500]
            query = select(*(table.c[name] for name in columns)).where(
                tuple_(table.c.device_id, table.c.seq).in_(chunk)
            )
            for found in conn.execute(query):
                stored[(found[0], found[1])] = tuple(found)
        # A redelivery arrives later, so received_at is the one column it may differ in.
        received_at = columns.index("received_at")
        conflicts = []
        for item, row in zip(items, rows, strict=True):
            held = stored.get((row[0], row[1]))
            if held is not None and not _same_message(held, row, received_at):
                conflicts.append(
                    _as_rejected(
                        item,
                        f"{channel.value}: seq {row[1]} of device {row[0]} is already stored"
                        " with different content; kept here, not dropped as a duplicate",
                    )
                )
        if conflicts:
            logger.warning(
                "%d %s messages conflict with stored ones on the same seq",
                len(conflicts),
                channel.value,
            )
        return conflicts

    def _touch_devices(self, conn: Connection, accepted: list[Accepted]) -> None:
        first: dict[str, datetime] = {}
        last: dict[str, datetime] = {}
        for a in accepted:
            device_id = a.message.device_id
            received_at = a.received_at
            seen = seen_at(a.message.ts, received_at, retained=True) if a.retained else received_at
            if device_id in first:
                first[device_id] = min(first[device_id], received_at)
                last[device_id] = max(last[device_id], seen)
            else:
                first[device_id] = received_at
                last[device_id] = seen
        self._touch.run(conn, [(d, first[d], last[d]) for d in sorted(first)])

    def _apply_states(self, conn: Connection, accepted: list[Accepted]) -> tuple[int, int]:
        """Apply the newest state per device if newer than stored; (applied, stale)."""
        newest: dict[str, StateMessage] = {}
        stale = 0
        for a in accepted:
            message = a.message
            if not isinstance(message, StateMessage):
                continue
            held = newest.get(message.device_id)
            if held is None or message.seq > held.seq:
                stale += held is not None
                newest[message.device_id] = message
            else:
                stale += 1
        applied = 0
        for device_id in sorted(newest):
            message = newest[device_id]
            outcome = conn.execute(
                update(_DEVICE)
                .where(
                    _DEVICE.c.device_id == device_id,
                    or_(
                        _DEVICE.c.last_state_seq.is_(None),
                        _DEVICE.c.last_state_seq < message.seq,
                    ),
                )
                .values(**state_values(message))
            )
            if outcome.rowcount:
                applied += 1
                logger.info(
                    "device %s is %s (state seq %d)",
                    device_id,
                    "online" if message.online else "offline",
                    message.seq,
                    extra={"device_id": device_id, "seq": message.seq},  # JSON log fields
                )
            else:
                stale += 1
        return applied, stale


def _rows_by_channel(accepted: list[Accepted]) -> dict[Channel, tuple[list[Accepted], list[Row]]]:
    """Per channel, the items and their rows, in the same order."""
    out: dict[Channel, tuple[list[Accepted], list[Row]]] = {}
    for a in accepted:
        m = a.message
        if isinstance(m, TelemetryMessage):
            channel, row = Channel.TELEMETRY, telemetry_row(m, a.received_at)
        elif isinstance(m, EventMessage):
            channel, row = Channel.EVENTS, event_row(m, a.received_at)
        elif isinstance(m, DriftMessage):
            channel, row = Channel.DRIFT, drift_row(m, a.received_at)
        else:
            continue
        items, rows = out.setdefault(channel, ([], []))
        items.append(a)
        rows.append(row)
    return out


def _same_message(stored: Row, incoming: Row, skip: int) -> bool:
    """True if ``incoming`` is the stored row again, but for column ``skip``."""
    for i, (held, new) in enumerate(zip(stored, incoming, strict=True)):
        if i == skip:
            continue
        if isinstance(held, datetime) and isinstance(new, datetime):
            if as_utc(held) != as_utc(new):
                return False
        elif held != new:
            return False
    return True


def _as_rejected(item: Accepted, error: str) -> Rejected:
    message: StateMessage | TelemetryMessage | EventMessage | DriftMessage = item.message
    return Rejected(
        topic=device_topic(message.device_id, item.channel),
        payload=encode(message),
        received_at=item.received_at,
        error=error,
    )
