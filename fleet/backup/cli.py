"""``edgefleet fleet backup DIR`` and ``edgefleet fleet restore DIR --data-dir NEW``.

The fleet's settings (``--data-dir``, ``--keys-dir``, ... or the same
``EDGEFLEET_FLEET_*`` environment the service runs with) say what to back up; a
backup is safe while the fleet runs. A restore writes into new, empty directories and
prints the ``fleet serve`` options that use them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``backup`` and ``restore`` to ``edgefleet fleet``."""
    backup = commands.add_parser(
        "backup",
        help="back up the database and state directories (safe while the fleet runs)",
        description="SQLite is copied with its online backup API, PostgreSQL with pg_dump."
        " The backup holds the fleet's keys: keep it as safe.",
    )
    backup.add_argument("out", type=Path, metavar="DIR", help="a new directory for the backup")
    backup.add_argument("--data-dir", type=Path, help="the fleet's data dir")
    backup.add_argument("--database-url", help="sqlite:///path or postgresql://...")
    backup.add_argument("--keys-dir", type=Path, help="the fleet's signing keys")
    backup.add_argument("--repository-dir", type=Path, help="default KEYS_DIR/repository")
    backup.add_argument("--models-dir", type=Path, help="default DATA_DIR/models")
    backup.add_argument(
        "--no-database",
        action="store_true",
        help="leave the database out (backed up some other way)",
    )
    backup.set_defaults(handler=_backup)

    restore = commands.add_parser(
        "restore",
        help="restore a backup into new directories",
        description="Checks every file of the backup first; writes the database last.",
    )
    restore.add_argument("backup", type=Path, metavar="DIR", help="a backup directory")
    restore.add_argument("--data-dir", type=Path, required=True, help="a new, empty data dir")
    restore.add_argument(
        "--database-url",
        help="where the database goes: a new, empty PostgreSQL database for a PostgreSQL"
        " backup (default DATA_DIR/fleet.db)",
    )
    restore.add_argument("--keys-dir", type=Path, help="default DATA_DIR/keys")
    restore.add_argument(
        "--repository-dir", type=Path, help="for a repository kept outside the keys"
    )
    restore.add_argument("--models-dir", type=Path, help="for models kept outside the data dir")
    restore.set_defaults(handler=_restore)


def _backup(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from edgefleet.fleet.backup.archive import BackupError, take_backup
    from edgefleet.fleet.settings import FleetSettings
    from edgefleet.shared.cli import CLIError

    overrides: dict[str, Any] = {
        key: value
        for key, value in (
            ("data_dir", args.data_dir),
            ("database_url", args.database_url),
            ("keys_dir", args.keys_dir),
            ("repository_dir", args.repository_dir),
            ("models_dir", args.models_dir),
        )
        if value is not None
    }
    try:
        settings = FleetSettings(**overrides)
    except ValidationError as e:
        raise CLIError(f"invalid fleet settings: {e}") from e
    try:
        manifest = take_backup(
            settings, args.out, include_database=not args.no_database, progress=_say
        )
    except (BackupError, OSError) as e:
        raise CLIError(f"backup failed, nothing was kept: {e}") from e
    files = sum(len(p.files) for p in manifest.parts)
    print(f"backup complete: {args.out} ({files} files", end="")
    print(", the database)" if manifest.database else ", no database)")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from edgefleet.fleet.backup.archive import BackupError, RestoreTarget, restore_backup
    from edgefleet.shared.cli import CLIError

    target = RestoreTarget(
        data_dir=args.data_dir,
        database_url=args.database_url,
        keys_dir=args.keys_dir,
        repository_dir=args.repository_dir,
        models_dir=args.models_dir,
    )
    try:
        restored = restore_backup(args.backup, target, progress=_say)
    except (BackupError, OSError) as e:
        raise CLIError(f"restore failed: {e}") from e
    if restored.manifest.database is None:
        print("the backup has no database: restore yours before starting the fleet")
    print("restored; start the fleet with:")
    print("  edgefleet fleet serve " + " ".join(restored.serve_options))
    return 0


def _say(line: str) -> None:
    print(line, flush=True)
