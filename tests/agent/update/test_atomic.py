"""Atomic writes: the old content or the new, never half, and no temp files left."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgefleet.agent.atomic import (
    atomic_symlink,
    atomic_write_bytes,
    atomic_write_json,
    remove_stray_temp_files,
)
from edgefleet.agent.update.machine import Phase, UpdateState


def test_write_replaces_content_and_leaves_no_temp(tmp_path: Path):
    path = tmp_path / "state.json"
    atomic_write_bytes(path, b"old")
    atomic_write_json(path, UpdateState(phase=Phase.STAGED))
    assert UpdateState.model_validate_json(path.read_bytes()).phase is Phase.STAGED
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_failed_write_keeps_the_old_content(tmp_path: Path):
    path = tmp_path / "state.json"
    atomic_write_bytes(path, b"old")
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "missing-dir" / "x", b"new")
    with pytest.raises(TypeError):
        atomic_write_json(path, {"not json": object()})
    assert path.read_bytes() == b"old"


def test_symlink_switch_and_stray_temp_cleanup(tmp_path: Path):
    link = tmp_path / "active"
    atomic_symlink(link, "models/a")
    atomic_symlink(link, "models/b")
    assert os.readlink(link) == "models/b"
    os.symlink("models/c", tmp_path / ".active.deadbeef.tmp")
    removed = remove_stray_temp_files(tmp_path)
    assert [p.name for p in removed] == [".active.deadbeef.tmp"]
    assert os.readlink(link) == "models/b"
