"""The model store: content addressing, slots, and a verified model active after any crash."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgefleet.agent.store import ModelStore, StoreError
from edgefleet.shared.manifest import MANIFEST_FILE
from tests.agent.update.support import MODEL_FILE, Package


class Crash(BaseException):
    """Stops an operation between two file-system steps, like a power cut would."""


def _stage_all(store: ModelStore, packages: list[Package]) -> None:
    for p in packages:
        store.stage(p.sha256, p.fill)


def test_stage_then_activate_switches_slots(tmp_path: Path, packages: list[Package]) -> None:
    a, b = packages[0], packages[1]
    store = ModelStore(tmp_path)
    _stage_all(store, [a, b])
    assert store.active() is None
    store.activate(a.sha256)
    store.activate(b.sha256)
    assert (store.active(), store.previous()) == (b.sha256, a.sha256)
    assert store.verify(b.sha256).version == b.version
    assert (store.root / "active").resolve() == store.path(b.sha256)
    assert store.rollback() == a.sha256
    assert (store.active(), store.previous()) == (a.sha256, a.sha256)
    assert store.rollback() == a.sha256  # idempotent


def test_stage_is_idempotent_and_leaves_no_staging(tmp_path: Path, packages: list[Package]):
    store = ModelStore(tmp_path)
    path = store.stage(packages[0].sha256, packages[0].fill)
    again = store.stage(packages[0].sha256, lambda d: pytest.fail("fill called twice"))
    assert path == again
    assert list(store.staging_dir.iterdir()) == []


def test_fill_that_fails_leaves_nothing_behind(tmp_path: Path, packages: list[Package]):
    store = ModelStore(tmp_path)

    def fill(d: Path) -> None:
        (d / "half").write_bytes(b"x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.stage(packages[0].sha256, fill)
    assert store.models() == []
    assert list(store.staging_dir.iterdir()) == []


def test_package_whose_model_differs_from_its_manifest_is_refused(
    tmp_path: Path, packages: list[Package]
) -> None:
    store = ModelStore(tmp_path)

    def fill(d: Path) -> None:
        packages[0].fill(d)
        (d / MODEL_FILE).write_bytes(packages[1].files[MODEL_FILE])

    with pytest.raises(StoreError, match="the manifest says"):
        store.stage(packages[0].sha256, fill)
    assert store.models() == []


def test_activate_refuses_a_corrupted_model_and_keeps_the_active_one(
    tmp_path: Path, packages: list[Package]
) -> None:
    a, b = packages[0], packages[1]
    store = ModelStore(tmp_path)
    _stage_all(store, [a, b])
    store.activate(a.sha256)
    model = store.path(b.sha256) / MODEL_FILE
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    with pytest.raises(StoreError, match=r"model\.onnx: sha256 is"):
        store.activate(b.sha256)
    assert store.active() == a.sha256


def test_rollback_without_previous_is_an_error(tmp_path: Path, packages: list[Package]):
    store = ModelStore(tmp_path)
    _stage_all(store, [packages[0]])
    store.activate(packages[0].sha256)
    with pytest.raises(StoreError, match="no previous model"):
        store.rollback()


def test_gc_never_removes_active_or_previous(tmp_path: Path, packages: list[Package]):
    store = ModelStore(tmp_path)
    _stage_all(store, packages)
    store.activate(packages[0].sha256)
    store.activate(packages[1].sha256)
    assert store.gc() == [packages[2].sha256]
    assert store.models() == sorted([packages[0].sha256, packages[1].sha256])
    with pytest.raises(StoreError, match="in use"):
        store.remove(packages[1].sha256)


def test_recover_falls_back_to_previous_when_active_is_corrupt(
    tmp_path: Path, packages: list[Package]
) -> None:
    a, b = packages[0], packages[1]
    store = ModelStore(tmp_path)
    _stage_all(store, [a, b])
    store.activate(a.sha256)
    store.activate(b.sha256)
    (store.path(b.sha256) / MANIFEST_FILE).unlink()
    report = ModelStore(tmp_path).recover()
    assert report.fell_back_from == b.sha256
    assert store.active() == a.sha256
    store.verify(a.sha256)


def test_recover_leaves_no_model_active_when_none_verifies(
    tmp_path: Path, packages: list[Package]
) -> None:
    store = ModelStore(tmp_path)
    _stage_all(store, [packages[0]])
    store.activate(packages[0].sha256)
    (store.path(packages[0].sha256) / MODEL_FILE).write_bytes(b"garbage")
    store.recover()
    assert store.active() is None


def _scenario(store: ModelStore, packages: list[Package]) -> None:
    a, b, c = packages
    store.stage(b.sha256, b.fill)
    store.activate(b.sha256)
    store.stage(c.sha256, c.fill)
    store.activate(c.sha256)
    store.rollback()
    store.gc()
    store.stage(a.sha256, a.fill)
    store.activate(a.sha256)


def _prepared(root: Path, packages: list[Package], on_step=None) -> ModelStore:
    store = ModelStore(root)
    store.stage(packages[0].sha256, packages[0].fill)
    store.activate(packages[0].sha256)
    store._step = on_step or (lambda _: None)
    return store


def test_crash_after_any_step_leaves_a_verified_model_active(
    tmp_path: Path, packages: list[Package]
) -> None:
    steps: list[str] = []
    _scenario(_prepared(tmp_path / "count", packages, steps.append), packages)
    assert len(steps) > 15  # stage, switch and discard steps all take part
    shas = {p.sha256 for p in packages}
    for k in range(len(steps) + 1):
        calls = 0

        def crash_at(name: str, k: int = k) -> None:
            nonlocal calls
            calls += 1
            if calls > k:
                raise Crash(name)

        root = tmp_path / f"crash{k}"
        store = _prepared(root, packages, crash_at)
        with contextlib.suppress(Crash):
            _scenario(store, packages)
        recovered = ModelStore(root)
        report = recovered.recover()
        active = recovered.active()
        assert active in shas, f"no model active after a crash before step {k}: {report}"
        recovered.verify(active)
        assert list(recovered.staging_dir.iterdir()) == []
        assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


_CHILD = """
import shutil, sys
from pathlib import Path
from edgefleet.agent.store import ModelStore
root, pkgs = Path(sys.argv[1]), Path(sys.argv[2])
store = ModelStore(root)
versions = sorted(p.name for p in pkgs.iterdir())
print("ready", flush=True)
i = 0
while True:
    v = versions[i % len(versions)]
    sha = (pkgs / v / "sha").read_text()
    files = [f for f in (pkgs / v).iterdir() if f.name != "sha"]
    store.stage(sha, lambda d: [shutil.copy(f, d / f.name) for f in files])
    store.activate(sha)
    if i % 3 == 2:
        store.rollback()
    store.gc()
    i += 1
"""


def test_sigkill_at_random_instants_leaves_a_verified_model_active(
    tmp_path: Path, packages: list[Package]
) -> None:
    pkgs = tmp_path / "pkgs"
    for p in packages:
        d = pkgs / p.version
        d.mkdir(parents=True)
        p.fill(d)
        (d / "sha").write_text(p.sha256)
    root = tmp_path / "store"
    store = _prepared(root, packages)
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    for _ in range(6):
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(root), str(pkgs)],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.01, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        store = ModelStore(root)
        store.recover()
        active = store.active()
        assert active in {p.sha256 for p in packages}
        store.verify(active)
