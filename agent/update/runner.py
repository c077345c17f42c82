"""The I/O shell around the update state machine.

For each event: compute `step`, persist the new state atomically, *then* carry out the
effects through the ports (`edgefleet.agent.update.ports`). Effects report back by
queueing new events. One worker thread takes events from one queue, so effects never race
each other; other threads (MQTT callbacks, the inference path) only `submit`.

Invariant: the state file always holds a state whose effects are either done or safe to
redo, so a crash at any instant is resolved at the next start: the store is recovered
first (`ModelStore.recover`, by whoever opens it: `UpdateService`, once), then the runner
loads the persisted state and feeds it `Resumed`.

The machine has no randomness of its own: the runner draws the jitter of a download
retry and hands it over in the `DownloadFailed` event.

A newer desired state does not wait behind the download it supersedes: `submit`, on
whatever thread it runs, asks the pure acceptance rules (`judge`) whether the machine
will take it and, if it would abort the download in progress, calls ``cancel_download``
(a port: the downloader shuts its connection down), so the worker thread returns from the
download at once and handles the desired state next. The machine decides as always; a
cancel only ends the old download early (its failure names a target no longer worked on).

The exceptions to "persist every step" are the steps that change nothing but counters:
a probation sample (a restart restarts probation anyway, and an fsync per inference
would wear an SD card) and download progress (a resumed download starts from the bytes
in its ``.part`` file, whatever the state says).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from edgefleet.agent.store import ModelStore, StoreError
from edgefleet.agent.update.acceptance import Accepted, judge
from edgefleet.agent.update.machine import DEFAULT_POLICY, UpdateState, step
from edgefleet.agent.update.policy import Phase, UpdatePolicy
from edgefleet.agent.update.ports import (
    Downloader,
    EventSink,
    GoldenChecker,
    GoldenOutcome,
    ModelActivator,
    PackageExtractor,
    Verifier,
    WorkGate,
)
from edgefleet.agent.update.types import (
    Activate,
    Activated,
    ActivationFailed,
    Budget,
    Cleanup,
    CollectGarbage,
    Commit,
    DesiredReceived,
    DownloadDone,
    DownloadFailed,
    DownloadProgress,
    Effect,
    EnsureActive,
    Event,
    GoldenResult,
    InstalledModel,
    ProbationSample,
    Report,
    Resumed,
    RollBack,
    RunGolden,
    Stage,
    Staged,
    StageFailed,
    StartDownload,
    Tick,
    UpdateTarget,
    Verified,
    Verify,
    VerifyFailed,
)
from edgefleet.shared.durable import atomic_write_json
from edgefleet.shared.messages import EventKind, utcnow
from edgefleet.shared.signing.errors import TransportError, UpdateRejected

log = logging.getLogger(__name__)


# --- runner -----------------------------------------------------------------------------

# The effects that take the work gate. Reports and clean-ups do not: a committed device
# must not wait behind other devices' installs to say so.
_HEAVY = (StartDownload, Verify, Stage, Activate, RunGolden, RollBack, EnsureActive)


class UpdateRunner:
    """Runs the update machine: persists, then performs effects, one event at a time."""

    def __init__(
        self,
        *,
        state_path: Path,
        store: ModelStore,
        downloads_dir: Path,
        downloader: Downloader,
        verifier: Verifier,
        extractor: PackageExtractor,
        activator: ModelActivator,
        golden: GoldenChecker,
        sink: EventSink,
        policy: UpdatePolicy = DEFAULT_POLICY,
        clock: Callable[[], datetime] = utcnow,
        tick_s: float = 1.0,
        work_gate: WorkGate | None = None,
        rng: random.Random | None = None,
        cancel_download: Callable[[str], None] | None = None,
    ) -> None:
        """A runner over ``store`` whose state lives in ``state_path``; `start` runs it.

        ``store`` must have been recovered (`ModelStore.recover`) since it was opened.
        ``rng`` draws the jitter of download retries (its own `random.Random` by
        default, seeded from the OS, so no two devices share their draws).

        ``work_gate``, if given, is acquired before the first effect that does real work
        (download, verify, stage, activate, golden check, rollback) and held
        until the runner has no event queued, i.e. until it waits for the outside world
        (a retry time, probation samples, the next desired state). A device passes none.
        A simulator running many agents in one process passes one semaphore to all of
        them, so they install in turns, as devices with a CPU each would, instead of all
        at once on one GIL, handing it back and forth more than working
        (`edgefleet.simulators.fleet.FleetPlan.update_slots`).
        """
        self._state_path = state_path
        self._store = store
        self._downloads = downloads_dir
        self._downloader = downloader
        self._verifier = verifier
        self._extractor = extractor
        self._activator = activator
        self._golden = golden
        self._sink = sink
        self._policy = policy
        self._clock = clock
        self._tick_s = tick_s
        self._work_gate = work_gate
        self._rng = rng or random.Random()
        self._cancel_download = cancel_download
        self._holding_gate = False
        self._queue: queue.Queue[Event | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        downloads_dir.mkdir(parents=True, exist_ok=True)
        self._state = self._load_state()
        # Told whether the machine is in probation, when that changes (and when set, by
        # `watch_probation`): the inference path then feeds `record_inference` only
        # while samples are wanted, rather than paying a call on every inference.
        self._probation_watcher: Callable[[bool], None] | None = None
        self._queue.put(Resumed())

    @property
    def state(self) -> UpdateState:
        return self._state

    def submit(self, event: Event) -> None:
        """Queue an event (thread-safe); a superseding desired state cancels the download."""
        self._queue.put(event)
        # After the put: the cancelled download's failure then queues behind the desired
        # state, which has already moved the machine on, so the failure changes nothing.
        if isinstance(event, DesiredReceived) and self._supersedes_download(event):
            assert self._cancel_download is not None
            seq = event.target.desired_seq
            log.info("desired seq %s supersedes the download in progress; cancelling it", seq)
            self._cancel_download(f"superseded by desired seq {seq}")

    def watch_probation(self, watcher: Callable[[bool], None]) -> None:
        """Call ``watcher(in_probation)`` now and from the worker whenever it changes."""
        self._probation_watcher = watcher
        watcher(self._state.phase is Phase.PROBATION)

    def record_inference(self, ok: bool, latency_ms: float) -> None:
        """Called by the inference path after each inference; cheap outside probation."""
        if self._state.phase is Phase.PROBATION:
            self.submit(ProbationSample(ok=ok, latency_ms=latency_ms))

    def run_pending(self, max_events: int = 10_000) -> int:
        """Handle queued events (and the ones they cause) in the calling thread.

        For tests and for a caller that drives the loop itself; do not mix with `start`.
        Returns how many events were handled.
        """
        handled = 0
        while handled < max_events:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                break
            if event is not None:
                self.handle(event)
                handled += 1
        return handled

    def start(self) -> None:
        """Start the worker thread; it ticks every ``tick_s`` when no event arrives."""
        self._thread = threading.Thread(target=self._loop, name="update-runner", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Let the worker finish the event in hand, then stop it."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout_s)
            self._thread = None

    def handle(self, event: Event) -> None:
        """One turn: step, persist, perform. Effects may queue further events."""
        before = self._state
        new, effects = step(before, event, self._clock(), policy=self._policy)
        counters_only = (
            isinstance(event, ProbationSample | DownloadProgress)
            and not effects
            and new.phase is before.phase
        )
        if new != before and not counters_only:
            atomic_write_json(self._state_path, new)
        self._state = new
        if new.phase is not before.phase:
            log.info("update %s -> %s on %s", before.phase, new.phase, event.kind)
            watcher = self._probation_watcher
            probation = new.phase is Phase.PROBATION
            if watcher is not None and probation != (before.phase is Phase.PROBATION):
                watcher(probation)
        try:
            for effect in effects:
                self._perform(effect)
            if new.phase is Phase.STAGED:
                self.submit(Tick(now=self._clock()))
        finally:
            if self._holding_gate and self._queue.empty():
                self._release_gate()

    # --- internals ----------------------------------------------------------------------

    def _supersedes_download(self, offer: DesiredReceived) -> bool:
        # Reads the state the worker thread last published (an immutable value); if it is
        # a step behind, the worst case is a cancel the machine then ignores (retried) or
        # none (the old download runs until it ends, as before).
        state = self._state
        current = state.target
        if self._cancel_download is None or state.phase is not Phase.DOWNLOADING:
            return False
        if current is None or state.retry_at is not None:
            return False
        verdict = judge(
            offer,
            last_seq=state.last_desired_seq,
            held=(state.target, state.pending),
            last_rejected=state.last_rejected_envelope,
            now=self._clock(),
        )
        return isinstance(verdict, Accepted) and verdict.target.sha256 != current.sha256

    def _loop(self) -> None:
        while True:
            try:
                event = self._queue.get(timeout=self._tick_s)
            except queue.Empty:
                event = Tick(now=self._clock())
            if event is None:
                if self._holding_gate:
                    self._release_gate()
                return
            try:
                self.handle(event)
            except Exception:
                # The state on disk is consistent (persisted before effects); keep serving.
                log.exception("update runner failed handling %s", event.kind)

    def _load_state(self) -> UpdateState:
        try:
            return UpdateState.model_validate_json(self._state_path.read_bytes())
        except FileNotFoundError:
            pass
        except (OSError, ValidationError) as e:
            log.error("update state %s is unreadable, starting fresh: %s", self._state_path, e)
        return UpdateState(active=self._model_ref(self._store.active()))

    def _model_ref(self, sha256: str | None) -> InstalledModel | None:
        if sha256 is None:
            return None
        try:
            manifest = self._store.manifest(sha256)
        except StoreError:
            return None
        return InstalledModel(name=manifest.name, version=manifest.version, sha256=sha256)

    def _artifact(self, sha256: str) -> Path:
        return self._downloads / f"{sha256}.efpkg"

    def _discard_download(self, sha256: str) -> None:
        # The downloader resumes from ``<artifact>.part`` (and its ``.part.etag``); a
        # failed or superseded update must not leave those behind to fill the disk.
        artifact = self._artifact(sha256)
        for path in (
            artifact,
            artifact.with_name(artifact.name + ".part"),
            artifact.with_name(artifact.name + ".part.etag"),
        ):
            path.unlink(missing_ok=True)

    def _take_gate(self, effect: Effect) -> None:
        if self._work_gate is None or self._holding_gate or not isinstance(effect, _HEAVY):
            return
        self._work_gate.acquire()
        self._holding_gate = True

    def _release_gate(self) -> None:
        if self._work_gate is not None:
            self._holding_gate = False
            self._work_gate.release()

    def _perform(self, effect: Effect) -> None:
        log.debug("effect %s", effect.kind)
        self._take_gate(effect)
        match effect:
            case Report():
                self._report(effect)
            case StartDownload(target=target):
                self._download(target)
            case Verify(target=target):
                self._verify(target)
            case Stage(target=target):
                self._stage(target)
            case Activate(target=target):
                self._activate(target)
            case RunGolden(target=target):
                self._run_golden(target)
            case RollBack(restore=restore):
                self._restore(restore)
            case EnsureActive(model=model):
                self._ensure_active(model)
            case Commit(model=model):
                self._artifact(model.sha256).unlink(missing_ok=True)
                removed = self._store.gc()
                log.debug("store gc removed %s", removed)
            case CollectGarbage():
                self._collect_garbage()
            case Cleanup(sha256=sha):
                self._discard_download(sha)
                if sha not in self._store.in_use():
                    self._store.remove(sha)

    def _collect_garbage(self) -> None:
        removed = self._store.gc()
        for leftover in self._downloads.glob("*.efpkg*"):
            leftover.unlink(missing_ok=True)
        if removed:
            log.info("removed %d model(s) a crash left in the store", len(removed))

    def _report(self, report: Report) -> None:
        if report.event is EventKind.REJECTED:
            log.warning("update rejected: %s", report.reason)
        try:
            self._sink.report(report)
        except Exception:
            log.exception("could not report %s", report.event)

    def _download(self, target: UpdateTarget) -> None:
        sha = target.sha256

        def progress(n: int) -> None:
            self.submit(DownloadProgress(sha256=sha, downloaded_bytes=n))

        try:
            self._downloader.download(target, self._artifact(sha), progress)
        except (TransportError, OSError) as e:
            self._download_failed(sha, transient=True, reason=str(e))
        except UpdateRejected as e:
            self._download_failed(sha, transient=False, reason=str(e))
        else:
            self.submit(DownloadDone(sha256=sha))

    def _download_failed(self, sha256: str, *, transient: bool, reason: str) -> None:
        jitter = self._rng.random()
        self.submit(
            DownloadFailed(sha256=sha256, transient=transient, reason=reason, jitter=jitter)
        )

    def _verify(self, target: UpdateTarget) -> None:
        try:
            self._verifier.verify(target, self._artifact(target.sha256))
        except (UpdateRejected, OSError) as e:
            self.submit(VerifyFailed(sha256=target.sha256, reason=str(e)))
        else:
            self.submit(Verified(sha256=target.sha256))

    def _stage(self, target: UpdateTarget) -> None:
        artifact = self._artifact(target.sha256)
        try:
            self._store.stage(target.sha256, lambda d: self._extractor.extract(artifact, d))
            manifest = self._store.manifest(target.sha256)
        except (StoreError, UpdateRejected, OSError) as e:
            self.submit(StageFailed(sha256=target.sha256, reason=str(e)))
            return
        budget = Budget.model_validate(manifest.probation.model_dump())
        self.submit(Staged(sha256=target.sha256, budget=budget))

    def _activate(self, target: UpdateTarget) -> None:
        try:
            self._store.activate(target.sha256)
            self._activator.load(self._store.path(target.sha256))
        except Exception as e:
            self.submit(ActivationFailed(sha256=target.sha256, reason=str(e)))
        else:
            self.submit(Activated(sha256=target.sha256))

    def _run_golden(self, target: UpdateTarget) -> None:
        try:
            outcome = self._golden.check(self._store.path(target.sha256))
        except Exception as e:
            outcome = GoldenOutcome(passed=False, detail=f"golden check raised: {e}")
        self.submit(
            GoldenResult(sha256=target.sha256, passed=outcome.passed, detail=outcome.detail)
        )

    def _restore(self, model: InstalledModel | None) -> None:
        sha = model.sha256 if model else None
        try:
            self._store.ensure_active(sha)
            self._activator.load(self._store.path(sha) if sha else None)
        except Exception:
            # Nothing better to fall back to; recover() at the next start re-checks.
            log.exception("could not restore model %s", sha)

    def _ensure_active(self, model: InstalledModel | None) -> None:
        sha = model.sha256 if model else None
        try:
            self._store.ensure_active(sha)
            self._activator.load(self._store.path(sha) if sha else None)
        except Exception as e:
            if self._state.phase is Phase.PROBATION and sha is not None:
                self.submit(ActivationFailed(sha256=sha, reason=str(e)))
            else:
                log.exception("could not load model %s at startup", sha)
