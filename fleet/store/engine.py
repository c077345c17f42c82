"""The engine factory: one function for SQLite (the default) and PostgreSQL.

SQLite runs in WAL mode with a busy timeout so the API can read while the ingester
writes, and so two processes on one file wait for each other instead of failing.
"""

from __future__ import annotations

import sqlite3
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

import edgefleet.fleet.store.tables  # noqa: F401  (registers the tables on SQLModel.metadata)

SQLITE_BUSY_TIMEOUT_MS = 10_000


def normalise_url(url: str) -> str:
    """The URL with PostgreSQL pointed at the psycopg 3 driver.

    ``postgresql://`` and ``postgres://`` would otherwise pick psycopg2, which the fleet
    extra does not install. Raises `ValueError` for a backend other than SQLite or
    PostgreSQL.
    """
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    backend = make_url(url).get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(f"database_url must be sqlite:// or postgresql://, found {backend!r}")
    return url


def make_engine(
    url: str, *, sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS, **kwargs: Any
) -> Engine:
    """An engine for ``url``; creates the directory of a SQLite file if needed.

    ``sqlite_busy_timeout_ms`` is how long a SQLite writer waits for another one before
    the database reports itself locked (a transient error the ingester retries).

    Raises `ValueError` for an unsupported backend (see `normalise_url`).
    """
    url = normalise_url(url)
    engine = _make_engine(url, sqlite_busy_timeout_ms, **kwargs)
    _RECIPES[engine] = EngineRecipe(url, sqlite_busy_timeout_ms, dict(kwargs))
    return engine


class EngineRecipe:
    """How `make_engine` made an engine, to make its like in another process (picklable)."""

    def __init__(self, url: str, sqlite_busy_timeout_ms: int, kwargs: dict[str, Any]) -> None:
        self.url = url
        self.sqlite_busy_timeout_ms = sqlite_busy_timeout_ms
        self.kwargs = kwargs

    def make(self) -> Engine:
        """A new engine on the same database with the same options."""
        return make_engine(
            self.url, sqlite_busy_timeout_ms=self.sqlite_busy_timeout_ms, **self.kwargs
        )


_RECIPES: weakref.WeakKeyDictionary[Engine, EngineRecipe] = weakref.WeakKeyDictionary()


def engine_recipe(engine: Engine) -> EngineRecipe | None:
    """How to make ``engine``'s like in another process; None if another process cannot
    reach its database (in-memory SQLite) or it was not made by `make_engine`."""
    recipe = _RECIPES.get(engine)
    if recipe is None:
        return None
    database = make_url(recipe.url).database
    if make_url(recipe.url).get_backend_name() == "sqlite" and database in (None, "", ":memory:"):
        return None
    return recipe


def _make_engine(url: str, sqlite_busy_timeout_ms: int, **kwargs: Any) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"check_same_thread": False, "timeout": sqlite_busy_timeout_ms / 1000}
        engine = create_engine(url, connect_args=connect_args, **kwargs)

        def configure(dbapi_connection: sqlite3.Connection, _record: object) -> None:
            _configure_sqlite(dbapi_connection, sqlite_busy_timeout_ms)

        event.listen(engine, "connect", configure)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


# The chain's first prev_hash; an empty log's head.
AUDIT_GENESIS_HASH = "0" * 64


def seed_rows(connection: Connection) -> None:
    """The rows every database needs: the audit chain's one head row, so every append
    can lock it (two migrators both try; the loser's insert does nothing)."""
    from sqlalchemy import insert
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    from edgefleet.fleet.store.governance_tables import AuditHead

    table = AuditHead.__table__  # type: ignore[attr-defined]
    values = {"id": 1, "seq": 0, "hash": AUDIT_GENESIS_HASH}
    statement: Any
    if connection.dialect.name == "postgresql":
        statement = pg_insert(table).values(values).on_conflict_do_nothing()
    elif connection.dialect.name == "sqlite":
        statement = sqlite_insert(table).values(values).on_conflict_do_nothing()
    else:  # pragma: no cover  (normalise_url admits only the two)
        statement = insert(table).values(values)
    connection.execute(statement)


def _configure_sqlite(dbapi_connection: sqlite3.Connection, busy_timeout_ms: int) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        # WAL makes NORMAL durable across application crashes; only an OS crash can lose
        # the last transactions, which QoS 1 redelivery and the device outbox cover.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()
