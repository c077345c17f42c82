"""The update runner's ports, implemented for real: TUF, HTTP, packages, runtimes, events.

Each class implements one protocol of `edgefleet.agent.update.ports` and converts the
errors of the library it wraps into `UpdateRejected` (bad data: do not retry) or
`TransportError` (the network failed: retry later) at its boundary.

Invariants:
- nothing is downloaded before the director's claim (name, sha256, length) matched the
  image repository's freshly refreshed, TUF-verified targets (mix-and-match), and the
  download is capped at that length and at ``max_download_bytes``;
- an artifact is verified again after download, against the director's target *and*
  the TUF targets, and refused if its manifest carries another version than the signed
  one (whether the version may replace the active model was decided before the
  download: `edgefleet.agent.update.acceptance`);
- a model is swapped in only once its runtime loaded; the old runtime is closed only
  after the swap, and late enough that requests already running on it finish.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.agent.download import DEFAULT_DEADLINE_S, DownloadAbort, RequestAuth, download
from edgefleet.agent.model_host import ActiveModel, ModelHost
from edgefleet.agent.update.ports import EventPublisher, GoldenOutcome, RuntimeLoader
from edgefleet.agent.update.types import Report, UpdateTarget
from edgefleet.shared.hashing import digest_file
from edgefleet.shared.manifest import MANIFEST_FILE, ModelManifest, name_of_target
from edgefleet.shared.messages import ModelRef
from edgefleet.shared.package.format import DataError, PackageError
from edgefleet.shared.package.golden import check_golden
from edgefleet.shared.package.read import extract_package, read_package_manifest
from edgefleet.shared.runtime import RuntimeLoadError, RuntimeOptions, load_runtime
from edgefleet.shared.signing.errors import (
    DigestMismatch,
    LengthMismatch,
    Malformed,
    TransportError,
    TufError,
)

if TYPE_CHECKING:
    # Types only: `edgefleet.agent.trust` imports python-tuf and urllib3, which the agent
    # loads with its first update (`edgefleet.agent.update.wiring`), not at start.
    from edgefleet.agent.trust import TargetInfo, TrustedRepository

log = logging.getLogger(__name__)

DEFAULT_CLOSE_GRACE_S = 5.0


class TufDownloader:
    """Downloader: refresh TUF, match the director's claim, then fetch with Range resume."""

    def __init__(
        self,
        repository: TrustedRepository,
        *,
        max_download_bytes: int,
        headers: Mapping[str, str] | None = None,
        auth: RequestAuth | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = 30.0,
        deadline_s: float = DEFAULT_DEADLINE_S,
    ) -> None:
        """``headers`` go with every artifact request, ``auth`` adds each one's
        credentials, ``ssl_context`` verifies an https repository."""
        self._repository = repository
        self._max_bytes = max_download_bytes
        self._headers = dict(headers or {})
        self._auth = auth
        self._ssl_context = ssl_context
        self._timeout_s = timeout_s
        self._deadline_s = deadline_s
        self._lock = threading.Lock()
        self._abort: DownloadAbort | None = None

    def cancel(self, reason: str) -> None:
        """Make the download in progress, if any, raise `TransportError` now (any thread)."""
        with self._lock:
            abort = self._abort
        if abort is not None:
            abort.abort(reason)

    def download(self, target: UpdateTarget, dest: Path, progress: Callable[[int], None]) -> None:
        """Fetch ``target``'s artifact into ``dest`` (resuming ``dest.part``).

        Raises `TargetNotFound`, `DigestMismatch`, `LengthMismatch` (director and TUF
        disagree, the artifact is larger than ``max_download_bytes``, or the server sent
        other or more bytes), `Expired`/`TufError` (bad TUF metadata), `TransportError`.
        """
        if target.length > self._max_bytes:
            raise LengthMismatch(
                f"target {target.name} {target.version} is {target.length} bytes, "
                f"this device downloads at most {self._max_bytes}"
            )
        abort = DownloadAbort()
        with self._lock:
            self._abort = abort
        try:
            self._repository.refresh()
            info = self._repository.verify_target_info(target.name, target.sha256, target.length)
            url = self._repository.target_url(info)
            log.debug("downloading %s", url)
            # A cancel during the refresh makes download() raise before it connects.
            result = download(
                url,
                dest,
                expected_sha256=target.sha256,
                expected_length=target.length,
                headers=self._headers,
                auth=self._auth,
                context=self._ssl_context,
                timeout_s=self._timeout_s,
                deadline_s=self._deadline_s,
                abort=abort,
            )
        finally:
            with self._lock:
                self._abort = None
        progress(result.length)


class ArtifactVerifier:
    """Verifier: re-hash the artifact, check it against the director's target and TUF."""

    def __init__(self, repository: TrustedRepository) -> None:
        self._repository = repository

    def verify(self, target: UpdateTarget, artifact: Path) -> None:
        """Raises `DigestMismatch`, `LengthMismatch`, `TargetNotFound`, `Malformed` (not a
        package, or its manifest has another version than the signed one), `TufError`.
        """
        found = digest_file(artifact)
        sha256, length = found.sha256, found.size
        if length != target.length:
            raise LengthMismatch(
                f"{artifact.name} is {length} bytes, the desired state says {target.length}"
            )
        if sha256 != target.sha256:
            raise DigestMismatch(
                f"{artifact.name} has sha256 {sha256}, the desired state says {target.sha256}"
            )
        info = self._tuf_info(target)
        if (info.sha256, info.length) != (sha256, length):
            raise DigestMismatch(
                f"{artifact.name} is {length} bytes with sha256 {sha256}, the signed targets "
                f"say {info.length} bytes with sha256 {info.sha256}"
            )
        try:
            # The bytes matched the signed hash above; staging checks every member's hash.
            manifest = read_package_manifest(artifact)
        except PackageError as e:
            raise Malformed(f"{target.name} {target.version} is not a valid package: {e}") from e
        if manifest.version != target.version:
            raise Malformed(
                f"the desired state names {target.name} version {target.version}, "
                f"the package's manifest says {manifest.name} {manifest.version}"
            )

    def _tuf_info(self, target: UpdateTarget) -> TargetInfo:
        try:
            return self._repository.verify_target_info(target.name, target.sha256, target.length)
        except TransportError as e:
            # Only after a restart in VERIFYING (the metadata of this process's download is
            # gone): the machine has no transient verify failure, and installing without
            # TUF's word is not an option, so the update fails visibly instead.
            raise TufError(f"cannot re-check {target.name} with the image repository: {e}") from e


class PackageUnpacker:
    """PackageExtractor: `extract_package`, with its errors as `Malformed`."""

    def extract(self, artifact: Path, dest: Path) -> None:
        """Raises `Malformed` for a package that does not verify, `OSError`."""
        try:
            extract_package(artifact, dest)
        except (PackageError, DigestMismatch) as e:
            raise Malformed(f"cannot extract {artifact.name}: {e}") from e


def read_manifest(model_dir: Path) -> ModelManifest:
    """The manifest of an extracted model directory; raises `Malformed`."""
    try:
        return ModelManifest.model_validate_json((model_dir / MANIFEST_FILE).read_bytes())
    except (OSError, ValueError) as e:
        raise Malformed(f"{model_dir / MANIFEST_FILE}: not a readable manifest: {e}") from e


def model_ref(model_dir: Path, manifest: ModelManifest) -> ModelRef:
    """How events and telemetry name the model in ``model_dir`` (a store directory)."""
    return ModelRef(name=manifest.name, version=manifest.version, sha256=model_dir.name)


class RuntimeActivator:
    """ModelActivator: load the model's runtime, swap it into the host, close the old one."""

    def __init__(
        self,
        host: ModelHost,
        options: RuntimeOptions,
        *,
        close_grace_s: float = DEFAULT_CLOSE_GRACE_S,
        loader: RuntimeLoader = load_runtime,
    ) -> None:
        self._host = host
        self._options = options
        self._close_grace_s = close_grace_s
        self._loader = loader

    def load(self, model_dir: Path | None) -> None:
        """Serve the model in ``model_dir`` (None: none). Idempotent for the active one.

        Raises `Malformed` (no manifest) or `RuntimeLoadError`; the model serving before
        keeps serving then.
        """
        if model_dir is None:
            self._retire(self._host.swap(None))
            return
        current = self._host.active
        if current is not None and current.ref.sha256 == model_dir.name:
            return
        manifest = read_manifest(model_dir)
        runtime = self._loader(
            model_dir / manifest.model_file, runtime=manifest.runtime, options=self._options
        )
        ref = model_ref(model_dir, manifest)
        old = self._host.swap(ActiveModel(runtime=runtime, ref=ref))
        log.info("serving %s %s (%s)", ref.name, ref.version, model_dir.name[:12])
        self._retire(old)

    def _retire(self, old: ActiveModel | None) -> None:
        if old is None:
            return
        # A request that read the old model just before the swap may still be running it.
        timer = threading.Timer(self._close_grace_s, old.runtime.close)
        timer.daemon = True
        timer.start()


class GoldenRunner:
    """GoldenChecker: the package's golden samples through the model that now serves."""

    def __init__(
        self, host: ModelHost, options: RuntimeOptions, *, loader: RuntimeLoader = load_runtime
    ) -> None:
        self._host = host
        self._options = options
        self._loader = loader

    def check(self, model_dir: Path) -> GoldenOutcome:
        """Never raises: an unreadable golden file or a model failure is a failed check."""
        try:
            manifest = read_manifest(model_dir)
        except Malformed as e:
            return GoldenOutcome(passed=False, detail=str(e))
        if manifest.golden is None:
            return GoldenOutcome(passed=True, detail="the package has no golden samples")
        active = self._host.active
        if active is not None and active.ref.sha256 == model_dir.name:
            runtime = active.runtime
        else:
            try:
                runtime = self._loader(
                    model_dir / manifest.model_file, runtime=manifest.runtime, options=self._options
                )
            except RuntimeLoadError as e:
                return GoldenOutcome(passed=False, detail=str(e))
        try:
            result = check_golden(
                runtime, model_dir / manifest.golden.file, manifest.golden.tolerance
            )
        except DataError as e:
            return GoldenOutcome(passed=False, detail=str(e))
        return GoldenOutcome(passed=result.passed, detail=result.summary())


class OutboxEventSink:
    """EventSink: each report becomes one QoS-1 event through the agent's outbox."""

    def __init__(self, publisher: EventPublisher) -> None:
        self._publisher = publisher

    def report(self, report: Report) -> None:
        target = report.target
        detail = dict(report.detail)
        if target is not None:
            # ``target.name`` is the TUF target; the event names the model by its
            # manifest name, read back from the target name before the package is here.
            model: ModelRef | None = ModelRef(
                name=name_of_target(target.name, target.version) or target.name,
                version=target.version,
                sha256=target.sha256,
                target=target.name,
            )
            desired_seq: int | None = target.desired_seq
            rollout_id = target.rollout_id
        else:
            model, rollout_id = None, None
            seq = detail.pop("desired_seq", None)
            desired_seq = seq if isinstance(seq, int) else None
        self._publisher.publish_event(
            report.event,
            model=model,
            desired_seq=desired_seq,
            rollout_id=rollout_id,
            reason=report.reason,
            detail=detail,
        )
