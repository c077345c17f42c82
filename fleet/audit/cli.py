"""``edgefleet fleet audit verify|export``: check the audit chain, or export it.

``verify`` exits 0 and prints ``OK`` with the count and head when the log is sound and
matches every signed checkpoint; it prints the first bad entry and exits 1 when not;
and exits 2 (`CLIError`) when it cannot check at all (no database, a missing key, a
checkpoint line whose signature does not verify).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgefleet.fleet.settings import FleetSettings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``audit`` and its subcommands under ``edgefleet fleet``."""
    audit = commands.add_parser("audit", help="verify or export the audit log")
    sub = audit.add_subparsers(title="audit commands", metavar="COMMAND")
    verify = sub.add_parser(
        "verify",
        help="check the hash chain against the signed checkpoints; name the first bad entry",
        description="Defaults come from the fleet settings (EDGEFLEET_FLEET_* variables).",
    )
    verify.add_argument("--database-url", help="sqlite:///path or postgresql://...")
    verify.add_argument(
        "--checkpoints",
        type=Path,
        help="the checkpoint file (default: the settings' audit_checkpoint_file)",
    )
    verify.add_argument(
        "--public-key",
        type=Path,
        action="append",
        help="a trusted audit-checkpoint public key (.pub.json); repeat for several"
        " (default: the one in the settings' audit key dir)",
    )
    verify.add_argument(
        "--no-checkpoints",
        action="store_true",
        help="check the chain alone (a rewritten or truncated log then goes unnoticed)",
    )
    verify.set_defaults(handler=_verify)

    export = sub.add_parser("export", help="write the audit log as JSON Lines or CSV")
    export.add_argument("--database-url", help="sqlite:///path or postgresql://...")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--output", type=Path, help="file to write (default: stdout)")
    export.set_defaults(handler=_export)


def _settings(database_url: str | None) -> FleetSettings:
    from pydantic import ValidationError

    from edgefleet.fleet.settings import FleetSettings
    from edgefleet.shared.cli import CLIError

    overrides: dict[str, Any] = {"database_url": database_url} if database_url else {}
    try:
        return FleetSettings(**overrides)
    except ValidationError as e:
        raise CLIError(f"invalid fleet settings: {e}") from e


def _verify(args: argparse.Namespace) -> int:
    from edgefleet.fleet.audit.check import verify_database
    from edgefleet.fleet.audit.checkpoint import KEY_NAME, CheckpointError, read_checkpoints
    from edgefleet.fleet.store.engine import make_engine
    from edgefleet.shared.cli import CLIError
    from edgefleet.shared.signing import keys
    from edgefleet.shared.signing.errors import KeyFileError

    settings = _settings(args.database_url)
    claims = []
    if not args.no_checkpoints:
        path: Path = args.checkpoints or settings.resolved_audit_checkpoint_file
        key_files = args.public_key or [
            keys.public_key_path(settings.resolved_audit_key_dir, KEY_NAME)
        ]
        try:
            trusted = [keys.load_public_key(f) for f in key_files]
        except KeyFileError as e:
            raise CLIError(str(e)) from e
        if not path.exists():
            raise CLIError(
                f"checkpoint file {path} does not exist (--no-checkpoints checks the chain alone)"
            )
        try:
            # Before the database: every checkpoint then counts no more than its head.
            claims = [c.claim() for c in read_checkpoints(path, trusted)]
        except CheckpointError as e:
            raise CLIError(f"refused checkpoint: {e}") from e
    try:
        engine = make_engine(settings.database_url)
    except ValueError as e:
        raise CLIError(str(e)) from e
    try:
        result = verify_database(engine, claims)
    except Exception as e:  # an unreachable database, a missing table: say what failed
        raise CLIError(f"cannot read the audit log at {engine.url!r}: {e}") from e
    finally:
        engine.dispose()
    print(result.describe())
    if result.ok and not claims:
        print("warning: no signed checkpoints: a rewritten or truncated log cannot be detected")
    return 0 if result.ok else 1


def _export(args: argparse.Namespace) -> int:
    from edgefleet.fleet.audit.read import export_csv, export_jsonl, iter_entries
    from edgefleet.fleet.store.engine import make_engine
    from edgefleet.shared.cli import CLIError

    settings = _settings(args.database_url)
    try:
        engine = make_engine(settings.database_url)
    except ValueError as e:
        raise CLIError(str(e)) from e
    try:
        entries = iter_entries(engine)
        chunks = export_jsonl(entries) if args.format == "jsonl" else export_csv(entries)
        if args.output is None:
            for chunk in chunks:
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
        else:
            with args.output.open("wb") as f:
                for chunk in chunks:
                    f.write(chunk)
    finally:
        engine.dispose()
    return 0
