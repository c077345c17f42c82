"""The signed-update path of one agent: desired states in, a verified model serving out.

`UpdateService` owns the model store, the TUF client and the `UpdateRunner` with its real
ports (`edgefleet.agent.update.adapters`). The TUF client is made at the first download
and the director keys are parsed at the first desired state, so python-tuf, urllib3,
securesystemslib and cryptography (~13 MiB of RSS together) load with an update, not
when the agent starts (tests/agent/test_agent_imports.py).

The agent gives it the raw payloads of its ``desired`` topic (`on_desired`, called on
the MQTT link thread: it opens the envelope, which is fast, and only queues the result)
and each inference's outcome (`record_inference`).

Layout under the agent's ``data_dir``::

    store/              the two-slot model store (`edgefleet.agent.store`)
    downloads/          artifacts being downloaded (``<sha256>.efpkg.part``) or verified
    tuf/                the TUF metadata cache (the trust anchor stays in ``trust_dir``)
    update-state.json   the runner's persisted state

Invariants:
- a desired state reaches the runner only after `open_desired` checked its signature
  against the pinned director keys, its shape and this device's id; whether it is taken
  (seq, expiry, redelivery, downgrade) the runner's machine decides, with the state it
  persists (`edgefleet.agent.update.acceptance`); a refused one becomes one ``rejected``
  event and changes no model;
- at startup the store is recovered first (here, once: the runner relies on it), a fresh
  device installs its factory model (``model.path``) into the store, so a rollback always
  has a verified model to go back to, and the model the persisted state names is loaded
  before the runner resumes.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import ssl
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.credentials import DeviceCredentials, fleet_tls_context
from edgefleet.agent.download import RequestAuth
from edgefleet.agent.metrics import InferenceMetrics
from edgefleet.agent.model_host import ModelHost
from edgefleet.agent.store import ModelStore, StoreError
from edgefleet.agent.update.adapters import (
    ArtifactVerifier,
    GoldenRunner,
    OutboxEventSink,
    PackageUnpacker,
    RuntimeActivator,
    TufDownloader,
)
from edgefleet.agent.update.machine import UpdateState
from edgefleet.agent.update.ports import EventPublisher, RuntimeLoader, WorkGate
from edgefleet.agent.update.runner import UpdateRunner
from edgefleet.agent.update.types import DesiredReceived, DesiredRejected, UpdateTarget
from edgefleet.shared.hashing import digest_file, sha256_file
from edgefleet.shared.manifest import MANIFEST_FILE, ModelManifest, Version, VersionError
from edgefleet.shared.messages import utcnow
from edgefleet.shared.package.format import PACKAGE_SUFFIX, PackageError
from edgefleet.shared.package.read import extract_package
from edgefleet.shared.runtime import RuntimeLoadError, load_runtime
from edgefleet.shared.signing.bundle import (
    DIRECTOR_KEYS_FILE,
    TRUSTED_ROOT_FILE,
    director_keys,
    read_director_keys,
)
from edgefleet.shared.signing.director import DesiredBody, claimed_seq, open_desired
from edgefleet.shared.signing.errors import DigestMismatch, KeyFileError, TufError, UpdateRejected

if TYPE_CHECKING:
    from edgefleet.shared.signing.tufapi import SSlibKey

log = logging.getLogger(__name__)

STORE_DIR = "store"
DOWNLOADS_DIR = "downloads"
TUF_DIR = "tuf"
STATE_FILE = "update-state.json"
FACTORY_VERSION = "0.0.0"


class UpdateService:
    """Signed updates for one agent. Construct, `start`, then `stop` once."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        host: ModelHost,
        publisher: EventPublisher,
        clock: Callable[[], datetime] = utcnow,
        runtime_loader: RuntimeLoader = load_runtime,
        work_gate: WorkGate | None = None,
        credentials: DeviceCredentials | None = None,
    ) -> None:
        """Recover the store, install the factory model on a fresh device, load the state.

        ``runtime_loader`` loads every model the update path activates or golden-checks
        (`edgefleet.shared.runtime.load_runtime`; simulators wrap it to inject faults).
        ``work_gate``: see `UpdateRunner` (simulators only). With ``credentials`` (the
        device's identity in use) every repository request is signed with the device key
        and ``update.device_token`` is not sent; without, the token is, if configured.

        Raises `KeyFileError` if the director keys file cannot be read (a key in it that
        does not parse is found at the first desired state, which it rejects), `TufError`
        if the pinned root cannot, `OSError` if the data directory is not writable, ValueError
        if the config does not enable updates completely, `IdentityError` if a CA file
        for the repository's TLS cannot be read.
        """
        settings = config.update
        if settings.trust_dir is None or settings.repository_url is None:
            raise ValueError("update.trust_dir and update.repository_url must be set")
        self._device_id = config.device_id
        data = config.data_dir
        # The director keys file and the pinned root are checked here, so a broken
        # provisioning bundle fails the start; the keys are parsed and the TUF client is
        # made at the first desired state and the first download (see `_DeferredTuf`).
        self._keys_path = settings.trust_dir / DIRECTOR_KEYS_FILE
        self._key_dicts = read_director_keys(self._keys_path)
        self._keys_lock = threading.Lock()
        self._director_keys: dict[str, SSlibKey] | None = None
        root_path = settings.trust_dir / TRUSTED_ROOT_FILE
        try:
            root_path.read_bytes()
        except OSError as e:
            raise TufError(f"cannot read the pinned TUF root {root_path}: {e}") from e
        headers, auth, context = _repository_credentials(config, credentials)
        self.store = ModelStore(data / STORE_DIR)
        self.store.recover()
        state_path = data / STATE_FILE
        if self.store.active() is None and not state_path.exists():
            install_factory_model(self.store, config)
        options = config.model.runtime
        self._activator = RuntimeActivator(host, options, loader=runtime_loader)
        self._host = host

        def tuf_ports() -> tuple[TufDownloader, ArtifactVerifier]:
            from edgefleet.agent.trust import HeaderFetcher, TrustedRepository

            repository = TrustedRepository(
                data / TUF_DIR,
                root_path,
                settings.repository_url or "",
                HeaderFetcher(headers, auth=auth, ssl_context=context),
            )
            downloader = TufDownloader(
                repository,
                max_download_bytes=settings.max_download_bytes,
                headers=headers,
                auth=auth,
                ssl_context=context,
                timeout_s=settings.download_timeout_s,
                deadline_s=settings.download_deadline_s,
            )
            return downloader, ArtifactVerifier(repository)

        tuf = _DeferredTuf(tuf_ports)
        self.runner = UpdateRunner(
            state_path=state_path,
            store=self.store,
            downloads_dir=data / DOWNLOADS_DIR,
            downloader=tuf,
            verifier=tuf,
            extractor=PackageUnpacker(),
            activator=self._activator,
            golden=GoldenRunner(host, options, loader=runtime_loader),
            sink=OutboxEventSink(publisher),
            policy=settings.policy,
            clock=clock,
            tick_s=settings.tick_s,
            work_gate=work_gate,
            cancel_download=tuf.cancel,
        )

    @property
    def state(self) -> UpdateState:
        return self.runner.state

    def load_active(self) -> None:
        """Serve the model the persisted state says is active (before the runner resumes).

        Raises `StoreError`, `Malformed` or `RuntimeLoadError` if it cannot be loaded;
        the runner's resume then repairs or rolls back.
        """
        active = self.runner.state.active
        if active is not None and self.store.has(active.sha256):
            sha: str | None = active.sha256
        else:
            sha = self.store.active()
        if sha is not None:
            self._activator.load(self.store.path(sha))

    def start(self) -> None:
        self.runner.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self.runner.stop(timeout_s)

    def record_inference(self, ok: bool, latency_ms: float) -> None:
        """Feed one inference to probation; costs an attribute read outside probation."""
        self.runner.record_inference(ok, latency_ms)

    def _trusted_keys(self) -> dict[str, SSlibKey]:
        """The director keys, parsed at the first desired state (this imports
        securesystemslib and cryptography). Raises `KeyFileError` for a key that does not
        parse: every desired state is then rejected, saying so."""
        with self._keys_lock:
            if self._director_keys is None:
                self._director_keys = director_keys(self._keys_path, self._key_dicts)
            return self._director_keys

    def feed_probation(self, metrics: InferenceMetrics) -> None:
        """Make ``metrics`` tell `record_inference` about inferences during probation only.

        Outside probation the metrics have no observer, so an inference pays nothing for
        updates (two calls and a state read were a sixth of a TFLite tabular model's run).
        """
        observer = self.record_inference

        def watch(probation: bool) -> None:
            metrics.observer = observer if probation else None

        self.runner.watch_probation(watch)

    def on_desired(self, payload: bytes) -> None:
        """Open a payload of the ``desired`` topic and queue it (safe on the link thread).

        Never raises. Whether the desired state is taken, ignored as a redelivery or
        reported as rejected, the runner decides (`edgefleet.agent.update.acceptance`).
        """
        envelope_sha256 = hashlib.sha256(payload).hexdigest()
        try:
            body = open_desired(
                payload, trusted_director_keys=self._trusted_keys(), device_id=self._device_id
            )
        except (UpdateRejected, KeyFileError) as e:
            log.debug("desired state did not open: %s", e)
            rejected = DesiredRejected(
                reason=str(e), desired_seq=claimed_seq(payload), envelope_sha256=envelope_sha256
            )
            self.runner.submit(rejected)
            return
        log.debug("desired seq %s: %s %s", body.seq, body.target.name, body.target.version)
        self.runner.submit(
            DesiredReceived(
                target=update_target(body),
                expires_at=body.expires_at,
                envelope_sha256=envelope_sha256,
            )
        )


class _DeferredTuf:
    """The runner's downloader and verifier, made at their first use.

    ``make`` builds the TUF client and the two adapters on it; python-tuf and urllib3 are
    imported then, with the first update (or the resume of an interrupted one), not when
    the agent starts. A failure to build them (`TufError`: the pinned root became
    unreadable) fails that update as a bad download or verify would. Thread-safe.
    """

    def __init__(self, make: Callable[[], tuple[TufDownloader, ArtifactVerifier]]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._made: tuple[TufDownloader, ArtifactVerifier] | None = None

    def _ports(self) -> tuple[TufDownloader, ArtifactVerifier]:
        with self._lock:
            if self._made is None:
                self._made = self._make()
            return self._made

    def download(self, target: UpdateTarget, dest: Path, progress: Callable[[int], None]) -> None:
        """`TufDownloader.download`; raises what it raises."""
        self._ports()[0].download(target, dest, progress)

    def cancel(self, reason: str) -> None:
        """`TufDownloader.cancel`; before the first download there is none to cancel."""
        with self._lock:
            made = self._made
        if made is not None:
            made[0].cancel(reason)

    def verify(self, target: UpdateTarget, artifact: Path) -> None:
        """`ArtifactVerifier.verify`; raises what it raises."""
        self._ports()[1].verify(target, artifact)


def _repository_credentials(
    config: AgentConfig, credentials: DeviceCredentials | None
) -> tuple[dict[str, str], RequestAuth | None, ssl.SSLContext | None]:
    """Fixed headers, per-request credentials and the TLS context for the repository."""
    token = config.update.device_token
    if credentials is not None:
        if token is not None:
            log.info("the device signs its repository requests; update.device_token is not sent")
        return {}, credentials.authorization, credentials.tls_context(config.fleet_ca_file)
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
    context = fleet_tls_context(None, config.fleet_ca_file) if config.fleet_ca_file else None
    return headers, None, context


def update_target(body: DesiredBody) -> UpdateTarget:
    """The runner's view of the target of a desired state whose envelope opened."""
    return UpdateTarget(
        desired_seq=body.seq,
        name=body.target.name,
        version=body.target.version,
        sha256=body.target.sha256,
        length=body.target.length,
        rollout_id=body.rollout_id,
        rollback=body.rollback,
    )


def install_factory_model(store: ModelStore, config: AgentConfig) -> str | None:
    """Put the configured factory model into an empty store and make it active.

    ``model.path`` may be a model package (``.efpkg``, stored under its own sha256) or
    a bare ``.onnx``/``.tflite`` file, for which a manifest is written (stored under the
    model file's sha256; version ``model.version`` if it is semver, else 0.0.0, so any
    signed update counts as an upgrade). Returns the stored sha256, or None when there is
    no factory model or it cannot be installed (logged: the device waits for an update).
    """
    path = config.model.path
    if path is None:
        return None
    try:
        sha256 = activate_factory_model(store, path, config)
    except (StoreError, PackageError, DigestMismatch, RuntimeLoadError, OSError, ValueError) as e:
        log.error("cannot install the factory model %s: %s", path, e)
        return None
    log.info("installed factory model %s as %s", path, sha256[:12])
    return sha256


def activate_factory_model(store: ModelStore, path: Path, config: AgentConfig) -> str:
    """Stage the factory model ``path`` (unless stored already) and make it active.

    Returns its sha256 (see `install_factory_model`). Raises `StoreError`,
    `PackageError` or `DigestMismatch` (a package that does not verify),
    `RuntimeLoadError` (a bare model file its runtime cannot load), `ValueError` (no
    valid manifest can be made for a bare model file), `OSError`.
    """
    sha256 = sha256_file(path)
    if path.suffix == PACKAGE_SUFFIX:
        store.stage(sha256, lambda d: _extract(path, d))
    else:
        manifest = _factory_manifest(path, config)
        store.stage(sha256, lambda d: _fill_bare(path, manifest, d))
    store.activate(sha256)
    return sha256


def _extract(package: Path, dest: Path) -> None:
    extract_package(package, dest)


def _factory_manifest(path: Path, config: AgentConfig) -> ModelManifest:
    runtime = load_runtime(path, options=config.model.runtime)
    try:
        inputs, outputs = list(runtime.inputs), list(runtime.outputs)
    finally:
        runtime.close()
    try:
        version = str(Version.parse(config.model.version))
    except VersionError:
        version = FACTORY_VERSION
    digest = digest_file(path)
    return ModelManifest(
        name=config.model.name,
        version=version,
        runtime=runtime.runtime,  # type: ignore[arg-type]  # "onnx" or "tflite"
        model_file=f"model{path.suffix.lower()}",
        inputs=inputs,
        outputs=outputs,
        sha256=digest.sha256,
        size_bytes=digest.size,
        created_at=datetime.fromtimestamp(path.stat().st_mtime, UTC),
    )


def _fill_bare(path: Path, manifest: ModelManifest, dest: Path) -> None:
    shutil.copyfile(path, dest / manifest.model_file)
    (dest / MANIFEST_FILE).write_bytes(manifest.model_dump_json(by_alias=True).encode())
