"""The orchestrator's per-tick reads, run on the database driver.

Why: every tick of a 1,000-device rollout reads each target's registry row and lists
the rollout's recent events. Profiled, SQLAlchemy's expansion of 500-id ``IN`` lists
and its per-row result handling cost several times what the statements cost the
database; and an exact lookup of a few (device, seq) pairs has no Core form that SQLite
plans well (a row-value ``IN`` scans the table, a ``VALUES`` join needs column aliases
SQLite lacks). Here each statement is plain SQL for the dialect, run through
`Connection.exec_driver_sql`, so SQLAlchemy still owns the connection, the transaction
and the wrapping of driver errors (as `edgefleet.fleet.ingest.bulk` does for the ingester's
writes).

Invariant: values are bound and read back through the columns' own SQLAlchemy
processors (`edgefleet.fleet.ingest.bulk.column_converter` for a bound time), so each function
returns what the equivalent Core query returns; the tests compare them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Column, Connection, Table
from sqlalchemy.engine import Dialect

from edgefleet.fleet.ingest.bulk import column_converter
from edgefleet.fleet.store.tables import DesiredStateRow, Device, EventRow

_DEVICE: Table = Device.__table__  # type: ignore[attr-defined]
_EVENT: Table = EventRow.__table__  # type: ignore[attr-defined]
_DESIRED: Table = DesiredStateRow.__table__  # type: ignore[attr-defined]
IN_CHUNK = 500  # values per IN list, and (device, seq) pairs per lookup: 1,000 parameters
PAIR_CHUNK = 250


class DeviceRow(NamedTuple):
    """What a tick needs of a device's registry row."""

    device_id: str
    online: bool  # it said so, and was heard from since the cutoff
    model_name: str | None
    model_version: str | None
    model_sha256: str | None
    last_state_seq: int | None


class EventKey(NamedTuple):
    device_id: str
    seq: int


class EventRead(NamedTuple):
    """The columns of a deployment event that a tick folds."""

    device_id: str
    seq: int
    kind: str
    model_version: str | None
    model_sha256: str | None
    received_at: datetime
    reason: str | None


def device_rows(
    conn: Connection, device_ids: Sequence[str], cutoff: datetime
) -> dict[str, DeviceRow]:
    """The registry rows of those of ``device_ids`` that exist; ``online`` is the row's
    flag and ``last_seen`` (None or at or after ``cutoff``), worked out by the database
    so that no time is read back."""
    sql = _Sql(conn.dialect)
    c = sql.column
    # Identifiers come from the table's metadata, quoted by the dialect; values are bound.
    head = (
        f"SELECT {c(_DEVICE, 'device_id')}, {c(_DEVICE, 'online')} AND "  # noqa: S608
        f"({c(_DEVICE, 'last_seen')} IS NULL OR {c(_DEVICE, 'last_seen')} >= {sql.marker}), "
        f"{c(_DEVICE, 'model_name')}, {c(_DEVICE, 'model_version')}, "
        f"{c(_DEVICE, 'model_sha256')}, {c(_DEVICE, 'last_state_seq')} "
        f"FROM {sql.table(_DEVICE)} "
        f"WHERE {c(_DEVICE, 'device_id')} IN "
    )
    bound_cutoff = sql.bind(_DEVICE.c.last_seen, cutoff)
    found: dict[str, DeviceRow] = {}
    for chunk in _chunks(device_ids, IN_CHUNK):
        rows = conn.exec_driver_sql(head + sql.markers(len(chunk)), (bound_cutoff, *chunk))
        for device_id, online, name, version, sha256, seq in rows:
            found[device_id] = DeviceRow(device_id, bool(online), name, version, sha256, seq)
    return found


def event_keys(conn: Connection, rollout_id: str, since: datetime | None) -> list[EventKey]:
    """The (device, seq) of every event of ``rollout_id`` received at or after ``since``
    (every one when None)."""
    sql = _Sql(conn.dialect)
    c = sql.column
    query = (
        f"SELECT {c(_EVENT, 'device_id')}, {c(_EVENT, 'seq')} FROM {sql.table(_EVENT)} "  # noqa: S608
        f"WHERE {c(_EVENT, 'rollout_id')} = {sql.marker}"
    )
    params: tuple[Any, ...] = (rollout_id,)
    if since is not None:
        query += f" AND {c(_EVENT, 'received_at')} >= {sql.marker}"
        params += (sql.bind(_EVENT.c.received_at, since),)
    return [EventKey(d, s) for d, s in conn.exec_driver_sql(query, params)]


def last_insert(conn: Connection) -> int | None:
    """Where rows are numbered in commit order, the number of the last event stored
    (0 if none); None elsewhere.

    SQLite gives a new row the number one above the largest in its table, and commits
    one writer at a time, so an event committed after another has a larger ``rowid``
    (events are never deleted). Only ``VACUUM`` may renumber rows: a reader relying on
    this must look again by other means now and then. PostgreSQL has no such order.
    """
    if conn.dialect.name != "sqlite":
        return None
    sql = _Sql(conn.dialect)
    found = conn.exec_driver_sql(f"SELECT max(rowid) FROM {sql.table(_EVENT)}").scalar()  # noqa: S608
    return int(found or 0)


def events_inserted_after(
    conn: Connection, rollout_id: str, after: int
) -> tuple[list[EventRead], int]:
    """SQLite only: the events of ``rollout_id`` numbered above ``after`` (see
    `last_insert`), in commit order, and the number of the last one (``after`` if
    none)."""
    sql = _Sql(conn.dialect)
    c = sql.column
    names = EventRead._fields
    query = (
        f"SELECT rowid, {', '.join(c(_EVENT, n) for n in names)} FROM {sql.table(_EVENT)} "  # noqa: S608
        f"WHERE {c(_EVENT, 'rollout_id')} = ? AND rowid > ? ORDER BY rowid"
    )
    received_at = sql.reader(_EVENT.c.received_at)
    found: list[EventRead] = []
    last = after
    for rowid, device_id, seq, kind, version, sha256, at, reason in conn.exec_driver_sql(
        query, (rollout_id, after)
    ):
        found.append(EventRead(device_id, seq, kind, version, sha256, received_at(at), reason))
        last = rowid
    return found, last


def events(conn: Connection, keys: Sequence[tuple[str, int]]) -> list[EventRead]:
    """The events of ``keys`` (each a primary key: one lookup each)."""
    sql = _Sql(conn.dialect)
    c = sql.column
    names = EventRead._fields
    head = f"SELECT {', '.join(c(_EVENT, n) for n in names)} FROM {sql.table(_EVENT)} WHERE "  # noqa: S608
    term = f"({c(_EVENT, 'device_id')} = {sql.marker} AND {c(_EVENT, 'seq')} = {sql.marker})"
    received_at = sql.reader(_EVENT.c.received_at)
    found: list[EventRead] = []
    for chunk in _chunks(keys, PAIR_CHUNK):
        params = tuple(value for key in chunk for value in key)
        rows = conn.exec_driver_sql(head + " OR ".join([term] * len(chunk)), params)
        for device_id, seq, kind, version, sha256, at, reason in rows:
            found.append(EventRead(device_id, seq, kind, version, sha256, received_at(at), reason))
    return found


class DesiredRead(NamedTuple):
    """A stored desired state of a rollout: when it was stored, and its signed body."""

    device_id: str
    updated_at: datetime
    body: Any


def desired_states(
    conn: Connection, rollout_id: str, device_ids: Sequence[str]
) -> list[DesiredRead]:
    """The desired states stored for those of ``device_ids`` that have one of
    ``rollout_id``."""
    sql = _Sql(conn.dialect)
    c = sql.column
    head = (
        f"SELECT {c(_DESIRED, 'device_id')}, {c(_DESIRED, 'updated_at')}, "  # noqa: S608
        f"{c(_DESIRED, 'body')} FROM {sql.table(_DESIRED)} "
        f"WHERE {c(_DESIRED, 'rollout_id')} = {sql.marker} AND {c(_DESIRED, 'device_id')} IN "
    )
    updated_at = sql.reader(_DESIRED.c.updated_at)
    body = sql.reader(_DESIRED.c.body)
    found: list[DesiredRead] = []
    for chunk in _chunks(device_ids, IN_CHUNK):
        rows = conn.exec_driver_sql(head + sql.markers(len(chunk)), (rollout_id, *chunk))
        found += [DesiredRead(d, updated_at(at), body(b)) for d, at, b in rows]
    return found


class _Sql:
    """Identifiers, parameter markers and value conversions for one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._preparer = dialect.identifier_preparer
        self.marker = "?" if dialect.paramstyle == "qmark" else "%s"

    def table(self, table: Table) -> str:
        return self._preparer.format_table(table)

    def column(self, table: Table, name: str) -> str:
        return f"{self.table(table)}.{self._preparer.quote(name)}"

    def markers(self, count: int) -> str:
        return f"({', '.join([self.marker] * count)})"

    def bind(self, column: Column[Any], value: Any) -> Any:
        convert = column_converter(column, self._dialect)
        return convert(value) if convert else value

    def reader(self, column: Column[Any]) -> Callable[[Any], Any]:
        """How a value the driver returns for ``column`` becomes what Core returns."""
        process: Callable[[Any], Any] | None = column.type.dialect_impl(
            self._dialect
        ).result_processor(self._dialect, None)
        return process if process is not None else _same


def _same(value: Any) -> Any:
    return value


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
