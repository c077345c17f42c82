"""The update runner's ports: the interfaces through which it reaches the world.

`edgefleet.agent.update.runner` depends on these protocols only; the real implementations
(TUF, HTTP, packages, runtimes, the outbox) are in `edgefleet.agent.update.adapters`, and
tests plug in fakes of these same interfaces.

Each port converts the errors of whatever it wraps at its boundary: `UpdateRejected`
means the peer sent bad data (do not retry), `TransportError` that the network failed
(retry later).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgefleet.shared.messages import EventKind, ModelRef
from edgefleet.shared.runtime import ModelRuntime, RuntimeOptions

if TYPE_CHECKING:  # the event models load with the update machine, not on every device
    from edgefleet.agent.update.types import Report, UpdateTarget


class Downloader(Protocol):
    def download(self, target: UpdateTarget, dest: Path, progress: Callable[[int], None]) -> None:
        """Write the target's artifact to ``dest``, continuing a partial one.

        A partial download resumes from what is already on disk (``<dest>.part``), so a
        retry or a new process need not say where it stopped.

        Raises `TransportError` when the network failed (retried later) and
        `UpdateRejected` when the peer sent bad data (too long, wrong hash).
        """
        ...


class Verifier(Protocol):
    def verify(self, target: UpdateTarget, artifact: Path) -> None:
        """Check the downloaded artifact against the signed target.

        (Whether the target may replace the active model at all, the downgrade rule, is
        decided before anything is downloaded: `edgefleet.agent.update.acceptance`.)

        Raises `UpdateRejected`.
        """
        ...


class PackageExtractor(Protocol):
    def extract(self, artifact: Path, dest: Path) -> None:
        """Unpack a verified package into the empty directory ``dest``.

        Raises `UpdateRejected` for a malformed package, `OSError`.
        """
        ...


class ModelActivator(Protocol):
    def load(self, model_dir: Path | None) -> None:
        """Swap the model that serves inferences (None: serve none). Raises on failure."""
        ...


@dataclass(frozen=True)
class GoldenOutcome:
    passed: bool
    detail: str = ""


class GoldenChecker(Protocol):
    def check(self, model_dir: Path) -> GoldenOutcome:
        """Run the package's golden samples through the loaded model."""
        ...


class EventSink(Protocol):
    def report(self, report: Report) -> None:
        """Send a deployment event to the fleet (through the outbox)."""
        ...


class WorkGate(Protocol):
    """Limits how many runners work at once (a `threading.Semaphore` is one)."""

    def acquire(self) -> bool: ...

    def release(self) -> None: ...


class RuntimeLoader(Protocol):
    """Loads a model file into a runtime: `edgefleet.shared.runtime.load_runtime` or a
    wrapper of it.

    The seam through which a simulator injects faults into a real agent (perturbed
    outputs, slow inference, a load that fails); it must raise `RuntimeLoadError` for a
    model it cannot load, like `load_runtime`.
    """

    def __call__(
        self, path: Path, *, runtime: str | None = None, options: RuntimeOptions | None = None
    ) -> ModelRuntime: ...


class EventPublisher(Protocol):
    """What the event sink needs of `edgefleet.agent.daemon.Agent`."""

    def publish_event(
        self,
        kind: EventKind,
        *,
        model: ModelRef | None = None,
        desired_seq: int | None = None,
        rollout_id: str | None = None,
        reason: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int | None: ...
