"""The runner with fake ports (interfaces of this project) over a real store and real models."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.store import ModelStore
from edgefleet.agent.update.machine import Phase, UpdatePolicy, UpdateState
from edgefleet.agent.update.ports import GoldenOutcome
from edgefleet.agent.update.runner import UpdateRunner
from edgefleet.agent.update.types import Report, Tick, UpdateTarget
from edgefleet.shared.manifest import ModelManifest
from edgefleet.shared.messages import EventKind
from edgefleet.shared.runtime import load_runtime
from edgefleet.shared.signing.errors import DigestMismatch, TransportError
from tests.agent.update.support import Package

T0 = datetime(2024, 5, 1, tzinfo=UTC)


class Crash(BaseException):
    """The process dies inside a port."""


class Ports:
    def __init__(self, packages: list[Package]) -> None:
        self.repo = {p.sha256: p.artifact for p in packages}
        self.transient_failures = 0
        self.failing_golden: set[str] = set()
        self.loaded: list[str | None] = []
        self.reports: list[Report] = []
        self.crash_in: str | None = None

    def _maybe_crash(self, where: str) -> None:
        if self.crash_in == where:
            self.crash_in = None
            raise Crash(where)

    def download(self, target: UpdateTarget, dest: Path, progress) -> None:
        self._maybe_crash("download")
        if self.transient_failures:
            self.transient_failures -= 1
            raise TransportError("connection reset by the test")
        data = self.repo[target.sha256]
        dest.write_bytes(data)
        progress(len(data))

    def verify(self, target: UpdateTarget, artifact: Path) -> None:
        self._maybe_crash("verify")
        found = hashlib.sha256(artifact.read_bytes()).hexdigest()
        if found != target.sha256:
            raise DigestMismatch(f"{artifact}: sha256 {found}, expected {target.sha256}")

    def extract(self, artifact: Path, dest: Path) -> None:
        self._maybe_crash("extract")
        with zipfile.ZipFile(artifact) as z:
            z.extractall(dest)

    def load(self, model_dir: Path | None) -> None:
        if model_dir is not None:
            self._maybe_crash("load")
            manifest = ModelManifest.model_validate_json((model_dir / "manifest.json").read_bytes())
            load_runtime(model_dir / manifest.model_file).close()  # a real onnxruntime load
        self.loaded.append(model_dir.name if model_dir else None)

    def check(self, model_dir: Path) -> GoldenOutcome:
        self._maybe_crash("golden")
        if model_dir.name in self.failing_golden:
            return GoldenOutcome(passed=False, detail="3/20 outputs differ")
        return GoldenOutcome(passed=True, detail="20/20")

    def report(self, report: Report) -> None:
        self._maybe_crash(f"report:{report.event}")
        self.reports.append(report)

    def kinds(self) -> list[EventKind]:
        return [r.event for r in self.reports]


def make_runner(tmp_path: Path, ports: Ports, **options: Any) -> UpdateRunner:
    """A runner in ``tmp_path`` on ``ports``, as a new process starts it: the store
    recovered first; ``options`` override its keyword arguments."""
    arguments: dict[str, Any] = {
        "policy": UpdatePolicy(retry_base_s=0),
        "clock": lambda: T0,
        **options,
    }
    store = ModelStore(tmp_path / "store")
    store.recover()
    return UpdateRunner(
        state_path=tmp_path / "update-state.json",
        store=store,
        downloads_dir=tmp_path / "downloads",
        downloader=ports,
        verifier=ports,
        extractor=ports,
        activator=ports,
        golden=ports,
        sink=ports,
        **arguments,
    )


def drive(runner: UpdateRunner, rounds: int = 20) -> None:
    """Run until the queue is empty, serving healthy inferences during probation."""
    for _ in range(rounds):
        if runner.state.phase is Phase.PROBATION:
            for _ in range(5):
                runner.record_inference(ok=True, latency_ms=3.0)
        if runner.run_pending() == 0:
            if runner.state.retry_at is None:
                return
            runner.submit(Tick(now=T0))  # the worker thread would tick on its own


@pytest.fixture
def installed(tmp_path: Path, packages: list[Package]) -> Callable[[Ports], UpdateRunner]:
    """A device running packages[0], committed."""

    def make(ports: Ports) -> UpdateRunner:
        runner = make_runner(tmp_path, ports)
        runner.submit(packages[0].offer(1))
        drive(runner)
        assert runner.state.phase is Phase.COMMITTED
        return runner

    return make


def test_happy_path_commits_the_new_model(tmp_path: Path, packages: list[Package], installed):
    ports = Ports(packages)
    runner = installed(ports)
    ports.reports.clear()
    ports.transient_failures = 1
    runner.submit(packages[1].offer(2))
    drive(runner)
    store = ModelStore(tmp_path / "store")
    assert runner.state.phase is Phase.COMMITTED
    assert (store.active(), store.previous()) == (packages[1].sha256, packages[0].sha256)
    assert ports.loaded[-1] == packages[1].sha256
    kinds = ports.kinds()
    for kind in (EventKind.DOWNLOADING, EventKind.VERIFIED, EventKind.STAGED, EventKind.ACTIVATED):
        assert kind in kinds
    assert kinds[-2:] == [EventKind.HEALTHY, EventKind.COMMITTED]
    assert not list((tmp_path / "downloads").iterdir())
    persisted = (tmp_path / "update-state.json").read_text()
    assert '"committed"' in persisted


def test_devices_of_a_failed_wave_retry_at_different_times_within_the_backoff(
    tmp_path: Path, packages: list[Package]
) -> None:
    # Two devices whose first download fails at the same instant (one repository down for
    # a whole wave), each runner drawing from its own default random source, as on devices.
    policy = UpdatePolicy(retry_base_s=10, retry_max_s=300, retry_jitter=0.5)
    retry_at = []
    for device in ("cam-1", "cam-2"):
        ports = Ports(packages)
        ports.transient_failures = 1
        runner = make_runner(tmp_path / device, ports, policy=policy)
        runner.submit(packages[0].offer(1))
        runner.run_pending()
        assert runner.state.phase is Phase.DOWNLOADING
        assert runner.state.download_attempts == 1
        retry_at.append(runner.state.retry_at)
    first, second = retry_at
    assert first is not None
    assert second is not None
    assert first != second, "the two devices would retry in lockstep"
    for at in (first, second):
        assert T0 + timedelta(seconds=5) <= at <= T0 + timedelta(seconds=10)


def test_golden_failure_rolls_back_to_the_previous_model(
    tmp_path: Path, packages: list[Package], installed
) -> None:
    ports = Ports(packages)
    runner = installed(ports)
    ports.failing_golden.add(packages[1].sha256)
    runner.submit(packages[1].offer(2))
    drive(runner)
    store = ModelStore(tmp_path / "store")
    assert runner.state.phase is Phase.ROLLED_BACK
    assert store.active() == packages[0].sha256
    assert ports.loaded[-1] == packages[0].sha256
    rolled = [r for r in ports.reports if r.event is EventKind.ROLLED_BACK]
    assert "3/20 outputs differ" in (rolled[0].reason or "")
    assert not store.has(packages[1].sha256)


def test_tampered_artifact_is_rejected_and_nothing_changes(
    tmp_path: Path, packages: list[Package], installed
) -> None:
    ports = Ports(packages)
    runner = installed(ports)
    ports.repo[packages[1].sha256] = packages[2].artifact
    runner.submit(packages[1].offer(2))
    drive(runner)
    assert runner.state.phase is Phase.FAILED
    assert ModelStore(tmp_path / "store").active() == packages[0].sha256
    rejected = [r for r in ports.reports if r.event is EventKind.REJECTED]
    assert "expected " + packages[1].sha256 in (rejected[0].reason or "")


@pytest.mark.parametrize(
    "crash_in",
    [
        "download",
        "verify",
        "extract",
        "load",
        "golden",
        "report:staged",
        "report:activated",
        "report:healthy",
        "report:rolled_back",
    ],
)
@pytest.mark.parametrize("golden_ok", [True, False])
def test_crash_in_any_phase_resumes_to_committed_or_rolled_back(
    tmp_path: Path, packages: list[Package], installed, crash_in: str, golden_ok: bool
) -> None:
    ports = Ports(packages)
    runner = installed(ports)
    if not golden_ok:
        ports.failing_golden.add(packages[1].sha256)
    ports.crash_in = crash_in
    runner.submit(packages[1].offer(2))
    crashed = False
    try:
        drive(runner)
    except Crash:
        crashed = True
    # A healthy update never reports rolled_back, an unhealthy one never healthy.
    if (crash_in, golden_ok) in (("report:rolled_back", True), ("report:healthy", False)):
        assert not crashed
    else:
        assert crashed, f"the test never reached {crash_in}"
    restarted = make_runner(tmp_path, ports)  # a new process: persisted state + store
    drive(restarted)
    store = ModelStore(tmp_path / "store")
    expected = packages[1] if golden_ok else packages[0]
    wanted = Phase.COMMITTED if golden_ok else Phase.ROLLED_BACK
    assert restarted.state.phase is wanted
    assert store.active() == expected.sha256
    store.verify(expected.sha256)
    assert ports.loaded[-1] == expected.sha256


def test_worker_thread_runs_an_update_to_commit(tmp_path: Path, packages: list[Package]):
    import time

    ports = Ports(packages)
    runner = make_runner(tmp_path, ports)
    runner._tick_s = 0.01
    runner.start()
    try:
        runner.submit(packages[0].offer(1))
        deadline = time.monotonic() + 20
        while runner.state.phase is not Phase.COMMITTED and time.monotonic() < deadline:
            runner.record_inference(ok=True, latency_ms=2.0)
            time.sleep(0.01)
    finally:
        runner.stop()
    assert runner.state.phase is Phase.COMMITTED
    assert ModelStore(tmp_path / "store").active() == packages[0].sha256


def test_crash_after_commit_is_persisted_leaves_no_third_model_behind(
    tmp_path: Path, packages: list[Package], installed
) -> None:
    # The agent dies after persisting COMMITTED but before the Commit effect's gc ran:
    # the store still holds a model that is neither active nor previous, and a download
    # is left over. The restart, at rest, must collect both.
    ports = Ports(packages)
    runner = installed(ports)
    runner.submit(packages[1].offer(2))
    drive(runner)
    store = ModelStore(tmp_path / "store")
    stale = packages[2]
    store.stage(stale.sha256, stale.fill)
    leftover = tmp_path / "downloads" / f"{stale.sha256}.efpkg.part"
    leftover.write_bytes(b"half a package")
    assert stale.sha256 in store.models()
    restarted = make_runner(tmp_path, ports)
    drive(restarted)
    assert restarted.state.phase is Phase.COMMITTED
    assert set(store.models()) == {packages[1].sha256, packages[0].sha256}
    assert not leftover.exists()


def test_download_progress_is_not_written_to_the_state_file(
    tmp_path: Path, packages: list[Package]
) -> None:
    # Counters only: a resumed download starts from its .part file, not from the state.
    ports = Ports(packages)
    runner = make_runner(tmp_path, ports)
    runner.run_pending()  # the start-up resume
    runner.submit(packages[0].offer(1))
    assert runner.run_pending(max_events=2) == 2  # desired (downloads), then its progress
    on_disk = UpdateState.model_validate_json((tmp_path / "update-state.json").read_bytes())
    assert runner.state.phase is on_disk.phase is Phase.DOWNLOADING
    assert runner.state.downloaded_bytes == packages[0].target(1).length
    assert on_disk.downloaded_bytes == 0
    drive(runner)
    assert runner.state.phase is Phase.COMMITTED


def test_inferences_reach_probation_through_the_metrics_only_while_it_runs(
    tmp_path: Path, packages: list[Package]
) -> None:
    """The watcher (what `UpdateService.feed_probation` installs) opens and closes the feed."""
    from edgefleet.agent.metrics import InferenceMetrics

    runner = make_runner(tmp_path, Ports(packages))
    metrics = InferenceMetrics()
    heard: list[bool] = []

    def watch(probation: bool) -> None:
        heard.append(probation)
        metrics.observer = runner.record_inference if probation else None

    runner.watch_probation(watch)
    runner.submit(packages[0].offer(1))
    for _ in range(20):
        for _ in range(5):
            metrics.record_ns(3_000_000)  # an inference: only probation's observer passes it on
        if runner.run_pending() == 0:
            break
    assert runner.state.phase is Phase.COMMITTED
    assert heard == [False, True, False]
    assert metrics.observer is None
