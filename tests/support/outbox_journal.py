"""What an agent really produced: a journal of every row ever put in its outbox.

`journal_outbox` creates the agent's outbox (before the agent's first start) with a
trigger that copies each inserted message's seq and kind into a ``journal`` table of the
same SQLite file, so the agent's own transactions fire it and rows the agent deletes
once delivered stay journaled. Tests compare the journal with what the fleet stored, so
"nothing lost, nothing doubled" is checked against what the device made, not against
what some subscriber happened to see.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edgefleet.agent.daemon import OUTBOX_FILE
from edgefleet.agent.outbox import Outbox


def journal_outbox(data_dir: Path) -> Path:
    """Create the agent's outbox in ``data_dir`` with a journal of every row ever inserted."""
    path = data_dir / OUTBOX_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    Outbox(path).close()
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE journal (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL);"
            "CREATE TRIGGER journal_insert AFTER INSERT ON messages BEGIN"
            " INSERT OR IGNORE INTO journal (seq, kind) VALUES (NEW.seq, NEW.kind); END;"
        )
    return path


def journaled(outbox: Path) -> set[int]:
    """The seq of every message the agent ever put in ``outbox``."""
    with sqlite3.connect(outbox) as db:
        return {row[0] for row in db.execute("SELECT seq FROM journal")}


def fleet_acknowledges(outbox: Path) -> bool:
    """Whether the fleet has told the agent which of its seqs it stored."""
    with sqlite3.connect(outbox) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'fleet_acks'").fetchone()
    return bool(row and row[0])


def dropped(outbox: Path) -> int:
    """How many messages the agent dropped (a full outbox, a failed write)."""
    with sqlite3.connect(outbox) as db:
        rows = db.execute(
            "SELECT COALESCE(SUM(value), 0) FROM meta"
            " WHERE key IN ('dropped_total', 'write_failures_total')"
        ).fetchone()
    return int(rows[0])
