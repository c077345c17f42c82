"""Take a backup of a running fleet, and restore one into a new place.

Consistency while the fleet runs comes from the order of the copies:
1. the audit checkpoint file first: checkpoints record the log's past, and one newer
   than the database copy would make the restored log look truncated;
2. the database, by SQLite's online backup API: one consistent snapshot, whatever the
   ingester writes meanwhile;
3. everything else after it (model packages, the TUF repository, keys, the device CA):
   whatever the database copy points to was on disk before the snapshot, so it is in
   the backup (later uploads may ride along unreferenced, which is harmless).

A backup is written under a temporary name and renamed into place after its manifest,
so a crash leaves a ``.NAME.partial-*`` directory, never something that looks complete.
A restore checks every file's size and sha256 before it writes anything, and writes
the database last, so a fleet never starts on a restore that stopped half-way.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from pydantic import ValidationError
from sqlalchemy.engine import make_url

from edgefleet.fleet.backup.manifest import (
    DATABASE_FILES,
    MANIFEST_NAME,
    BackupManifest,
    DatabaseEntry,
    DatabaseKind,
    FileEntry,
    Part,
    PartEntry,
    is_transient,
    nested_parts,
)
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.engine import normalise_url
from edgefleet.shared import __version__
from edgefleet.shared.durable import atomic_write_bytes, fsync_dir, fsync_file
from edgefleet.shared.messages import utcnow

Progress = Callable[[str], None]
CHUNK_BYTES = 1 << 20
# The whole database in one backup step: SQLite restarts a stepwise backup whenever
# another connection writes, so against a busy ingester it might never finish. One step
# is one read transaction, which in WAL mode never blocks the writers.
SQLITE_BACKUP_ALL_PAGES = -1


class BackupError(Exception):
    """A backup cannot be taken or restored; the message names the file or setting."""


@dataclass(frozen=True)
class FleetLayout:
    """Where one fleet keeps its state: each part's directory, and its SQLite file."""

    roots: dict[Part, Path]
    database_url: str
    sqlite_file: Path | None  # None: PostgreSQL
    checkpoint_file: Path


def layout_of(settings: FleetSettings) -> FleetLayout:
    """The parts of the fleet ``settings`` describe. Raises `BackupError` for state kept
    outside them (audit checkpoints or their key outside the data dir)."""
    data = settings.data_dir.resolve()
    roots: dict[Part, Path] = {Part.DATA: data}
    if settings.keys_dir is not None:
        roots[Part.KEYS] = settings.keys_dir.resolve()
    repository = settings.resolved_repository_dir
    if repository is not None and not _inside(repository.resolve(), roots.get(Part.KEYS)):
        roots[Part.REPOSITORY] = repository.resolve()
    models = settings.resolved_models_dir.resolve()
    if not _inside(models, data):
        roots[Part.MODELS] = models
    for what, path in (
        ("audit_checkpoint_file", settings.resolved_audit_checkpoint_file),
        ("audit_checkpoint_key_dir", settings.resolved_audit_key_dir),
    ):
        if not _inside(path.resolve(), data):
            raise BackupError(
                f"{what} {path} is outside data_dir {data}: back it up with the data dir"
                " (move it there, or copy it yourself)"
            )
    database_url = normalise_url(settings.database_url)
    url = make_url(database_url)
    sqlite_file = None
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise BackupError("an in-memory SQLite database cannot be backed up")
        sqlite_file = Path(url.database).resolve()
    return FleetLayout(
        roots=roots,
        database_url=database_url,
        sqlite_file=sqlite_file,
        checkpoint_file=settings.resolved_audit_checkpoint_file.resolve(),
    )


def take_backup(
    settings: FleetSettings,
    out: Path,
    *,
    include_database: bool = True,
    progress: Progress | None = None,
) -> BackupManifest:
    """Back up the fleet ``settings`` describe into the new directory ``out``; safe
    while the fleet runs. SQLite is copied with its online backup API, PostgreSQL with
    ``pg_dump``; ``include_database=False`` leaves the database out.

    Raises `BackupError` (``out`` exists and is not empty, the database cannot be
    read, ``pg_dump`` is missing or fails, a part is missing) and `OSError` (the disk
    is full, a file cannot be read); then nothing is left at ``out``.
    """
    say = progress or (lambda _line: None)
    layout = layout_of(settings)
    for part, root in layout.roots.items():
        if part is not Part.DATA and not root.is_dir():
            raise BackupError(f"the {part.value} directory {root} does not exist")
    _require_empty(out, "backup directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
    staging.mkdir(mode=0o700)
    try:
        manifest = _write_backup(layout, staging, include_database=include_database, say=say)
        os.replace(staging, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


@dataclass(frozen=True)
class RestoreTarget:
    """Where a restore puts each part; a part whose directory is None goes to its
    default place (see `restore_targets`). The database goes to ``database_url`` (an
    empty PostgreSQL database for a PostgreSQL backup), else ``data_dir/fleet.db``."""

    data_dir: Path
    database_url: str | None = None
    keys_dir: Path | None = None
    repository_dir: Path | None = None
    models_dir: Path | None = None


@dataclass(frozen=True)
class Restored:
    """What a restore wrote, and the ``fleet serve`` options that use it."""

    manifest: BackupManifest
    serve_options: list[str] = field(default_factory=list)


def restore_targets(manifest: BackupManifest, target: RestoreTarget) -> dict[Part, Path]:
    """Each part of ``manifest``'s directory in the new fleet: as given, else the
    defaults (keys in ``DATA/keys``, a separate repository in ``DATA/repository``, a
    separate models dir in ``DATA/models``, which is models_dir's own default)."""
    data = target.data_dir
    defaults = {
        Part.DATA: data,
        Part.KEYS: target.keys_dir or data / "keys",
        Part.REPOSITORY: target.repository_dir or data / "repository",
        Part.MODELS: target.models_dir or data / "models",
    }
    return {entry.part: defaults[entry.part] for entry in manifest.parts}


def read_manifest(backup: Path) -> BackupManifest:
    """The checked manifest of the backup in ``backup``. Raises `BackupError` when
    there is none (an unfinished backup) or it is not a valid manifest."""
    path = backup / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BackupError(f"{backup} is not a complete backup: it has no {MANIFEST_NAME}") from None
    try:
        return BackupManifest.model_validate_json(raw)
    except ValidationError as e:
        raise BackupError(f"{path} is not a valid backup manifest: {e}") from e


def restore_backup(
    backup: Path, target: RestoreTarget, *, progress: Progress | None = None
) -> Restored:
    """Restore ``backup`` into the new, empty directories of ``target``.

    Raises `BackupError` (not a complete backup, a file changed or missing since the
    backup was taken, a target directory or database not empty, a database of the
    other engine, ``pg_restore`` missing or failing) and `OSError` (the disk is full).
    """
    say = progress or (lambda _line: None)
    manifest = read_manifest(backup)
    say("checking the backup's files")
    _verify(backup, manifest)
    database_url = _restore_database_url(manifest, target)
    directories = restore_targets(manifest, target)
    for part, directory in directories.items():
        _require_empty(directory, f"{part.value} directory", allow_nested=set(directories.values()))
    for entry in manifest.parts:
        root = directories[entry.part]
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for file in entry.files:
            _copy_back(backup / entry.part.value / file.path, root / file.path, file.mode)
        say(f"restored {entry.part.value}: {len(entry.files)} files into {root}")
    if manifest.database is not None and database_url is not None:
        copy = backup / manifest.database.file.path
        if manifest.database.kind is DatabaseKind.SQLITE:
            database = Path(make_url(database_url).database or "")
            _copy_back(copy, database, 0o600)
        else:
            _pg_restore(copy, database_url)
        where = make_url(database_url).render_as_string(hide_password=True)
        say(f"restored the database into {where} (schema {manifest.database.schema_revision})")
    options = ["--data-dir", str(target.data_dir)]
    if target.database_url is not None:
        options += ["--database-url", make_url(target.database_url).render_as_string()]
    if Part.KEYS in directories:
        options += ["--keys-dir", str(directories[Part.KEYS])]
    if Part.REPOSITORY in directories:
        options += ["--repository-dir", str(directories[Part.REPOSITORY])]
    if Part.MODELS in directories:
        options += ["--models-dir", str(directories[Part.MODELS])]
    return Restored(manifest=manifest, serve_options=options)


# -- taking ------------------------------------------------------------------------------


def _write_backup(
    layout: FleetLayout, staging: Path, *, include_database: bool, say: Progress
) -> BackupManifest:
    skipped = {layout.checkpoint_file}
    if layout.sqlite_file is not None:
        base = str(layout.sqlite_file)
        skipped |= {Path(base + suffix) for suffix in ("", "-wal", "-shm", "-journal")}
    nested = nested_parts(layout.roots)
    files: dict[Part, list[FileEntry]] = {part: [] for part in layout.roots}

    # 1. What records the database's past, before the database.
    if layout.checkpoint_file.is_file():
        relative = layout.checkpoint_file.relative_to(layout.roots[Part.DATA]).as_posix()
        target = staging / Part.DATA.value / relative
        checkpoints = _copy_in(layout.checkpoint_file, target, relative, whole_lines=True)
        if checkpoints is not None:
            files[Part.DATA].append(checkpoints)
    # 2. The database.
    database: DatabaseEntry | None = None
    if include_database and layout.sqlite_file is not None:
        database = _backup_sqlite(
            layout.sqlite_file, staging / DATABASE_FILES[DatabaseKind.SQLITE], say
        )
    elif include_database:
        database = _backup_postgresql(
            layout.database_url, staging / DATABASE_FILES[DatabaseKind.POSTGRESQL], say
        )
    # 3. What the database points to, after it.
    for part, root in layout.roots.items():
        count = 0
        for source, relative in _walk(root, exclude=nested[part], skipped=skipped):
            entry = _copy_in(source, staging / part.value / relative, relative)
            if entry is not None:
                files[part].append(entry)
                count += 1
        say(f"backed up {part.value}: {count} files from {root}")
    manifest = BackupManifest(
        created_at=utcnow(),
        edgefleet_version=__version__,
        database=database,
        parts=[
            PartEntry(part=part, source=str(root), files=sorted(files[part], key=_by_path))
            for part, root in layout.roots.items()
        ],
    )
    atomic_write_bytes(
        staging / MANIFEST_NAME,
        manifest.model_dump_json(by_alias=True, indent=1).encode(),
        mode=0o600,
    )
    return manifest


def _by_path(entry: FileEntry) -> str:
    return entry.path


def _backup_sqlite(source: Path, target: Path, say: Progress) -> DatabaseEntry:
    if not source.is_file():
        raise BackupError(f"the database {source} does not exist")
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
        try:
            dst = sqlite3.connect(target)
            try:
                src.backup(dst, pages=SQLITE_BACKUP_ALL_PAGES)
                # The copy is a plain database file: no WAL beside it to lose.
                dst.execute("PRAGMA journal_mode=DELETE")
                revision = _schema_revision(dst)
                problems = dst.execute("PRAGMA quick_check").fetchone()[0]
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as e:
        raise BackupError(f"cannot back up the database {source}: {e}") from e
    if problems != "ok":
        raise BackupError(f"the database copy of {source} fails SQLite's check: {problems}")
    fsync_file(target)
    os.chmod(target, 0o600)
    size, digest = _digest(target)
    say(f"backed up the database: {size} bytes, schema {revision}")
    return DatabaseEntry(
        kind=DatabaseKind.SQLITE,
        file=FileEntry(path=target.name, size=size, sha256=digest, mode=0o600),
        schema_revision=revision,
    )


def _backup_postgresql(url: str, target: Path, say: Progress) -> DatabaseEntry:
    """``pg_dump --format=custom``: one snapshot of the database, while it is written."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from edgefleet.fleet.store.engine import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            row = connection.execute(text("SELECT version_num FROM alembic_version")).first()
    except SQLAlchemyError as e:
        raise BackupError(f"cannot read the database's schema revision: {e}") from e
    finally:
        engine.dispose()
    revision = str(row[0]) if row else None
    _run_pg_tool(["pg_dump", "--format=custom", "--file", str(target), "--dbname", _libpq(url)])
    os.chmod(target, 0o600)
    fsync_file(target)
    size, digest = _digest(target)
    say(f"backed up the database with pg_dump: {size} bytes, schema {revision}")
    return DatabaseEntry(
        kind=DatabaseKind.POSTGRESQL,
        file=FileEntry(path=target.name, size=size, sha256=digest, mode=0o600),
        schema_revision=revision,
    )


def _schema_revision(connection: sqlite3.Connection) -> str | None:
    try:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError:
        return None
    return str(row[0]) if row else None


def _walk(root: Path, *, exclude: list[Path], skipped: set[Path]) -> Iterator[tuple[Path, str]]:
    """Every regular file under ``root`` (sorted, symlinks not followed), but those of
    nested parts, transient files and ``skipped``; with its path inside ``root``."""
    if not root.is_dir():
        return
    for directory, subdirs, names in os.walk(root):
        here = Path(directory)
        subdirs[:] = sorted(d for d in subdirs if (here / d) not in exclude)
        for name in sorted(names):
            path = here / name
            relative = path.relative_to(root)
            if path in skipped or is_transient(PurePosixPath(relative.as_posix())):
                continue
            if path.is_symlink() or not path.is_file():
                continue
            yield path, relative.as_posix()


def _copy_in(
    source: Path, target: Path, relative: str, *, whole_lines: bool = False
) -> FileEntry | None:
    """Copy one file into the backup, hashing as it goes; None if it vanished meanwhile
    (a temp file renamed away). ``whole_lines`` stops at the last newline: an appended
    line being written is not yet part of the file."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        src = source.open("rb")
    except FileNotFoundError:
        return None
    with src:
        mode = os.fstat(src.fileno()).st_mode & 0o7777
        data_end = _last_newline_end(src) if whole_lines else None
        digest = hashlib.sha256()
        size = 0
        with target.open("xb") as dst:
            for chunk in _chunks(src, data_end):
                digest.update(chunk)
                dst.write(chunk)
                size += len(chunk)
            dst.flush()
            os.fsync(dst.fileno())
    os.chmod(target, 0o600)
    return FileEntry(path=relative, size=size, sha256=digest.hexdigest(), mode=mode)


def _last_newline_end(f: BinaryIO) -> int:
    """The offset just past the file's last newline (0 if it has none), read backwards
    so a long file is not read twice."""
    end = f.seek(0, os.SEEK_END)
    position = end
    while position > 0:
        start = max(0, position - CHUNK_BYTES)
        f.seek(start)
        found = f.read(position - start).rfind(b"\n")
        if found >= 0:
            f.seek(0)
            return start + found + 1
        position = start
    f.seek(0)
    return 0


def _chunks(f: BinaryIO, limit: int | None) -> Iterator[bytes]:
    left = limit
    while left is None or left > 0:
        chunk = f.read(CHUNK_BYTES if left is None else min(CHUNK_BYTES, left))
        if not chunk:
            return
        if left is not None:
            left -= len(chunk)
        yield chunk


# -- restoring ---------------------------------------------------------------------------


def _restore_database_url(manifest: BackupManifest, target: RestoreTarget) -> str | None:
    """Where the backup's database goes, checked before anything is written."""
    if manifest.database is None:
        return None
    kind = manifest.database.kind
    url = normalise_url(target.database_url or f"sqlite:///{target.data_dir / 'fleet.db'}")
    backend = make_url(url).get_backend_name()
    if backend != kind.value:
        raise BackupError(
            f"the backup holds a {kind.value} database; give a {kind.value} --database-url"
            f" to restore it into (found {backend})"
        )
    if kind is DatabaseKind.SQLITE:
        database = Path(make_url(url).database or "")
        if database.exists():
            raise BackupError(f"the database {database} exists: give a new place")
        return url
    _require_empty_postgresql(url)
    return url


def _require_empty_postgresql(url: str) -> None:
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    from edgefleet.fleet.store.engine import make_engine

    engine = make_engine(url)
    where = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as connection:
            tables = inspect(connection).get_table_names()
    except SQLAlchemyError as e:
        raise BackupError(f"cannot reach the database {where}: {e}") from e
    finally:
        engine.dispose()
    if tables:
        raise BackupError(f"the database {where} is not empty: restore into a new database")


def _pg_restore(dump: Path, url: str) -> None:
    # One transaction: a failing restore leaves the new database empty, not half full.
    _run_pg_tool(
        [
            "pg_restore",
            "--single-transaction",
            "--exit-on-error",
            "--no-owner",
            "--no-privileges",
            "--dbname",
            _libpq(url),
            str(dump),
        ]
    )


def _run_pg_tool(argv: list[str]) -> None:
    tool = shutil.which(argv[0])
    if tool is None:
        raise BackupError(f"{argv[0]} is not installed (Debian: postgresql-client)")
    try:
        # The arguments are ours and the URL one argv item: no shell, nothing to inject.
        subprocess.run([tool, *argv[1:]], check=True, capture_output=True, text=True)  # noqa: S603
    except subprocess.CalledProcessError as e:
        detail = (e.stderr or "").strip().splitlines()[-3:]
        raise BackupError(f"{argv[0]} failed: {' '.join(detail)}") from None


def _libpq(url: str) -> str:
    """The SQLAlchemy URL as libpq takes it (no ``+psycopg`` driver part)."""
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


def _verify(backup: Path, manifest: BackupManifest) -> None:
    expected = [
        (backup / entry.part.value / f.path, f) for entry in manifest.parts for f in entry.files
    ]
    if manifest.database is not None:
        expected.append((backup / manifest.database.file.path, manifest.database.file))
    for path, entry in expected:
        if path.is_symlink() or not path.is_file():
            raise BackupError(f"{path} is missing from the backup")
        size, digest = _digest(path)
        if (size, digest) != (entry.size, entry.sha256):
            raise BackupError(
                f"{path} changed since the backup was taken: expected {entry.size} bytes"
                f" with sha256 {entry.sha256}, found {size} bytes with {digest}"
            )


def _copy_back(source: Path, target: Path, mode: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        with source.open("rb") as src, tmp.open("xb") as dst:
            shutil.copyfileobj(src, dst, CHUNK_BYTES)
            dst.flush()
            os.fchmod(dst.fileno(), mode & 0o777)
            os.fsync(dst.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


# -- both ----------------------------------------------------------------------------------


def _digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _require_empty(directory: Path, what: str, *, allow_nested: set[Path] | None = None) -> None:
    """``directory`` is missing or empty (or holds only other targets of this restore,
    which are themselves checked)."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise BackupError(f"the {what} {directory} exists and is not a directory")
    others = allow_nested or set()
    if any(child not in others for child in directory.iterdir()):
        raise BackupError(f"the {what} {directory} is not empty: give a new directory")


def _inside(path: Path, root: Path | None) -> bool:
    return root is not None and path.is_relative_to(root)
