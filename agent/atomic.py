"""Atomic, durable file updates: every piece of persisted agent state goes through here.

Invariant: after `atomic_write_bytes` returns, ``path`` holds the new bytes and survives a
power cut; if the process dies before, ``path`` still holds the old bytes (or does not
exist). Readers never see a half-written file. The recipe: write a temp file in the same
directory (so `os.replace` is a rename within one file system), fsync it, rename it over
the target, then fsync the directory so the rename itself is on disk.

Temp files are named ``.<name>.<random>.tmp``; `remove_stray_temp_files` deletes the ones
a crash left behind.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

TEMP_SUFFIX = ".tmp"


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (renames, new and removed files) to disk.

    Raises `OSError` if the directory cannot be opened.
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


def temp_path_for(path: Path) -> Path:
    """A fresh temp name next to ``path``, recognisable by `remove_stray_temp_files`."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Raises `OSError` (the directory is missing, read-only, or the disk is full); in that
    case ``path`` is untouched and no temp file is left behind.
    """
    tmp = temp_path_for(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, value: BaseModel | Any) -> None:
    """Write a pydantic model (by its JSON form) or a JSON-able value atomically.

    Raises `OSError` as `atomic_write_bytes`, `TypeError` if ``value`` is not JSON-able.
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

    Returns what was removed. Raises `OSError` if the directory cannot be listed.
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
