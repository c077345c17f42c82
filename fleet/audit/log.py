"""Appending to the audit log inside the caller's transaction.

`append` locks the chain's head row first (an UPDATE, so PostgreSQL takes a row lock and
SQLite its write lock), so two replicas appending at once wait for each other and the
chain stays one line; the entry commits or rolls back with the change it records.

Append last in a transaction, after its other writes: a transaction holding the head
then waits for no other lock, so two of them cannot deadlock on it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, Table, insert, text
from sqlmodel import Session

from edgefleet.fleet.audit.chain import entry_hash
from edgefleet.fleet.audit.entry import AuditRecord
from edgefleet.fleet.store.governance_tables import AuditRow
from edgefleet.shared.messages import utcnow

AUDIT_TABLE: Table = AuditRow.__table__  # type: ignore[attr-defined]


class AuditHeadMissingError(RuntimeError):
    """The ``audit_head`` row is gone: the schema was not created by `create_all`, or
    someone deleted it (which `edgefleet fleet audit verify` would report)."""


def append(
    session: Session | Connection, record: AuditRecord, *, now: datetime | None = None
) -> int:
    """Add ``record`` to the chain in ``session``'s transaction; returns its seq.

    ``session`` is an ORM session or a Core connection (the director's). The caller
    commits (or rolls back) the entry with its change. Raises
    `AuditHeadMissingError` if the head row is missing.
    """
    head = session.execute(
        text("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")
    ).one_or_none()
    if head is None:
        raise AuditHeadMissingError("the audit_head row is missing; create the schema first")
    seq, prev_hash = int(head[0]), str(head[1])
    # Stored as hashed: `canonical_json` dumps in JSON mode (times to strings, ...).
    change = record.model_dump(mode="json", include={"before", "after"})
    ts = now or utcnow()
    digest = entry_hash(prev_hash, record, seq=seq, ts=ts)
    session.execute(text("UPDATE audit_head SET hash = :hash WHERE id = 1"), {"hash": digest})
    session.execute(
        insert(AUDIT_TABLE).values(
            seq=seq,
            ts=ts,
            actor_kind=record.actor.kind,
            actor_id=record.actor.id,
            actor_name=record.actor.name,
            actor_token_prefix=record.actor.token_prefix,
            action=record.action,
            object_kind=record.object.kind,
            object_id=record.object.id,
            request_id=record.request_id,
            source=record.source,
            outcome=record.outcome.value,
            before=change["before"],
            after=change["after"],
            prev_hash=prev_hash,
            hash=digest,
        )
    )
    return seq
