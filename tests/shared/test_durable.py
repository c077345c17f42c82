"""Durable writes: the old content or the new, never half, no temp files left, and every
failure raised (none swallowed)."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgefleet.agent.update.machine import Phase, UpdateState
from edgefleet.shared.durable import (
    atomic_symlink,
    atomic_write_bytes,
    atomic_write_json,
    atomic_writer,
    fsync_dir,
    fsync_file,
    remove_stray_temp_files,
    replace_durably,
)
from tests.support.agent import REPO


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


def test_fsync_of_a_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "missing")


def test_fsync_dir_of_a_regular_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        fsync_dir(path)
    fsync_file(path)  # the file itself flushes fine


def test_write_into_a_read_only_directory_raises_and_keeps_the_old_content(
    tmp_path: Path,
) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    path = tmp_path / "state.json"
    atomic_write_bytes(path, b"old")
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(PermissionError):
            atomic_write_bytes(path, b"new")
    finally:
        tmp_path.chmod(0o700)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_body_that_raises_leaves_the_old_content_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "artifact"
    atomic_write_bytes(path, b"old")
    seen: list[Path] = []

    def write_half_then_fail() -> None:
        with atomic_writer(path) as f:
            f.write(b"half of the new")
            f.flush()
            seen.append(Path(f.name))
            raise ValueError("bad copy")

    with pytest.raises(ValueError, match="bad copy"):
        write_half_then_fail()
    assert seen[0].parent == tmp_path  # the temp file sat beside the target
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


def test_mode_is_exact_and_parents_are_created_only_when_asked(tmp_path: Path) -> None:
    old_umask = os.umask(0o077)
    try:
        atomic_write_bytes(tmp_path / "public", b"x", mode=0o644)
        atomic_write_bytes(tmp_path / "secret", b"x", mode=0o600)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "public").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "new" / "dir" / "x", b"x")
    atomic_write_bytes(tmp_path / "new" / "dir" / "x", b"x", create_parents=True)
    assert (tmp_path / "new" / "dir" / "x").read_bytes() == b"x"


# Rewrites one file with two large contents in turn, as fast as it can, until killed.
_WRITER = """
import sys
from pathlib import Path
from edgefleet.shared.durable import atomic_write_bytes
path = Path(sys.argv[1])
contents = [bytes([65]) * (4 << 20), bytes([66]) * (3 << 20)]
atomic_write_bytes(path, contents[0])
print("ready", flush=True)
i = 1
while True:
    atomic_write_bytes(path, contents[i % 2])
    i += 1
"""


def test_a_killed_writer_leaves_the_old_or_the_new_content(tmp_path: Path) -> None:
    path = tmp_path / "state.bin"
    whole = {b"A" * (4 << 20), b"B" * (3 << 20)}
    rng = random.Random(7)
    for _ in range(4):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path)],
            cwd=REPO,
            stdout=subprocess.PIPE,
        )
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.0, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
        assert path.read_bytes() in whole
        remove_stray_temp_files(tmp_path)
        assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_replace_durably_moves_the_finished_file_over_the_target(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    source = tmp_path / "out.bin.partial"
    source.write_bytes(b"new")
    replace_durably(source, target)
    assert target.read_bytes() == b"new"
    assert not source.exists()


def test_replace_durably_raises_when_the_source_is_missing(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(FileNotFoundError):
        replace_durably(tmp_path / "missing", target)
    assert target.read_bytes() == b"old"
