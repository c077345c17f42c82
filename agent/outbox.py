"""The durable outbox: every QoS-1 device message is stored here before it is sent.

Invariants:
- a message is inserted (committed) before the link may send it, and deleted only once
  it is delivered: when the fleet says it stored it (`ack_seqs`, end-to-end delivery,
  see `edgefleet.agent.delivery`), or, with a fleet that never said so, when the broker
  acknowledged it (PUBACK, `ack`). So a broker outage or an agent restart loses
  nothing, and with end-to-end delivery neither does a broker restarted without
  persistence nor a fleet with no replica subscribed: the link replays the backlog
  from the oldest row on every connect;
- once the fleet has acknowledged anything (`mark_fleet_acks`), the outbox remembers it
  (``fleet_acks`` in ``meta``), so an agent restarted while its fleet is away keeps
  waiting for the fleet's word instead of falling back to PUBACKs;
- rows are read back in insertion order, which is also ``seq`` order: the sequence
  number is allocated and the row inserted in one transaction under one lock;
- ``seq`` only grows, across restarts too. A fresh outbox starts at
  ``int(time.time() * 1000) * 1000``, and every open takes the larger of the stored
  counter and that clock floor. Seqs are used one per message, far slower than the
  floor's million per second, so a re-provisioned device with a wiped data dir, or a
  counter whose last commits were lost in a power cut, still continues above every seq
  it ever sent (the fleet drops duplicates on ``(device_id, seq)``);
- the outbox is bounded by ``max_messages``, messages waiting for the fleet's word
  included. When full, it drops the oldest telemetry first (the next report supersedes
  it), then the oldest drift window, then the oldest message of any kind. Every drop
  is counted in a persisted ``dropped_total``;
- a full disk never raises: the message is counted as dropped and in
  ``write_failures_total``, a warning is logged once per streak, the agent serves on.

Durability: WAL journal with ``synchronous=NORMAL`` by default. In WAL mode NORMAL
never corrupts the database and survives a crash or SIGKILL of the agent; only an OS
crash or power cut can lose the last commits before the WAL is synced. We take that
because an fsync per message wears SD cards and the clock floor above keeps ``seq``
safe anyway; ``synchronous = "full"`` in the config trades that wear for those last
messages.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

# Lower index = dropped first when the outbox is full.
DROP_ORDER = ("telemetry", "drift")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_s REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_kind ON messages (kind, id);
CREATE INDEX IF NOT EXISTS messages_by_seq ON messages (seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class OutboxError(Exception):
    """The outbox file cannot be opened (not a database, unreadable directory)."""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One stored message, as the link sends it."""

    id: int
    seq: int
    kind: str
    topic: str
    payload: bytes


def clock_floor_seq(now_s: float) -> int:
    """The smallest seq a freshly opened outbox may hand out at wall-clock ``now_s``."""
    return int(now_s * 1000) * 1000


class Outbox:
    """A bounded, durable FIFO of QoS-1 messages in one SQLite file. Thread-safe."""

    def __init__(
        self,
        path: Path,
        *,
        max_messages: int = 100_000,
        max_db_bytes: int | None = None,
        synchronous: Literal["normal", "full"] = "normal",
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (or create) the outbox at ``path``; raises `OutboxError` if it cannot."""
        self.path = path
        self._max_messages = max_messages
        self._clock = clock
        self._lock = threading.Lock()
        self._failing = False
        self.write_failures_total = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._db.executescript(_SCHEMA)
            if max_db_bytes is not None:
                page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
                self._db.execute(f"PRAGMA max_page_count={max(max_db_bytes // page_size, 8)}")
            stored = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            self._depth = int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        except (sqlite3.Error, OSError) as e:
            raise OutboxError(f"{path}: cannot open the outbox: {e}") from e
        self._dropped_total = int(stored.get("dropped_total", 0))
        self._fleet_acks = bool(stored.get("fleet_acks", 0))
        self._next_seq = max(int(stored.get("next_seq", 0)), clock_floor_seq(clock()))
        log.debug("outbox %s: %d queued, next seq %d", path, self._depth, self._next_seq)

    @property
    def depth(self) -> int:
        """Messages stored and not yet acknowledged by the broker."""
        return self._depth

    @property
    def dropped_total(self) -> int:
        """Messages lost to the bound or to a full disk, since the outbox was created."""
        return self._dropped_total

    @property
    def fleet_acks(self) -> bool:
        """True once the fleet has acknowledged a stored message (persisted)."""
        return self._fleet_acks

    def mark_fleet_acks(self) -> None:
        """Remember that the fleet acknowledges what it stores; a failed write is retried
        at the next call (the link calls it for every acknowledgement until it holds)."""
        with self._lock:
            if self._fleet_acks:
                return
            try:
                self._db.execute(
                    "INSERT INTO meta (key, value) VALUES ('fleet_acks', 1)"
                    " ON CONFLICT (key) DO UPDATE SET value = 1"
                )
            except sqlite3.Error as e:
                self._write_failed("the fleet_acks flag", e)
                return
            self._fleet_acks = True
            log.info("outbox %s: the fleet acknowledges stored messages", self.path)

    def enqueue(self, topic: str, kind: str, build: Callable[[int], bytes]) -> int | None:
        """Store the message ``build(seq)`` for ``topic``; return its seq.

        ``kind`` is the channel name (``telemetry``, ``drift``, ``events``...), which
        decides what is dropped first when the outbox is full. Returns None, after
        counting the loss, when the database cannot take the write (disk full, I/O
        error); never raises for that. Exceptions from ``build`` propagate and consume
        no seq.
        """
        with self._lock:
            seq = self._next_seq
            payload = build(seq)
            dropped = 0
            try:
                self._db.execute("BEGIN IMMEDIATE")
                while self._depth - dropped >= self._max_messages:
                    self._drop_one()
                    dropped += 1
                self._db.execute(
                    "INSERT INTO messages (seq, kind, topic, payload, created_s)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (seq, kind, topic, payload, self._clock()),
                )
                self._write_meta(seq + 1, self._dropped_total + dropped)
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                self._next_seq = seq + 1  # the seq may have been seen by build(); never reuse
                self._dropped_total += 1
                self._write_failed(f"{kind} message seq {seq}", e)
                return None
            self._next_seq = seq + 1
            self._depth += 1 - dropped
            if dropped:
                self._dropped_total += dropped
                log.debug("outbox full at %d messages: dropped %d", self._max_messages, dropped)
            self._recovered()
            return seq

    def allocate_seq(self) -> int:
        """A seq for a message sent without the outbox (birth, will, shutdown state)."""
        with self._lock:
            seq = self._next_seq
            self._next_seq = seq + 1
            try:
                self._write_meta(seq + 1, self._dropped_total)
            except sqlite3.Error as e:
                # The clock floor at the next open still keeps seqs above this one.
                self._write_failed("the seq counter", e)
            return seq

    def peek(self, after_id: int = 0, limit: int = 100) -> list[OutboxMessage]:
        """Up to ``limit`` stored messages with id above ``after_id``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, seq, kind, topic, payload FROM messages WHERE id > ?"
                " ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [OutboxMessage(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]

    def ack(self, message_id: int) -> None:
        """Forget a message the broker acknowledged. A failed delete only means a resend."""
        with self._lock:
            try:
                deleted = self._db.execute("DELETE FROM messages WHERE id = ?", (message_id,))
            except sqlite3.Error as e:
                self._write_failed(f"the ack of message {message_id}", e)
                return
            self._depth -= deleted.rowcount

    def ack_seqs(self, ranges: Iterable[tuple[int, int]]) -> int:
        """Forget the messages whose seq lies in one of the inclusive ``ranges`` (what the
        fleet stored); how many. A failed delete only means a resend."""
        spans = list(ranges)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                deleted = 0
                for lo, hi in spans:
                    cursor = self._db.execute(
                        "DELETE FROM messages WHERE seq BETWEEN ? AND ?", (lo, hi)
                    )
                    deleted += cursor.rowcount
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                self._write_failed(f"the ack of {len(spans)} seq ranges", e)
                return 0
            self._depth -= deleted
            return deleted

    def close(self) -> None:
        """Close the database; further calls fail."""
        with self._lock:
            self._db.close()

    def _drop_one(self) -> None:
        for kind in DROP_ORDER:
            cursor = self._db.execute(
                "DELETE FROM messages WHERE id ="
                " (SELECT id FROM messages WHERE kind = ? ORDER BY id LIMIT 1)",
                (kind,),
            )
            if cursor.rowcount:
                return
        self._db.execute(
            "DELETE FROM messages WHERE id = (SELECT id FROM messages ORDER BY id LIMIT 1)"
        )

    def _write_meta(self, next_seq: int, dropped_total: int) -> None:
        self._db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [("next_seq", next_seq), ("dropped_total", dropped_total)],
        )

    def _rollback(self) -> None:
        # No transaction may be open (BEGIN itself failed); nothing to undo then.
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")

    def _write_failed(self, what: str, error: sqlite3.Error) -> None:
        self.write_failures_total += 1
        if not self._failing:
            self._failing = True
            log.warning(
                "outbox %s cannot store %s: %s; counting losses until writes succeed again",
                self.path,
                what,
                error,
            )
        else:
            log.debug("outbox %s cannot store %s: %s", self.path, what, error)

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.info(
                "outbox %s writes again (%d write failures so far)",
                self.path,
                self.write_failures_total,
            )
