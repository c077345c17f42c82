"""The runner's work gate: agents of one simulator process install in turns.

Fake ports (interfaces of this project) over a real store and real models, as in
`tests.agent.update.test_runner`; the runners run on their own worker threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgefleet.agent.store import ModelStore
from edgefleet.agent.update.machine import Phase
from edgefleet.agent.update.ports import GoldenOutcome, WorkGate
from edgefleet.agent.update.runner import UpdateRunner
from edgefleet.agent.update.types import UpdateTarget
from edgefleet.shared.messages import EventKind, utcnow
from tests.agent.update.support import Package
from tests.agent.update.test_runner import Ports, make_runner


class CountingPorts(Ports):
    """Ports that count how many runners are inside a heavy step at the same time."""

    def __init__(self, packages: list[Package], shared: dict[str, int], lock: threading.Lock):
        super().__init__(packages)
        self._shared = shared
        self._lock = lock

    def _heavy(self, step: Callable[[], None]) -> None:
        with self._lock:
            self._shared["now"] += 1
            self._shared["max"] = max(self._shared["max"], self._shared["now"])
        try:
            time.sleep(0.02)  # long enough for another runner to overlap, were it allowed
            step()
        finally:
            with self._lock:
                self._shared["now"] -= 1

    def download(self, target: UpdateTarget, dest: Path, progress) -> None:
        self._heavy(lambda: Ports.download(self, target, dest, progress))

    def verify(self, target: UpdateTarget, artifact: Path) -> None:
        self._heavy(lambda: Ports.verify(self, target, artifact))

    def extract(self, artifact: Path, dest: Path) -> None:
        self._heavy(lambda: Ports.extract(self, artifact, dest))

    def check(self, model_dir: Path) -> GoldenOutcome:
        outcome: list[GoldenOutcome] = []
        self._heavy(lambda: outcome.append(Ports.check(self, model_dir)))
        return outcome[0]


def gated_runner(
    directory: Path, ports: Ports, gate: WorkGate | None, *, start: bool = True
) -> UpdateRunner:
    """A runner on the wall clock, ticking fast, with ``gate`` (None: no gate)."""
    runner = make_runner(directory, ports, clock=utcnow, tick_s=0.05, work_gate=gate)
    if start:
        runner.start()
    return runner


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def serve_until_committed(runners: list[UpdateRunner]) -> None:
    """Feed healthy inferences (probation) until every runner committed."""
    deadline = time.monotonic() + 30
    while not all(r.state.phase is Phase.COMMITTED for r in runners):
        assert time.monotonic() < deadline, [r.state.phase for r in runners]
        for runner in runners:
            runner.record_inference(ok=True, latency_ms=2.0)
        time.sleep(0.01)


def most_at_work_at_once(tmp_path: Path, packages: list[Package], gate: WorkGate | None) -> int:
    """Run three runners sharing ``gate`` to commit; the most that were in a heavy step."""
    shared = {"now": 0, "max": 0}
    lock = threading.Lock()
    runners = [
        gated_runner(tmp_path / f"dev{i}", CountingPorts(packages, shared, lock), gate)
        for i in range(3)
    ]
    try:
        for runner in runners:
            runner.submit(packages[0].offer(1))
        serve_until_committed(runners)
    finally:
        for runner in runners:
            runner.stop()
    return shared["max"]


def test_runners_sharing_a_gate_never_work_at_the_same_time(
    tmp_path: Path, packages: list[Package]
) -> None:
    gate = threading.BoundedSemaphore(1)
    assert most_at_work_at_once(tmp_path, packages, gate) == 1
    # Every runner gave the gate back (a BoundedSemaphore refuses one release too many).
    assert gate.acquire(blocking=False)
    gate.release()


def test_without_a_gate_the_same_runners_do_overlap(
    tmp_path: Path, packages: list[Package]
) -> None:
    # The counterpart that shows the first test can fail: no gate, overlapping steps.
    assert most_at_work_at_once(tmp_path, packages, None) > 1


def test_reports_pass_a_closed_gate_and_waiting_for_probation_frees_it(
    tmp_path: Path, packages: list[Package]
) -> None:
    gate = threading.BoundedSemaphore(1)
    ports = Ports(packages)
    runner = gated_runner(tmp_path, ports, gate, start=False)
    runner.run_pending()  # the start-up resume, which may load a model: real work
    assert gate.acquire(blocking=False)  # done with it; now another agent installs
    runner.start()
    try:
        runner.submit(packages[0].offer(1))
        wait_for(lambda: EventKind.DOWNLOADING in ports.kinds(), "the downloading report")
        time.sleep(0.2)
        assert ports.kinds() == [EventKind.DOWNLOADING]  # told the fleet; waits to work
        assert not (tmp_path / "downloads" / f"{packages[0].sha256}.efpkg").exists()
        gate.release()
        wait_for(lambda: runner.state.phase is Phase.PROBATION, "probation")
        # Probation waits for inferences, not for work: the gate is free meanwhile.
        wait_for(lambda: gate.acquire(blocking=False), "the gate to be free in probation")
        # A committed device reports without the gate (only clean-up follows the commit).
        serve_until_committed([runner])
        wait_for(lambda: EventKind.COMMITTED in ports.kinds(), "the committed report")
        gate.release()
    finally:
        runner.stop()
    assert ModelStore(tmp_path / "store").active() == packages[0].sha256
