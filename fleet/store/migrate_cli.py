"""``edgefleet fleet migrate upgrade|current|history|revision``: the schema step.

Production runs ``upgrade`` as its own step before the replicas start (a compose
service, a Kubernetes Job); a lab may start ``fleet serve --migrate`` instead. The
database comes from ``--database-url``, else the fleet's own settings
(``$EDGEFLEET_FLEET_DATABASE_URL``, or the SQLite file under ``--data-dir``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``migrate`` and its subcommands to ``edgefleet fleet``."""
    migrate = commands.add_parser(
        "migrate",
        help="bring the database schema to this release (Alembic)",
        description="The schema step: run `upgrade` before starting replicas of a new"
        " release. Exit 0 when the database is at head afterwards.",
    )
    sub = migrate.add_subparsers(title="migrate commands", metavar="COMMAND", required=True)
    target = argparse.ArgumentParser(add_help=False)
    target.add_argument("--database-url", help="sqlite:///path or postgresql://...")
    target.add_argument("--data-dir", type=Path, help="where the default SQLite file lives")

    upgrade = sub.add_parser(
        "upgrade", parents=[target], help="apply every revision the database lacks"
    )
    upgrade.add_argument("--revision", default="head", help="stop at this revision (default head)")
    upgrade.set_defaults(handler=_upgrade)
    current = sub.add_parser(
        "current",
        parents=[target],
        help="the database's revision; exit 3 when it is not at head",
    )
    current.set_defaults(handler=_current)
    history = sub.add_parser("history", help="this release's revisions, oldest first")
    history.set_defaults(handler=_history)
    revision = sub.add_parser(
        "revision",
        help="(developers) write the next revision from how the models differ from head",
    )
    revision.add_argument("-m", "--message", required=True, help="what the change is")
    revision.set_defaults(handler=_revision)


# `current`'s exit status for a database that is not at head, so a deploy script can
# tell "behind" from "cannot connect" (2, as every refused command).
NOT_AT_HEAD_EXIT = 3


def _database_url(args: argparse.Namespace) -> str:
    from pydantic import ValidationError

    from edgefleet.fleet.settings import FleetSettings
    from edgefleet.shared.cli import CLIError

    overrides: dict[str, Any] = {}
    if args.database_url:
        overrides["database_url"] = args.database_url
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    try:
        return FleetSettings(**overrides).database_url
    except ValidationError as e:
        raise CLIError(f"invalid fleet settings: {e}") from e


def _upgrade(args: argparse.Namespace) -> int:
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from edgefleet.fleet.store.migrate import SchemaNotCurrent, head_revision, upgrade
    from edgefleet.shared.cli import CLIError

    url = _database_url(args)
    try:
        applied = upgrade(url, args.revision, progress=lambda line: print(line, flush=True))
    except (SchemaNotCurrent, CommandError, ValueError) as e:
        raise CLIError(str(e)) from e
    except SQLAlchemyError as e:
        raise CLIError(f"migration failed, nothing of it was kept: {e}") from e
    if not applied:
        print(f"the database is at {args.revision} ({head_revision()}): nothing to do")
    return 0


def _current(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from edgefleet.fleet.store.engine import make_engine
    from edgefleet.fleet.store.migrate import schema_status
    from edgefleet.shared.cli import CLIError

    try:
        engine = make_engine(_database_url(args))
    except ValueError as e:
        raise CLIError(str(e)) from e
    try:
        status = schema_status(engine)
    except SQLAlchemyError as e:
        raise CLIError(f"cannot read the database's revision: {e}") from e
    finally:
        engine.dispose()
    where = status.current or ("none (made before migrations)" if status.legacy else "none")
    print(f"current: {where}")
    print(f"head:    {status.head}")
    if status.is_current:
        return 0
    print(
        "the database is not at head: run `edgefleet fleet migrate upgrade`"
        if status.known
        else "the database is newer than this edgefleet",
        file=sys.stderr,
    )
    return NOT_AT_HEAD_EXIT


def _history(_args: argparse.Namespace) -> int:
    from edgefleet.fleet.store.migrate import head_revision, history

    head = head_revision()
    for revision in history():
        title = revision.message.splitlines()[0] if revision.message else ""
        mark = "  (head)" if revision.revision == head else ""
        print(f"{revision.revision}  {title}{mark}")
    return 0


def _revision(args: argparse.Namespace) -> int:
    from edgefleet.fleet.store.migrate import make_revision
    from edgefleet.shared.cli import CLIError

    try:
        path = make_revision(args.message)
    except ValueError as e:
        raise CLIError(str(e)) from e
    print(f"wrote {path}: review it, then commit it with the model change")
    return 0
