"""The agent: outbox, link, model host, metrics, telemetry, drift and the local API in one object.

`Agent` holds no global state and installs no signal handlers, so a simulator can run
hundreds of them in one process. `run_forever` is the service shell around one agent:
signals, sd_notify and the exit code.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.credentials import DeviceCredentials, broker_with_identity, load_credentials
from edgefleet.agent.drift_monitor import DriftMonitor
from edgefleet.agent.drift_publisher import DriftPublisher
from edgefleet.agent.link import DesiredHandler, Link
from edgefleet.agent.metrics import InferenceMetrics
from edgefleet.agent.model_host import ActiveModel, ModelHost
from edgefleet.agent.outbox import Outbox
from edgefleet.agent.process_stats import memory_total_bytes
from edgefleet.agent.store import ModelStore, StoreError
from edgefleet.agent.systemd import SystemdNotifier
from edgefleet.agent.telemetry import TelemetryCollector
from edgefleet.agent.update.ports import RuntimeLoader, WorkGate
from edgefleet.shared import __version__
from edgefleet.shared.drift import ReferenceProfile
from edgefleet.shared.manifest import MANIFEST_FILE, ModelManifest
from edgefleet.shared.messages import (
    DeviceMessageBase,
    EventKind,
    EventMessage,
    ModelRef,
    PlatformInfo,
    StateMessage,
    encode,
)
from edgefleet.shared.package.format import PACKAGE_SUFFIX, PackageError
from edgefleet.shared.runtime import RuntimeLoadError, load_runtime
from edgefleet.shared.signing.errors import DigestMismatch
from edgefleet.shared.topics import Channel, device_topic

if TYPE_CHECKING:
    # Imported where used: the update path (TUF, securesystemslib, urllib3, the
    # downloader) only with updates enabled, the renewer (cryptography) only with an
    # identity, the local API (http.server, the feedback store, the metrics exposition)
    # only with [api] enabled; see tests/benchmarks/agent_footprint.py for what each costs.
    from edgefleet.agent.inference_api import InferenceApi
    from edgefleet.agent.renewal import Renewer
    from edgefleet.agent.update.wiring import UpdateService

log = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.sqlite3"


class AgentStatus(BaseModel):
    """A snapshot of one agent, for the CLI, the health endpoint and simulators."""

    model_config = ConfigDict(frozen=True)

    device_id: str
    connected: bool
    outbox_depth: int
    outbox_dropped_total: int
    active_model: ModelRef | None
    uptime_s: float
    api_port: int | None


def available_runtimes() -> list[str]:
    """The model runtimes importable here, as the birth message reports them."""
    found = ["onnx"] if importlib.util.find_spec("onnxruntime") else []
    if importlib.util.find_spec("ai_edge_litert") or importlib.util.find_spec("tflite_runtime"):
        found.append("tflite")
    return found


def _platform_info() -> PlatformInfo:
    return PlatformInfo(
        machine=platform.machine(),
        system=platform.system(),
        python=platform.python_version(),
        cpu_count=os.cpu_count() or 0,
        memory_bytes=memory_total_bytes(),
    )


# After these events the active model changed (or was confirmed): the birth state says so.
_MODEL_CHANGED = frozenset({EventKind.COMMITTED, EventKind.ROLLED_BACK})


class Agent:
    """One device's agent. `start` once, then `stop` once; not restartable.

    ``runtime_loader`` loads every model the agent serves (default
    `edgefleet.shared.runtime.load_runtime`); a simulator passes a wrapper to inject faults.
    ``update_gate`` is the update runner's ``work_gate``
    (`edgefleet.agent.update.runner.UpdateRunner`): a simulator shares one among the agents
    of a process; a device passes nothing.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        on_desired: DesiredHandler | None = None,
        runtime_loader: RuntimeLoader = load_runtime,
        update_gate: WorkGate | None = None,
    ) -> None:
        self.config = config
        self._runtime_loader = runtime_loader
        self._update_gate = update_gate
        self.metrics = InferenceMetrics()
        self.drift = DriftPublisher(
            device_id=config.device_id, config=config.drift, enqueue=self.enqueue
        )
        self.model_host = ModelHost(
            self.metrics, drift=self._drift_monitor_for, on_retired=self.drift.retired
        )
        # `ModelHost.infer` itself, not a method that calls it: one call less per
        # inference. It runs the active model; see there for what it raises.
        # ``request_ids`` (one per row) let `record_label` join late labels. The drift
        # monitor keeps the input arrays until its timer folds them: do not write into
        # them after the call.
        self.infer = self.model_host.infer
        self._on_desired = on_desired
        self._updates: UpdateService | None = None
        self._store: ModelStore | None = None  # without updates: the factory package's
        self._stop = threading.Event()
        self._started_at = time.monotonic()
        self._runtimes = available_runtimes()
        self._platform = _platform_info()
        self._outbox: Outbox | None = None
        self._link: Link | None = None
        self._api: InferenceApi | None = None
        self._telemetry_thread: threading.Thread | None = None
        self._drift_thread: threading.Thread | None = None
        self._credentials: DeviceCredentials | None = None
        self._renewer: Renewer | None = None

    @property
    def device_id(self) -> str:
        return self.config.device_id

    @property
    def outbox(self) -> Outbox:
        """The outbox; raises RuntimeError before `start`."""
        if self._outbox is None:
            raise RuntimeError(f"agent {self.device_id} is not started")
        return self._outbox

    @property
    def updates(self) -> UpdateService | None:
        """The signed-update service, when ``update.enabled`` (after `start`)."""
        return self._updates

    @property
    def api_port(self) -> int | None:
        """The port the inference API listens on, or None when it is disabled."""
        return self._api.port if self._api else None

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.connected

    @property
    def link(self) -> Link | None:
        """The broker link (after `start`)."""
        return self._link

    @property
    def credentials(self) -> DeviceCredentials | None:
        """The device identity in use (after `start`), or None."""
        return self._credentials

    @property
    def renewer(self) -> Renewer | None:
        """The certificate renewal timer, when the identity is in use with a fleet URL."""
        return self._renewer

    @property
    def status(self) -> AgentStatus:
        active = self.model_host.active
        return AgentStatus(
            device_id=self.device_id,
            connected=self.connected,
            outbox_depth=self._outbox.depth if self._outbox else 0,
            outbox_dropped_total=self._outbox.dropped_total if self._outbox else 0,
            active_model=active.ref if active else None,
            uptime_s=time.monotonic() - self._started_at,
            api_port=self.api_port,
        )

    def start(self) -> None:
        """Open the outbox, load the model, bind the API, start the threads.

        With updates enabled the model comes from the model store (a fresh device first
        installs ``model.path`` there as its factory model) and the update runner resumes
        whatever update a stop or a crash interrupted; otherwise ``model.path`` is served:
        a package is first installed and activated in the same model store
        (`edgefleet.agent.store`, under ``data_dir/store``), a bare model file as it is.

        With the device identity in use (`edgefleet.agent.credentials.load_credentials`)
        the link speaks mTLS with the device certificate over ``mqtts://``, repository
        requests are signed with the device key, and a timer renews the certificate
        (`edgefleet.agent.renewal`) and reconnects the link with the new one.

        Returns at once; the link connects in the background. Raises `IdentityError`
        for an identity required but missing or unreadable, `OutboxError` if the outbox
        cannot be opened, OSError if the API port cannot be bound, and
        `KeyFileError`/`TufError` if the provisioning bundle cannot be read. A model that
        fails to load is reported (log and a ``failed`` event), not raised, so the
        device can still receive an update.
        """
        config = self.config
        self._started_at = time.monotonic()
        credentials = self._credentials = load_credentials(config)
        broker = config.broker
        if credentials is not None:
            broker = broker_with_identity(broker, credentials)
            log.info(
                "agent %s uses its identity (certificate until %s)",
                self.device_id,
                credentials.not_after,
            )
        self._outbox = Outbox(
            config.data_dir / OUTBOX_FILE,
            max_messages=config.outbox.max_messages,
            max_db_bytes=config.outbox.max_db_bytes,
            synchronous=config.outbox.synchronous,
        )
        on_desired = self._on_desired
        if config.update.enabled:
            updates = self._start_updates()
            on_desired = _both(updates.on_desired, self._on_desired)
        else:
            self._load_initial_model()
        if config.api.enabled:
            from edgefleet.agent.inference_api import InferenceApi

            self._api = InferenceApi(
                self.model_host,
                bind_host=config.api.host,
                port=config.api.port,
                max_body_bytes=config.api.max_body_bytes,
                health=self._health,
                metrics=self._metrics_text,
                name=f"edgefleet-api-{self.device_id}",
                unix_socket=config.api.unix_socket,
            )
        self._link = Link(
            config=broker,
            device_id=self.device_id,
            outbox=self._outbox,
            state=self._state_message,
            on_desired=on_desired,
            delivery=config.outbox.delivery_policy(),
        )
        collector = TelemetryCollector(
            device_id=self.device_id,
            metrics=self.metrics,
            outbox=self._outbox,
            data_dir=config.data_dir,
            active_model=self._active_ref,
        )
        self._telemetry_thread = threading.Thread(
            target=self._telemetry_loop,
            args=(collector,),
            name=f"edgefleet-telemetry-{self.device_id}",
            daemon=True,
        )
        self._drift_thread = threading.Thread(
            target=self.drift.run,
            args=(self.model_host, self._stop),
            name=f"edgefleet-drift-{self.device_id}",
            daemon=True,
        )
        if self._api:
            self._api.start()
        if self._updates:
            self._updates.start()
        self._link.start()
        self._start_renewer(credentials)
        self._telemetry_thread.start()
        self._drift_thread.start()
        log.info("agent %s started", self.device_id)

    def _start_renewer(self, credentials: DeviceCredentials | None) -> None:
        if credentials is None:
            return
        fleet_url = self.config.fleet_url
        if fleet_url is None:
            log.warning(
                "agent %s: no identity.fleet_url (nor update.repository_url): its certificate"
                " is not renewed before it expires on %s",
                self.device_id,
                credentials.not_after,
            )
            return
        link = self._link
        assert link is not None

        def reconnect(_renewed: object) -> None:
            link.reconnect()

        from edgefleet.agent.renewal import Renewer

        self._renewer = Renewer(
            credentials=credentials,
            fleet_url=fleet_url,
            config=self.config.identity,
            ssl_context=credentials.tls_context(self.config.fleet_ca_file),
            on_renewed=reconnect,
            name=f"edgefleet-renew-{self.device_id}",
        )
        self._renewer.start()

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Stop serving, publish ``online: false``, flush the outbox (bounded), close.

        The open drift window is closed and queued first, so it is flushed with the rest.
        Returns True if the offline state and the whole outbox reached the broker.
        """
        self._stop.set()
        if self._renewer:
            self._renewer.stop(timeout_s)
        if self._api:
            self._api.stop()
        if self._updates:
            # Before the link, so the events of the step in hand still get flushed.
            self._updates.stop(timeout_s)
        if self._drift_thread and self._drift_thread.is_alive():
            self._drift_thread.join(timeout_s)
        if self._outbox:
            self.model_host.retire_drift()
        flushed = self._link.stop(timeout_s) if self._link else False
        if self._telemetry_thread and self._telemetry_thread.is_alive():
            self._telemetry_thread.join(1.0)
        if self._outbox:
            telemetry = self._telemetry_thread
            if (self._link is not None and self._link.alive) or (
                telemetry is not None and telemetry.is_alive()
            ):
                # A thread that outlived its timeout may still write: leave the outbox
                # open (everything in it is committed) rather than pull it from under it.
                log.warning(
                    "agent %s: threads still running at stop; outbox left open", self.device_id
                )
            else:
                self._outbox.close()
        log.info("agent %s stopped (flushed: %s)", self.device_id, flushed)
        return flushed

    def healthy(self) -> bool:
        """True while every background thread runs (gates the systemd watchdog)."""
        threads = (self._telemetry_thread, self._drift_thread)
        link_alive = self._link is not None and self._link.alive
        return link_alive and all(t is not None and t.is_alive() for t in threads)

    def record_label(self, request_id: str, label: object) -> bool:
        """Join a late label to an earlier prediction; False when it cannot be joined.

        False when the active model is not monitored, its profile has no label spec,
        or ``request_id`` is unknown or forgotten (see ``drift.label_memory``).
        """
        monitor = self.model_host.drift_monitor
        return monitor is not None and monitor.record_label(request_id, label)

    def enqueue(self, channel: Channel, build: Callable[[int], DeviceMessageBase]) -> int | None:
        """Store ``build(seq)`` in the outbox for ``channel`` and wake the link.

        Returns the seq, or None if the outbox could not store it (counted as dropped).
        """
        seq = self.outbox.enqueue(
            device_topic(self.device_id, channel), channel.value, lambda s: encode(build(s))
        )
        if self._link:
            self._link.wake()
        return seq

    def publish_event(
        self,
        kind: EventKind,
        *,
        model: ModelRef | None = None,
        desired_seq: int | None = None,
        rollout_id: str | None = None,
        reason: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int | None:
        """Queue one deployment event at QoS 1; returns its seq (None if not stored).

        After ``committed`` or ``rolled_back`` the link also publishes a fresh retained
        birth state, so the fleet's registry shows the active model without a reconnect.
        """
        seq = self.enqueue(
            Channel.EVENTS,
            lambda seq: EventMessage(
                device_id=self.device_id,
                seq=seq,
                kind=kind,
                model=model,
                desired_seq=desired_seq,
                rollout_id=rollout_id,
                reason=reason,
                detail=detail or {},
            ),
        )
        if kind in _MODEL_CHANGED and self._link is not None:
            self._link.refresh_state()
        return seq

    def _start_updates(self) -> UpdateService:
        from edgefleet.agent.update.wiring import UpdateService

        updates = UpdateService(
            self.config,
            host=self.model_host,
            publisher=self,
            runtime_loader=self._runtime_loader,
            work_gate=self._update_gate,
            credentials=self._credentials,
        )
        self._updates = updates
        updates.feed_probation(self.metrics)
        try:
            updates.load_active()
        except Exception as e:  # StoreError, Malformed, RuntimeLoadError: resume repairs it
            log.error("agent %s: the active model did not load: %s", self.device_id, e)
            self.publish_event(EventKind.FAILED, reason=f"active model did not load: {e}")
        return updates

    def _load_initial_model(self) -> None:
        model = self.config.model
        if model.path is None:
            return
        try:
            if model.path.suffix == PACKAGE_SUFFIX:
                store, sha256 = self._install_package(model.path)
                manifest = store.manifest(sha256)
                path = store.path(sha256) / manifest.model_file
                runtime_name: str | None = manifest.runtime
                ref = ModelRef(name=manifest.name, version=manifest.version, sha256=sha256)
            else:
                path, runtime_name = model.path, None
                ref = ModelRef(name=model.name, version=model.version)
            runtime = self._runtime_loader(path, runtime=runtime_name, options=model.runtime)
        except (
            RuntimeLoadError,
            PackageError,
            DigestMismatch,
            StoreError,
            OSError,
            ValueError,
        ) as e:
            log.error("agent %s serves no model: %s", self.device_id, e)
            self.publish_event(EventKind.FAILED, reason=f"initial model did not load: {e}")
            return
        self.model_host.swap(ActiveModel(runtime=runtime, ref=ref))
        log.info("agent %s serves %s %s (%s)", self.device_id, ref.name, ref.version, model.path)

    def _install_package(self, package: Path) -> tuple[ModelStore, str]:
        """Install and activate a packaged ``model.path`` in the model store.

        Returns the store and the package's sha256, the model's address in it. It is the
        same content-addressed store the update path uses, so a factory package is
        verified, extracted and activated crash-safely even with updates disabled (see
        the invariants of `edgefleet.agent.store`). Runs `ModelStore.recover` first, as
        every start must. Raises `PackageError` or `DigestMismatch` for a bad package,
        `StoreError` if it does not verify once extracted, OSError.
        """
        from edgefleet.agent.update.wiring import STORE_DIR, activate_factory_model

        store = self._store = ModelStore(self.config.data_dir / STORE_DIR)
        store.recover()
        return store, activate_factory_model(store, package, self.config)

    def _model_dir(self, ref: ModelRef) -> Path | None:
        store = self._updates.store if self._updates is not None else self._store
        if ref.sha256 is None or store is None:
            return None
        return store.path(ref.sha256)

    def _drift_monitor_for(self, model: ActiveModel) -> DriftMonitor | None:
        """The drift monitor for a model about to serve, from its package's profile.

        Raises OSError or ValueError if the manifest or its profile cannot be read
        (`ModelHost` logs it and serves the model unmonitored).
        """
        if not self.config.drift.enabled:
            return None
        model_dir = self._model_dir(model.ref)
        if model_dir is None or not (model_dir / MANIFEST_FILE).is_file():
            return None
        stored = _read_manifest(model_dir).reference_profile
        if stored is None:
            return None
        try:
            profile = ReferenceProfile.model_validate(stored)
        except ValidationError as e:
            raise ValueError(f"{model_dir / MANIFEST_FILE}: bad reference profile: {e}") from e
        log.info(
            "agent %s monitors %s %s for drift", self.device_id, model.ref.name, model.ref.version
        )
        return self.drift.monitor_for(profile)

    def _active_ref(self) -> ModelRef | None:
        active = self.model_host.active
        return active.ref if active else None

    def _state_message(self, seq: int, online: bool, reason: str | None) -> StateMessage:
        return StateMessage(
            device_id=self.device_id,
            seq=seq,
            online=online,
            agent_version=__version__,
            hardware=self.config.hardware,
            platform=self._platform,
            tags=list(self.config.tags),
            runtimes=self._runtimes,
            active_model=self._active_ref(),
            reason=reason,
        )

    def _health(self) -> dict[str, Any]:
        status = self.status
        return {
            "status": "ok",
            "device_id": status.device_id,
            "model_loaded": status.active_model is not None,
            "model": status.active_model.model_dump() if status.active_model else None,
            "connected": status.connected,
            "outbox_depth": status.outbox_depth,
        }

    def _metrics_text(self) -> bytes:
        """``GET /metrics``: this agent's counters, read now (see `edgefleet.agent.exposition`)."""
        from edgefleet.agent.exposition import AgentSample, families, render  # with the API

        status = self.status
        inferences, errors = self.metrics.totals()
        last = self.metrics.last_interval
        updates = self._updates
        return render(
            families(
                AgentSample(
                    inferences_total=inferences,
                    errors_total=errors,
                    latency=last.latency if last else None,
                    outbox_depth=status.outbox_depth,
                    outbox_dropped_total=status.outbox_dropped_total,
                    drift_windows_total=self.drift.published,
                    connected=status.connected,
                    uptime_s=status.uptime_s,
                    active_model=status.active_model,
                    update_phase=updates.state.phase if updates is not None else None,
                )
            )
        )

    def _telemetry_loop(self, collector: TelemetryCollector) -> None:
        while not self._stop.wait(self.config.telemetry_interval_s):
            try:
                self.enqueue(Channel.TELEMETRY, collector.collect)
            except Exception:
                # Telemetry must never take the agent down; the next interval tries again.
                log.exception("agent %s: telemetry failed", self.device_id)


def _read_manifest(model_dir: Path) -> ModelManifest:
    """The manifest of an extracted model; raises OSError or ValueError (pydantic's)."""
    return ModelManifest.model_validate_json((model_dir / MANIFEST_FILE).read_bytes())


def _both(first: DesiredHandler, second: DesiredHandler | None) -> DesiredHandler:
    if second is None:
        return first

    def handler(payload: bytes) -> None:
        first(payload)
        second(payload)

    return handler


def run_forever(
    config: AgentConfig,
    *,
    env: Mapping[str, str] | None = None,
    stop_timeout_s: float = 10.0,
) -> int:
    """Run one agent as a service until SIGTERM or SIGINT; returns the exit code.

    Sends READY=1 once started, WATCHDOG=1 at half of WATCHDOG_USEC while every
    background thread is alive, and STOPPING=1 on a signal. Returns 0 after a clean
    stop, 1 if the agent could not start.
    """
    notifier = SystemdNotifier(env)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent = Agent(config)
    try:
        agent.start()
    except Exception as e:  # OutboxError, OSError binding the API: both fatal at start
        log.error("agent %s cannot start: %s", config.device_id, e)
        return 1
    port = agent.api_port
    notifier.ready(f"serving on port {port}" if port else "running")
    watchdog_s = notifier.watchdog_interval_s()
    next_watchdog = time.monotonic()
    while not stop.wait(min(watchdog_s or 1.0, 1.0)):
        if watchdog_s is not None and time.monotonic() >= next_watchdog and agent.healthy():
            notifier.watchdog()
            next_watchdog = time.monotonic() + watchdog_s
    notifier.stopping()
    agent.stop(stop_timeout_s)
    return 0
