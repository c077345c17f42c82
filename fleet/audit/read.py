"""Reading the audit log: filtered pages, streamed exports, and the rows `verify` needs.

Every read pages by seq (``seq > after_seq ORDER BY seq LIMIT n``), each page in its own
short session, so neither an export nor a verification ever holds the whole table in
memory or one transaction open for the whole scan.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Engine, func, or_
from sqlmodel import Session, col, select

from edgefleet.fleet.audit.entry import AuditActor, AuditEntry, AuditObject, AuditOutcome
from edgefleet.fleet.audit.verify import ChainHead, Unreadable
from edgefleet.fleet.store.governance_tables import AuditHead, AuditRow
from edgefleet.shared.limits import MAX_INT64

MAX_PAGE = 1000
EXPORT_CHUNK_ROWS = 500


class AuditFilter(BaseModel):
    """Which entries to read; every field given must match.

    ``action`` ending in ``.`` is a prefix (``rollout.`` is every rollout action);
    ``actor`` matches the actor's id or name; ``since`` is inclusive, ``until``
    exclusive, both timezone-aware.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    actor: str | None = Field(default=None, min_length=1, max_length=200)
    action: str | None = Field(default=None, min_length=1, max_length=64)
    object_kind: str | None = Field(default=None, min_length=1, max_length=32)
    object_id: str | None = Field(default=None, min_length=1, max_length=300)
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    outcome: AuditOutcome | None = None


class AuditPage(BaseModel):
    """One page of entries, oldest first; ``next_after_seq`` None on the last page."""

    items: list[AuditEntry]
    next_after_seq: int | None = Field(default=None, ge=0, le=MAX_INT64)


def entry_of(row: AuditRow) -> AuditEntry:
    """The entry a stored row holds; raises pydantic's `ValidationError` for a row that
    breaks an entry's bounds (which only a hand edit can write)."""
    return AuditEntry(
        seq=row.seq,
        ts=row.ts,
        actor=AuditActor(
            kind=row.actor_kind,
            id=row.actor_id,
            name=row.actor_name,
            token_prefix=row.actor_token_prefix,
        ),
        action=row.action,
        object=AuditObject(kind=row.object_kind, id=row.object_id),
        outcome=AuditOutcome(row.outcome),
        request_id=row.request_id,
        source=row.source,
        before=row.before,
        after=row.after,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


def _conditions(where: AuditFilter) -> list[Any]:
    out: list[Any] = []
    if where.actor is not None:
        out.append(
            or_(col(AuditRow.actor_id) == where.actor, col(AuditRow.actor_name) == where.actor)
        )
    if where.action is not None:
        if where.action.endswith("."):
            # startswith escapes % and _ so a prefix matches only itself.
            out.append(col(AuditRow.action).startswith(where.action, autoescape=True))
        else:
            out.append(col(AuditRow.action) == where.action)
    if where.object_kind is not None:
        out.append(col(AuditRow.object_kind) == where.object_kind)
    if where.object_id is not None:
        out.append(col(AuditRow.object_id) == where.object_id)
    if where.since is not None:
        out.append(col(AuditRow.ts) >= where.since)
    if where.until is not None:
        out.append(col(AuditRow.ts) < where.until)
    if where.outcome is not None:
        out.append(col(AuditRow.outcome) == where.outcome.value)
    return out


def _rows(
    session: Session, where: AuditFilter, after_seq: int, limit: int, up_to_seq: int | None
) -> list[AuditRow]:
    query = select(AuditRow).where(col(AuditRow.seq) > after_seq, *_conditions(where))
    if up_to_seq is not None:
        query = query.where(col(AuditRow.seq) <= up_to_seq)
    return list(session.exec(query.order_by(col(AuditRow.seq)).limit(limit)))


def query_page(
    session: Session, where: AuditFilter, *, after_seq: int = 0, limit: int = 100
) -> AuditPage:
    """Entries matching ``where`` with seq above ``after_seq``, at most ``limit``.

    Raises `ValueError` for a ``limit`` outside 1..`MAX_PAGE`, and pydantic's
    `ValidationError` for a stored row that is not an entry (run ``audit verify``).
    """
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be 1..{MAX_PAGE}, found {limit}")
    # One row more than asked says whether there is a next page.
    rows = _rows(session, where, after_seq, limit + 1, None)
    items = [entry_of(r) for r in rows[:limit]]
    more = len(rows) > limit
    return AuditPage(items=items, next_after_seq=items[-1].seq if more and items else None)


def iter_entries(
    engine: Engine,
    where: AuditFilter | None = None,
    *,
    after_seq: int = 0,
    chunk_rows: int = EXPORT_CHUNK_ROWS,
) -> Iterator[AuditEntry]:
    """Every entry matching ``where``, oldest first, read ``chunk_rows`` at a time.

    Raises pydantic's `ValidationError` for a stored row that is not an entry.
    """
    where = where or AuditFilter()
    while True:
        with Session(engine) as session:
            rows = _rows(session, where, after_seq, chunk_rows, None)
            entries = [entry_of(r) for r in rows]
        yield from entries
        if len(rows) < chunk_rows:
            return
        after_seq = rows[-1].seq


def iter_for_verify(
    engine: Engine, *, up_to_seq: int, after_seq: int = 0, chunk_rows: int = 1000
) -> Iterator[AuditEntry | Unreadable]:
    """Every stored row with seq in (``after_seq``, ``up_to_seq``], oldest first; a row
    that is not a valid entry comes as `Unreadable` rather than stopping the scan."""
    everything = AuditFilter()
    while after_seq < up_to_seq:
        with Session(engine) as session:
            rows = _rows(session, everything, after_seq, chunk_rows, up_to_seq)
        for row in rows:
            try:
                yield entry_of(row)
            except (ValidationError, ValueError) as e:
                yield Unreadable(row.seq, str(e).replace("\n", " ")[:300])
        if len(rows) < chunk_rows:
            return
        after_seq = rows[-1].seq


def read_head(engine: Engine) -> ChainHead | None:
    """The ``audit_head`` row, or None if it is gone."""
    with Session(engine) as session:
        head = session.get(AuditHead, 1)
        return None if head is None else ChainHead(seq=int(head.seq), hash=head.hash)


def max_seq(engine: Engine) -> int | None:
    """The largest seq stored, None for an empty log."""
    with Session(engine) as session:
        value = session.exec(select(func.max(AuditRow.seq))).one()
        return None if value is None else int(value)


CSV_COLUMNS = (
    "seq",
    "ts",
    "actor_kind",
    "actor_id",
    "actor_name",
    "actor_token_prefix",
    "action",
    "object_kind",
    "object_id",
    "outcome",
    "request_id",
    "source",
    "before",
    "after",
    "prev_hash",
    "hash",
)


def export_jsonl(
    entries: Iterable[AuditEntry], *, chunk_rows: int = EXPORT_CHUNK_ROWS
) -> Iterator[bytes]:
    """JSON Lines, one entry a line (the shape of ``GET /v1/audit`` items), in chunks."""
    buffer: list[str] = []
    for entry in entries:
        buffer.append(entry.model_dump_json())
        if len(buffer) >= chunk_rows:
            yield ("\n".join(buffer) + "\n").encode()
            buffer.clear()
    if buffer:
        yield ("\n".join(buffer) + "\n").encode()


def export_csv(
    entries: Iterable[AuditEntry], *, chunk_rows: int = EXPORT_CHUNK_ROWS
) -> Iterator[bytes]:
    """CSV with a header row (`CSV_COLUMNS`); ``before`` and ``after`` as JSON text."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for rows, entry in enumerate(entries, 1):
        writer.writerow(_csv_row(entry))
        if rows % chunk_rows == 0:
            yield out.getvalue().encode()
            out.seek(0)
            out.truncate()
    yield out.getvalue().encode()


def _csv_row(entry: AuditEntry) -> list[str]:
    def text(value: Any) -> str:
        return "" if value is None else str(value)

    def as_json(value: dict[str, Any] | None) -> str:
        return "" if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))

    ts: datetime = entry.ts
    return [
        str(entry.seq),
        ts.isoformat(),
        entry.actor.kind,
        entry.actor.id,
        entry.actor.name,
        text(entry.actor.token_prefix),
        entry.action,
        entry.object.kind,
        entry.object.id,
        entry.outcome.value,
        text(entry.request_id),
        text(entry.source),
        as_json(entry.before),
        as_json(entry.after),
        entry.prev_hash,
        entry.hash,
    ]
