"""Schema migrations: where a database stands, bringing it to head, and refusing to run
on one that is behind.

Invariants:
- a service only ever runs on a database at this code's head revision (`require_current`);
  a database that is behind, empty, older than migrations or newer than the code is
  refused with the command that fixes it;
- one migrator at a time: PostgreSQL holds an advisory lock for the whole upgrade, SQLite
  a ``BEGIN IMMEDIATE`` write lock; every revision of one upgrade runs in that one
  transaction (both engines have transactional DDL), so a crash or a failing revision
  leaves the database exactly as it was;
- a database made by ``create_all`` before migrations existed (tables, no
  ``alembic_version``) is adopted: stamped at the baseline, then upgraded.

The revisions live in `edgefleet.fleet.store.migrations`; there is no ``alembic.ini``.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.autogenerate.api import AutogenContext
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, create_engine, event, inspect, text
from sqlalchemy.engine import make_url

from edgefleet.fleet.store.engine import SQLITE_BUSY_TIMEOUT_MS, normalise_url

BASELINE_REVISION = "0001"
# A table every database made by the fleet has had since its first release: a database
# holding it but no alembic_version predates migrations.
LEGACY_MARKER_TABLE = "device"
VERSION_TABLE = "alembic_version"
# pg_advisory_xact_lock's key: "edgefleet" in ASCII, so two replicas starting at once
# queue for the one migrator instead of both creating the same tables.
PG_MIGRATION_LOCK_KEY = 0x65646765666C6565
UPGRADE_COMMAND = "edgefleet fleet migrate upgrade"

# Alembic logs its plugin setup and "non-transactional DDL" (wrong here: the caller's
# transaction covers the DDL) at info; `upgrade`'s progress lines say what happens.
logging.getLogger("alembic").setLevel(logging.WARNING)


class SchemaNotCurrent(RuntimeError):  # noqa: N818  (a state, not a failure of the code)
    """The database is not at this code's head revision; the message says what to run."""


@dataclass(frozen=True)
class SchemaStatus:
    """Where one database stands against this code's revisions."""

    current: str | None  # None: no alembic_version row
    head: str
    legacy: bool  # tables made before migrations existed, never stamped
    known: bool  # ``current`` is one of this code's revisions (False: a newer release's)

    @property
    def is_current(self) -> bool:
        return self.current == self.head


@dataclass(frozen=True)
class Revision:
    """One revision, as ``edgefleet fleet migrate history`` lists it."""

    revision: str
    down_revision: str | None
    message: str


def target_metadata() -> MetaData:
    """The models' metadata with every table module imported, as the revisions must
    match it."""
    from sqlmodel import SQLModel

    import edgefleet.fleet.store.drift_tables
    import edgefleet.fleet.store.governance_tables
    import edgefleet.fleet.store.identity_tables
    import edgefleet.fleet.store.rollout_tables
    import edgefleet.fleet.store.tables  # noqa: F401

    return SQLModel.metadata


def render_item(type_: str, obj: Any, _context: AutogenContext) -> str | Literal[False]:
    """Autogenerate writes the portable column types as plain SQLAlchemy ones, so a
    revision never imports the models (which keep changing after it is written)."""
    from sqlmodel.sql.sqltypes import AutoString

    from edgefleet.fleet.store.types import UTCDateTime

    if type_ == "type":
        if isinstance(obj, UTCDateTime):
            return "sa.DateTime(timezone=True)"
        if isinstance(obj, AutoString):
            return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    return False


def script_directory() -> ScriptDirectory:
    """This code's revisions."""
    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    """The newest revision this code knows."""
    head = script_directory().get_current_head()
    assert head is not None, "the migrations package holds no revision"
    return head


def history() -> list[Revision]:
    """Every revision, oldest first."""
    revisions = list(script_directory().walk_revisions())
    revisions.reverse()
    return [
        Revision(
            revision=r.revision,
            down_revision=r.down_revision if isinstance(r.down_revision, str) else None,
            message=(r.doc or "").strip(),
        )
        for r in revisions
    ]


def schema_status(engine: Engine) -> SchemaStatus:
    """Where the database behind ``engine`` stands. Raises SQLAlchemy's
    `OperationalError` when it cannot be reached."""
    scripts = script_directory()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
        tables = set(inspect(connection).get_table_names())
    known = current is None or _knows(scripts, current)
    legacy = current is None and LEGACY_MARKER_TABLE in tables
    return SchemaStatus(current=current, head=head_revision(), legacy=legacy, known=known)


def require_current(engine: Engine) -> None:
    """Return if the database is at head; otherwise raise `SchemaNotCurrent` naming the
    command to run (or, for a database newer than this code, what to upgrade)."""
    status = schema_status(engine)
    if status.is_current:
        return
    where = engine.url.render_as_string(hide_password=True)
    fix = f"run `{UPGRADE_COMMAND} --database-url {where}` (or start the service with --migrate)"
    if not status.known:
        raise SchemaNotCurrent(
            f"the database {where} is at revision {status.current}, which this edgefleet"
            f" (head {status.head}) does not know: a newer release migrated it;"
            " run that release, or restore a backup taken before its migration"
        )
    if status.legacy:
        reason = "was made before edgefleet had migrations"
    elif status.current is None:
        reason = "is empty"
    else:
        reason = f"is at revision {status.current}, behind this edgefleet's {status.head}"
    raise SchemaNotCurrent(f"the database {where} {reason}: {fix}")


def upgrade(
    url: str, revision: str = "head", *, progress: Callable[[str], None] | None = None
) -> list[str]:
    """Bring the database at ``url`` to ``revision`` in one locked transaction; return
    the revisions applied, oldest first (empty if it was there already).

    ``progress`` gets one line per revision as it is applied. Raises `SchemaNotCurrent` for
    a database newer than this code, alembic's `CommandError` for an unknown
    ``revision``, and the database's own error if a revision fails (nothing of the
    upgrade is kept then).
    """
    applied: list[str] = []

    def on_apply(*, step: Any, **_kwargs: Any) -> None:
        revision = step.up_revision
        applied.append(revision.revision)
        if progress is not None:
            title = (revision.doc or "").strip().splitlines()[0:1]
            progress(f"applied {revision.revision}" + (f": {title[0]}" if title else ""))

    with _migration_connection(url) as connection:
        current = MigrationContext.configure(connection).get_current_revision()
        scripts = script_directory()
        if current is not None and not _knows(scripts, current):
            raise SchemaNotCurrent(
                f"the database is at revision {current}, which this edgefleet (head"
                f" {head_revision()}) does not know: a newer release migrated it"
            )
        config = _config(connection, on_version_apply=on_apply)
        if current is None and LEGACY_MARKER_TABLE in inspect(connection).get_table_names():
            if progress is not None:
                progress(f"adopting a database made before migrations at {BASELINE_REVISION}")
            command.stamp(config, BASELINE_REVISION)
        command.upgrade(config, revision)
        from edgefleet.fleet.store.engine import seed_rows

        seed_rows(connection)
    return applied


def stamp_head(connection: Connection) -> None:
    """Record a schema made straight from the models (`create_all`) as at head."""
    command.stamp(_config(connection), "head")


def make_revision(message: str) -> Path:
    """Autogenerate the next revision from how the models differ from head: a scratch
    SQLite upgraded to head is compared with the models. Returns the new file, written
    beside the others. For developers changing the schema; review it before committing.

    Raises `ValueError` when the models match head (there is nothing to write).
    """
    from alembic.autogenerate import compare_metadata

    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite:///{Path(scratch) / 'head.db'}"
        upgrade(url)
        with _migration_connection(url) as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            if not compare_metadata(context, target_metadata()):
                raise ValueError(f"the models match head {head_revision()}: nothing to write")
            next_id = f"{int(head_revision()) + 1:04d}"
            script = command.revision(
                _config(connection), message=message, autogenerate=True, rev_id=next_id
            )
    assert script is not None
    assert not isinstance(script, list)
    return Path(script.path)


def _knows(scripts: ScriptDirectory, revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return scripts.get_revision(revision) is not None
    except CommandError:
        return False


def _config(
    connection: Connection | None = None,
    *,
    on_version_apply: Callable[..., None] | None = None,
) -> Config:
    config = Config()
    config.set_main_option("script_location", "edgefleet.fleet.store:migrations")
    config.set_main_option("file_template", "r%%(rev)s_%%(slug)s")
    config.attributes["connection"] = connection
    config.attributes["on_version_apply"] = on_version_apply
    return config


def _plain_engine(url: str) -> Engine:
    from edgefleet.fleet.store.engine import make_engine

    return make_engine(url)


@contextmanager
def _migration_connection(url: str) -> Iterator[Connection]:
    """One connection in one transaction holding the migration lock; committed on a
    clean exit, rolled back on any error."""
    url = normalise_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        engine = _sqlite_migration_engine(url)
    else:
        engine = _plain_engine(url)
    try:
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK_KEY}
                )
            yield connection
    finally:
        engine.dispose()


def _sqlite_migration_engine(url: str) -> Engine:
    """SQLite with transactional DDL: the driver's own transaction handling is turned
    off so that BEGIN IMMEDIATE covers the whole upgrade (and locks out a second
    migrator), and foreign keys are off while batch mode copies tables."""
    parsed = make_url(url)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: object) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA foreign_keys=OFF")

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def create_all(engine: Engine) -> None:
    """Make an empty database's schema straight from the models, stamped at head: what
    ``edgefleet fleet migrate upgrade`` makes, in one step (the migration tests prove the
    two agree). For tests and scratch databases; a database that exists already is
    left alone when it is at head.

    Raises `edgefleet.fleet.store.migrate.SchemaNotCurrent` for a database that holds
    tables but is not at head: that one goes through ``migrate upgrade``.
    """
    from sqlalchemy import inspect

    from edgefleet.fleet.store.engine import seed_rows

    with engine.connect() as connection:
        empty = not inspect(connection).get_table_names()
    if not empty:
        require_current(engine)
        return
    try:
        with engine.begin() as connection:
            target_metadata().create_all(connection)
            stamp_head(connection)
            seed_rows(connection)
    except Exception:
        # Two processes creating one fresh database at once: the loser's CREATE fails,
        # and what the winner made is fine if it is at head.
        try:
            require_current(engine)
        except SchemaNotCurrent:
            pass
        else:
            return
        raise
