"""Dead letters, bounded: what a row keeps of a rejected payload, and how the table is capped.

Invariants:
- a dead letter keeps at most ``prefix_bytes`` of its payload, with the whole payload's
  size and sha256 (enough to recognise a payload again without storing it), at most
  `MAX_TOPIC_CHARS` of its topic and `MAX_ERROR_CHARS` of its reason, both with NUL
  written as ``\\x00`` (a reason can echo a peer's string, and PostgreSQL text refuses
  NUL: a dead letter the database refuses would stall the writer in retries);
- after every batch that adds dead letters, the table holds at most ``max_rows`` rows
  and at most ``max_bytes`` of ``stored_bytes`` (prefix, topic and error bytes plus
  `ROW_OVERHEAD_BYTES` a row); the oldest (lowest id) go first;
- `expire` deletes the rows older than ``retention_s``; the ingester's writer thread
  runs it every ``dead_letter_sweep_interval_s``;
- every row dropped either way is counted (`TrimResult`, then the Prometheus counter
  ``edgefleet_ingest_dead_letters_dropped_total``), never silently lost.

`dead_letter_row` is pure; `trim` and `expire` run in the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, delete, func, select

from edgefleet.fleet.ingest.decode import Rejected
from edgefleet.fleet.store.tables import DeadLetter

MAX_TOPIC_CHARS = 1024
MAX_ERROR_CHARS = 2000
ROW_OVERHEAD_BYTES = 128  # the id, times, size and hash: so tiny rows count too

_DEAD: Table = DeadLetter.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class DeadLetterLimits:
    """How much of the dead letters the store keeps (the ``dead_letter_*`` settings)."""

    prefix_bytes: int = 4096
    max_rows: int = 100_000
    max_bytes: int = 64 << 20
    retention_s: float = 7 * 24 * 3600.0


def dead_letter_row(rejected: Rejected, prefix_bytes: int) -> dict[str, Any]:
    """The `DeadLetter` values of ``rejected``: its payload cut to ``prefix_bytes``."""
    prefix = rejected.payload[:prefix_bytes]
    topic = _storable(rejected.topic[:MAX_TOPIC_CHARS])
    error = _storable(rejected.error[:MAX_ERROR_CHARS])
    stored = len(prefix) + len(topic.encode()) + len(error.encode()) + ROW_OVERHEAD_BYTES
    return {
        "received_at": rejected.received_at,
        "topic": topic,
        "payload_prefix": prefix,
        "payload_bytes": rejected.payload_size,
        "payload_sha256": rejected.payload_sha256,
        "error": error,
        "stored_bytes": stored,
    }


def _storable(text: str) -> str:
    """``text`` as every database stores it: no NUL, no lone surrogate."""
    if text.isprintable() or (text.isascii() and "\x00" not in text):
        return text
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def trim(conn: Connection, limits: DeadLetterLimits) -> int:
    """Drop the oldest dead letters beyond ``max_rows`` and ``max_bytes``; how many."""
    rows, stored = conn.execute(
        select(func.count(), func.coalesce(func.sum(_DEAD.c.stored_bytes), 0))
    ).one()
    dropped = 0
    if rows > limits.max_rows:
        # The newest max_rows stay: every id up to the first one beyond them goes.
        cutoff = (
            select(_DEAD.c.id)
            .order_by(_DEAD.c.id.desc())
            .offset(limits.max_rows)
            .limit(1)
            .scalar_subquery()
        )
        dropped += conn.execute(delete(_DEAD).where(_DEAD.c.id <= cutoff)).rowcount
    if stored > limits.max_bytes:
        # Running total from the newest down: the first row that passes the cap and
        # every older one go.
        running = select(
            _DEAD.c.id,
            func.sum(_DEAD.c.stored_bytes).over(order_by=_DEAD.c.id.desc()).label("running"),
        ).subquery()
        cutoff = (
            select(func.max(running.c.id))
            .where(running.c.running > limits.max_bytes)
            .scalar_subquery()
        )
        dropped += conn.execute(delete(_DEAD).where(_DEAD.c.id <= cutoff)).rowcount
    return dropped


def expire(conn: Connection, now: datetime, retention_s: float) -> int:
    """Delete the dead letters received more than ``retention_s`` before ``now``; how many."""
    oldest_kept = now - timedelta(seconds=retention_s)
    return conn.execute(delete(_DEAD).where(_DEAD.c.received_at < oldest_kept)).rowcount
