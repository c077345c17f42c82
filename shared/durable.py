"""Durable file writes: the one way agent, fleet and tooling persist a file or a rename.

Invariants:
- after `atomic_write_bytes`, `atomic_write_json` or an `atomic_writer` block returns,
  ``path`` holds the new bytes and survives a power cut; if the process dies before,
  ``path`` still holds the old bytes (or does not exist). Readers never see a
  half-written file. The recipe: write a temp file in the same directory (so
  `os.replace` is a rename within one file system), fsync it, rename it over the
  target, then fsync the directory so the rename itself is on disk;
- `atomic_symlink` gives a symlink the same guarantee: it names the old or the new target;
- every function raises `OSError` when the file system refuses a step, fsync of a
  directory included. Nothing here swallows an error: a caller that must tolerate a file
  system without directory fsync says so at its call site.

Temp files are named ``.<name>.<random>.tmp``; `remove_stray_temp_files` deletes the ones
a crash left behind.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel

TEMP_SUFFIX = ".tmp"


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (renames, new and removed files) to disk.

    Raises `OSError` if the directory cannot be opened or the file system refuses to
    fsync it.
    """
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush one file's contents to disk; raises `OSError`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(source: Path, target: Path) -> None:
    """Move the finished file ``source`` over ``target`` (same file system) for good.

    After a crash ``target`` holds its old content or all of ``source``'s: the file is
    fsynced, renamed, and the directory fsynced. Raises `OSError` from any step.
    """
    fsync_file(source)
    os.replace(source, target)
    fsync_dir(target.parent)


def temp_path_for(path: Path) -> Path:
    """A fresh temp name next to ``path``, recognisable by `remove_stray_temp_files`."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")


@contextmanager
def atomic_writer(
    path: Path, *, mode: int = 0o644, create_parents: bool = False
) -> Iterator[BinaryIO]:
    """Replace ``path`` atomically and durably with what the ``with`` body writes.

    Yields a file open for writing; its ``name`` is the temp file's path, so the body
    may check what it wrote (after ``flush``) before it becomes ``path``. When the body
    returns, the file is given exactly ``mode``, fsync'd, renamed over ``path`` and the
    directory fsync'd. ``create_parents`` creates missing parent directories first
    (tooling writing into a new output directory); by default a missing directory is an
    error, so a typo in a state path does not silently create a new tree.

    Raises `OSError` (the directory is missing, read-only, or the disk is full), and
    whatever the body raises. If it is raised before the rename, ``path`` is untouched
    and no temp file is left behind; if the final directory fsync raises, ``path``
    already holds the new bytes but the rename may not survive a power cut.
    """
    if create_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        # Created private, widened to ``mode`` once written: no one reads a half file
        # through a permissive mode, and the umask cannot narrow what was asked for.
        with open(tmp, "xb", opener=_private_opener) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def atomic_write_bytes(
    path: Path, data: bytes, *, mode: int = 0o644, create_parents: bool = False
) -> None:
    """Replace ``path`` with ``data`` atomically and durably; see `atomic_writer`.

    Raises `OSError` as `atomic_writer` does.
    """
    with atomic_writer(path, mode=mode, create_parents=create_parents) as f:
        f.write(data)


def atomic_write_json(path: Path, value: BaseModel | Any) -> None:
    """Write a pydantic model (by its JSON form) or a JSON-able value atomically.

    Raises `OSError` as `atomic_write_bytes`, `TypeError` if ``value`` is not JSON-able
    (then nothing is written).
    """
    if isinstance(value, BaseModel):
        data = value.model_dump_json(indent=1).encode()
    else:
        data = json.dumps(value, indent=1, sort_keys=True).encode()
    atomic_write_bytes(path, data)


def atomic_symlink(
    link: Path, target: str, *, on_step: Callable[[str], None] | None = None
) -> None:
    """Point the symlink ``link`` at ``target`` atomically (create or switch), durably.

    A crash leaves ``link`` pointing at either the old or the new target, plus at most a
    stray temp link that `remove_stray_temp_files` removes. ``on_step`` is called with
    ``"link"``, ``"replace"`` and ``"fsync"`` before each file-system step (crash tests
    stop there). Raises `OSError`.
    """
    step = on_step or _no_step
    tmp = temp_path_for(link)
    step("link")
    os.symlink(target, tmp)
    step("replace")
    try:
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    step("fsync")
    fsync_dir(link.parent)


def _no_step(_: str) -> None:
    return None


def remove_stray_temp_files(directory: Path) -> list[Path]:
    """Delete the temp files (and temp symlinks) a crash left in ``directory``.

    Returns what was removed. Raises `OSError` if the directory cannot be listed or
    fsync'd.
    """
    removed = []
    for entry in directory.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX):
            if entry.is_dir() and not entry.is_symlink():
                continue
            entry.unlink(missing_ok=True)
            removed.append(entry)
    if removed:
        fsync_dir(directory)
    return removed
