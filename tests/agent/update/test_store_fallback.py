"""After a rollback the store keeps a *different* model to fall back to, and nothing unnamed.

The case from the field: a desired state that asks for the previous model during
probation rolled back to it and left ``previous`` naming that same model, with the model
before it still on disk but named by no slot.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from edgefleet.agent.store import ModelStore
from edgefleet.agent.update.machine import Phase
from edgefleet.shared.messages import EventKind
from tests.agent.update.support import MODEL_FILE, Package
from tests.agent.update.test_runner import Ports, drive, make_runner


class Crash(BaseException):
    """Stops a store operation between two file-system steps, like a power cut would."""


def _three_deep(store: ModelStore, packages: list[Package]) -> None:
    """a committed, then b committed, then c activated (undecided)."""
    a, b, c = packages
    for p in (a, b):
        store.stage(p.sha256, p.fill)
    store.activate(a.sha256)
    store.activate(b.sha256)
    store.gc()  # b committed
    store.stage(c.sha256, c.fill)
    store.activate(c.sha256)


def test_rollback_makes_the_model_before_the_restored_one_previous(
    tmp_path: Path, packages: list[Package]
) -> None:
    a, b, c = packages
    store = ModelStore(tmp_path)
    _three_deep(store, packages)
    assert (store.active(), store.previous(), store.displaced()) == (c.sha256, b.sha256, a.sha256)
    store.ensure_active(b.sha256)
    store.remove(c.sha256)
    assert (store.active(), store.previous()) == (b.sha256, a.sha256)
    assert store.problems() == []


def test_commit_forgets_the_displaced_model(tmp_path: Path, packages: list[Package]) -> None:
    a, b, c = packages
    store = ModelStore(tmp_path)
    _three_deep(store, packages)
    assert store.gc() == [a.sha256]
    assert (store.active(), store.previous(), store.displaced()) == (c.sha256, b.sha256, None)
    assert store.problems() == []


def test_rollback_with_nothing_before_keeps_previous_on_the_restored_model(
    tmp_path: Path, packages: list[Package]
) -> None:
    a, b = packages[0], packages[1]
    store = ModelStore(tmp_path)
    for p in (a, b):
        store.stage(p.sha256, p.fill)
    store.activate(a.sha256)
    store.activate(b.sha256)
    store.ensure_active(a.sha256)
    store.remove(b.sha256)
    assert (store.active(), store.previous()) == (a.sha256, a.sha256)
    assert store.problems() == []  # nothing else is stored: no other model to name


def test_problems_names_what_breaks_the_invariants(tmp_path: Path, packages: list[Package]):
    a, b, c = packages
    store = ModelStore(tmp_path)
    _three_deep(store, packages)
    assert any("undecided" in p for p in store.problems())
    store.ensure_active(b.sha256)
    assert store.problems() == [f"model {c.sha256[:12]} is named by no slot"]
    (store.path(a.sha256) / MODEL_FILE).write_bytes(b"garbage")
    assert f"previous model {a.sha256[:12]} does not verify" in store.problems()


def test_desired_for_the_previous_model_during_probation_leaves_a_clean_store(
    tmp_path: Path, packages: list[Package]
) -> None:
    a, b, c = packages
    ports = Ports(packages)
    runner = make_runner(tmp_path, ports)
    for seq, p in enumerate((a, b), start=1):
        runner.submit(p.offer(seq))
        drive(runner)
        assert runner.state.phase is Phase.COMMITTED
    runner.submit(c.offer(3))
    runner.run_pending()  # no inferences served: probation stays open
    assert runner.state.phase is Phase.PROBATION
    runner.submit(b.offer(4))
    runner.run_pending()
    assert runner.state.phase is Phase.ROLLED_BACK
    assert EventKind.ROLLED_BACK in ports.kinds()
    store = ModelStore(tmp_path / "store")
    assert (store.active(), store.previous()) == (b.sha256, a.sha256)
    assert store.problems() == []
    assert ports.loaded[-1] == b.sha256
    # And so after the next start (which recovers the store first).
    restarted = make_runner(tmp_path, ports)
    restarted.run_pending()
    assert (store.active(), store.previous()) == (b.sha256, a.sha256)
    assert store.problems() == []


def _rollback_sequence(store: ModelStore, packages: list[Package]) -> None:
    _, b, c = packages
    store.activate(c.sha256)
    store.ensure_active(b.sha256)
    store.remove(c.sha256)


def test_crash_at_any_step_of_activate_and_rollback_recovers_to_a_clean_store(
    tmp_path: Path, packages: list[Package]
) -> None:
    a, b, c = packages

    def prepared(root: Path) -> ModelStore:
        store = ModelStore(root)
        for p in packages:
            store.stage(p.sha256, p.fill)
        store.activate(a.sha256)
        store.activate(b.sha256)  # b active, a previous, c staged
        return store

    steps: list[str] = []
    counting = prepared(tmp_path / "count")
    counting._step = steps.append
    _rollback_sequence(counting, packages)
    assert any(s.startswith("displaced.") for s in steps)
    for k in range(len(steps) + 1):
        calls = 0

        def crash_at(name: str, k: int = k) -> None:
            nonlocal calls
            calls += 1
            if calls > k:
                raise Crash(name)

        store = prepared(tmp_path / f"crash{k}")
        store._step = crash_at
        with contextlib.suppress(Crash):
            _rollback_sequence(store, packages)
        recovered = ModelStore(store.root)
        recovered.recover()
        active, previous = recovered.active(), recovered.previous()
        assert active in (b.sha256, c.sha256), f"crash before step {k}: active {active}"
        assert previous is not None
        assert previous != active, f"crash before step {k}: previous is the active model"
        recovered.ensure_active(b.sha256)  # what the runner's resume does, then its gc
        recovered.gc()
        assert recovered.problems() == [], f"crash before step {k}"
        assert (recovered.active(), recovered.previous()) == (b.sha256, a.sha256)
