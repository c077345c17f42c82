"""Leader election across fleet replicas: a lease row taken by compare-and-set.

A replica holds the lease named ``name`` while the row says ``holder = <its id>`` and
``expires_at`` is in the future. `Lease.try_acquire` is one conditional UPDATE::

    UPDATE lease SET holder = :me, expires_at = :now + :duration
     WHERE name = :name AND (holder = :me OR holder IS NULL OR expires_at <= :now)

so it renews the holder's lease, takes a lapsed or released one, and changes nothing
while another replica holds it. The database makes the UPDATE atomic (a row lock on
PostgreSQL, the write lock on SQLite), so two replicas never both see one row changed.
The row is created once with INSERT ... ON CONFLICT DO NOTHING.

Invariants:
- at most one replica holds a lease at any instant of the database's view, provided the
  replicas' clocks agree to within the lease duration (times are each replica's UTC);
- a holder that stops renewing loses the lease ``duration_s`` after its last renewal;
  `release` hands it over at once on a clean shutdown;
- holding is re-checked inside the transaction that writes a rollout (`holds`), so a
  replica that lost the lease while it was deciding cannot write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from edgefleet.fleet.store.rollout_tables import Lease as LeaseRow
from edgefleet.shared.messages import utcnow

logger = logging.getLogger(__name__)

_TABLE: Any = LeaseRow.__table__  # type: ignore[attr-defined]


class Lease:
    """The lease ``name`` as seen by the replica ``holder``."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        holder: str,
        *,
        duration_s: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if duration_s <= 0:
            raise ValueError(f"lease duration must be positive, found {duration_s}")
        self._engine = engine
        self.name = name
        self.holder = holder
        self.duration = timedelta(seconds=duration_s)
        self._clock = clock
        self._held = False

    @property
    def held(self) -> bool:
        """Whether the last `try_acquire` got (or kept) the lease."""
        return self._held

    def try_acquire(self) -> bool:
        """Take or renew the lease; True if this replica holds it now.

        Raises `sqlalchemy.exc.SQLAlchemyError` if the database cannot be reached.
        """
        now = self._clock()
        with self._engine.begin() as conn:
            got = self._take(conn, now)
            if not got and not self._exists(conn):
                # The first try on this database: create the row, then take it. (Creating
                # it every time cost an INSERT a tick for nothing.)
                _ensure_row(conn, self.name, now)
                got = self._take(conn, now)
            if got and not self._held:
                conn.execute(
                    update(_TABLE).where(_TABLE.c.name == self.name).values(acquired_at=now)
                )
        if got != self._held:
            logger.info("%s %s lease %r", self.holder, "acquired" if got else "lost", self.name)
        self._held = got
        return got

    def _take(self, conn: Connection, now: datetime) -> bool:
        result = conn.execute(
            update(_TABLE)
            .where(
                _TABLE.c.name == self.name,
                or_(
                    _TABLE.c.holder == self.holder,
                    _TABLE.c.holder.is_(None),
                    _TABLE.c.expires_at <= now,
                ),
            )
            .values(holder=self.holder, expires_at=now + self.duration)
        )
        return result.rowcount == 1

    def _exists(self, conn: Connection) -> bool:
        return (
            conn.execute(select(_TABLE.c.name).where(_TABLE.c.name == self.name)).first()
            is not None
        )

    def holds(self, conn: Connection) -> bool:
        """Whether this replica holds the lease, read inside the caller's transaction."""
        row = conn.execute(
            select(_TABLE.c.name).where(
                and_(
                    _TABLE.c.name == self.name,
                    _TABLE.c.holder == self.holder,
                    _TABLE.c.expires_at > self._clock(),
                )
            )
        ).first()
        return row is not None

    def release(self) -> None:
        """Give the lease up now, if this replica holds it (clean shutdown)."""
        with self._engine.begin() as conn:
            conn.execute(
                update(_TABLE)
                .where(_TABLE.c.name == self.name, _TABLE.c.holder == self.holder)
                .values(holder=None, expires_at=self._clock())
            )
        if self._held:
            logger.info("%s released lease %r", self.holder, self.name)
        self._held = False


def current_holder(engine: Engine, name: str, now: datetime | None = None) -> str | None:
    """Who holds the lease ``name`` now (None: nobody, or it lapsed)."""
    now = now or utcnow()
    with engine.connect() as conn:
        row = conn.execute(
            select(_TABLE.c.holder).where(_TABLE.c.name == name, _TABLE.c.expires_at > now)
        ).first()
    return None if row is None else row[0]


def _ensure_row(conn: Connection, name: str, now: datetime) -> None:
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    conn.execute(
        insert(_TABLE)
        .values(name=name, holder=None, expires_at=now)
        .on_conflict_do_nothing(index_elements=["name"])
    )


def lock_row(conn: Connection, name: str, now: datetime) -> None:
    """Serialise the rest of the caller's transaction with every other one that locks
    ``name``: a row lock on PostgreSQL, the database write lock on SQLite. The lease row
    is only touched in ``acquired_at``, so a lease of that name is not disturbed."""
    _ensure_row(conn, name, now)
    conn.execute(update(_TABLE).where(_TABLE.c.name == name).values(acquired_at=now))
