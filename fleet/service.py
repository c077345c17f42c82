"""The fleet service in one process: ingester thread(s) plus the uvicorn API thread.

``FleetService(settings).start()`` returns once the API accepts connections (so
``api_port=0`` resolves to a real port) and the ingester is connecting; `stop` shuts
the API, then the ingester (which writes what it has queued), then the engine.

With ``settings.keys_dir`` it also loads the signing keys (`edgefleet.fleet.keys`), opens (or
creates) the image repository, connects the director's MQTT publisher and starts the
thread that re-signs snapshot/timestamp metadata before they expire.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import sys
import threading
import time
import uuid
from typing import Any

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from edgefleet.fleet.api.app import create_app
from edgefleet.fleet.api.auth import bootstrap_admin_token
from edgefleet.fleet.api.update_deps import UpdateServices
from edgefleet.fleet.audit.checkpoint import load_or_create_key
from edgefleet.fleet.audit.checkpointer import AuditCheckpointer
from edgefleet.fleet.director import Director
from edgefleet.fleet.drift.monitor import DriftMonitorService
from edgefleet.fleet.drift.notify import MqttAlertPublisher, Notifier, stored_webhook_body
from edgefleet.fleet.identity.broker_keeper import BrokerFilesKeeper
from edgefleet.fleet.identity.service import IdentityService, identity_service_for
from edgefleet.fleet.ingest.subscriber import Ingester
from edgefleet.fleet.keys import FleetKeys, load_fleet_keys, open_repository, passphrase_from_env
from edgefleet.fleet.mqtt_publisher import MqttPublisher
from edgefleet.fleet.observability.metrics import FleetMetrics
from edgefleet.fleet.reconcile.service import Reconciler, start_reconciler
from edgefleet.fleet.reconcile.watcher import RetainedWatcher
from edgefleet.fleet.registry import ModelRegistry
from edgefleet.fleet.repo_access import MetadataRefresher, RepositoryAccess
from edgefleet.fleet.rollout_service.orchestrator import Orchestrator
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.engine import make_engine
from edgefleet.fleet.store.migrate import require_current, upgrade
from edgefleet.fleet.webhooks.dispatcher import RetryPolicy, WebhookDispatcher
from edgefleet.fleet.webhooks.transport import destination_policy
from edgefleet.shared.signing.tufapi import CryptoSigner, SSlibKey

logger = logging.getLogger(__name__)


def uvicorn_config(app: FastAPI, settings: FleetSettings) -> uvicorn.Config:
    """How the API is served: address from ``settings``, server options tuned for fleets.

    A rollout wave has hundreds of devices fetch metadata and the same artifact at once
    (see tests/benchmarks/repo_serve_bench.py for what each option is worth):

    - httptools and uvloop (dependencies of the ``fleet`` extra; uvloop where it exists,
      so not on Windows) parse and send in C: 10-25 % less CPU per request than h11;
    - the listen backlog holds a whole wave's connections while the loop is busy (the
      kernel caps it at ``net.core.somaxconn``);
    - a kept-alive connection stays open longer than the 60 s idle timeout of common
      load balancers and than a device's pause between metadata refreshes: the server
      closing an idle connection races a request already on its way, which the client
      sees as "connection reset" or "closed without response";
    - no access log: the level is warning, but uvicorn builds each line's arguments
      anyway;
    - no logging config of uvicorn's own: its loggers propagate to the root handler that
      `edgefleet.shared.logs.configure` installed, so with ``--log-format json`` its
      lines (a bad request, an ASGI error) are JSON too, on stdout with the rest.

    With ``api_tls_cert_file`` and ``api_tls_key_file`` it serves HTTPS only (TLS 1.2 or
    newer: uvicorn's default context), and with ``api_tls_client_ca_file`` it asks clients
    for a certificate of those CAs (``api_tls_client_cert``: optional or required). uvicorn
    does not pass the peer certificate to the app, so devices authenticate to the
    repository by signing their requests (`edgefleet.shared.device_auth`) either way.
    """
    tls: dict[str, Any] = {}
    if settings.api_tls_cert_file is not None:
        password = settings.api_tls_key_password
        tls = {
            "ssl_certfile": str(settings.api_tls_cert_file),
            "ssl_keyfile": str(settings.api_tls_key_file),
            "ssl_keyfile_password": password.get_secret_value() if password else None,
        }
        if settings.api_tls_client_ca_file is not None:
            required = settings.api_tls_client_cert == "required"
            tls["ssl_ca_certs"] = str(settings.api_tls_client_ca_file)
            tls["ssl_cert_reqs"] = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    return uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_level="warning",
        log_config=None,
        access_log=False,
        lifespan="off",
        http="httptools",
        loop="asyncio" if sys.platform == "win32" else "uvloop",
        backlog=4096,
        timeout_keep_alive=75,
        **tls,
    )


def check_tls_files(settings: FleetSettings) -> None:
    """Load the API's TLS files once, so a bad one fails the start with its name.

    Raises `RuntimeError` naming the file and the cause (uvicorn would only log it from
    its thread). Does nothing without ``api_tls_cert_file``.
    """
    if settings.api_tls_cert_file is None or settings.api_tls_key_file is None:
        return
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    password = settings.api_tls_key_password
    try:
        context.load_cert_chain(
            settings.api_tls_cert_file,
            settings.api_tls_key_file,
            password.get_secret_value() if password else None,
        )
    except (OSError, ssl.SSLError) as e:
        raise RuntimeError(
            f"cannot load the API's TLS certificate {settings.api_tls_cert_file} with key"
            f" {settings.api_tls_key_file}: {e}"
        ) from e
    if settings.api_tls_client_ca_file is not None:
        try:
            context.load_verify_locations(settings.api_tls_client_ca_file)
        except (OSError, ssl.SSLError) as e:
            raise RuntimeError(
                f"cannot load the client CA file {settings.api_tls_client_ca_file}: {e}"
            ) from e


# What `FleetService.stop` stops, in order: the drift monitor before the webhooks (nothing
# new is queued; unfinished deliveries stay pending in the database for the next start),
# the orchestrator and the reconciler before the publishers they publish through (a tick
# in progress still publishes what it stored), the ingester last (it flushes its queue).
_STOP_ORDER = (
    "broker_keeper",
    "drift_monitor",
    "_webhooks",
    "orchestrator",
    "_alert_publisher",
    "reconciler",
    "_retained_watcher",
    "_refresher",
    "_publisher",
    "_ingester",
)


class FleetService:
    """Runs one fleet replica in-process; the demo, the CLI and the tests use it."""

    def __init__(
        self,
        settings: FleetSettings,
        *,
        ingest: bool = True,
        key_passphrase: bytes | None = None,
    ) -> None:
        """``key_passphrase`` defaults to ``$EDGEFLEET_KEY_PASSPHRASE``."""
        self.settings = settings
        self._ingest = ingest
        self._key_passphrase = key_passphrase
        self.updates: UpdateServices | None = None
        self.fleet_keys: FleetKeys | None = None
        self._publisher: MqttPublisher | None = None
        self._refresher: MetadataRefresher | None = None
        self.orchestrator: Orchestrator | None = None
        self.reconciler: Reconciler | None = None
        self._retained_watcher: RetainedWatcher | None = None
        self.drift_monitor: DriftMonitorService | None = None
        self._alert_publisher: MqttAlertPublisher | None = None
        self._webhooks: WebhookDispatcher | None = None
        self.audit_checkpointer: AuditCheckpointer | None = None
        self.broker_keeper: BrokerFilesKeeper | None = None
        self._app: FastAPI | None = None
        self.registry = CollectorRegistry()
        self.observability = FleetMetrics(self.registry)
        self.metrics = self.observability.ingest
        self.bootstrap_admin_token: str | None = None
        self._engine: Engine | None = None
        self._ingester: Ingester | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the fleet service is not started")
        return self._engine

    @property
    def ingester(self) -> Ingester | None:
        return self._ingester

    @property
    def webhooks(self) -> WebhookDispatcher | None:
        """The webhook dispatcher (None when stopped)."""
        return self._webhooks

    @property
    def port(self) -> int:
        """The port the API listens on (the real one when settings asked for 0)."""
        if self._port is None:
            raise RuntimeError("the fleet service is not started")
        return self._port

    @property
    def base_url(self) -> str:
        scheme = "https" if self.settings.api_tls else "http"
        return f"{scheme}://{self.settings.api_host}:{self.port}"

    @property
    def director(self) -> Director:
        """The director (signed updates on); raises `RuntimeError` otherwise."""
        if self.updates is None or self.updates.director is None:
            raise RuntimeError("the fleet service runs without keys: no director")
        return self.updates.director

    @property
    def director_key(self) -> SSlibKey:
        """The director's public key (what devices pin); raises `RuntimeError` without keys."""
        if self.fleet_keys is None:
            raise RuntimeError("the fleet service runs without keys: no director key")
        return self.fleet_keys.director_public

    def start(self, timeout_s: float = 15.0) -> None:
        """Check (or, with ``migrate_at_start``, migrate) the schema, bootstrap the admin
        token, load keys, start ingest and the API.

        Raises `edgefleet.fleet.store.migrate.SchemaNotCurrent` (a `RuntimeError`) when
        the database is not at head, naming the command that fixes it;
        `RuntimeError` if the API does not come up within ``timeout_s`` or its TLS
        files cannot be loaded,
        `edgefleet.shared.signing.errors.KeyFileError` if the keys cannot be loaded (wrong
        passphrase, missing file) or there is no repository and no key to create one.
        """
        check_tls_files(self.settings)  # first: a bad file leaves nothing half-started
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        if self.settings.keys_dir is not None:
            # Before anything else, so a wrong passphrase leaves no half-started replica
            # (and no bootstrap admin token generated but never shown).
            self.fleet_keys = load_fleet_keys(
                self.settings.keys_dir,
                self._key_passphrase or passphrase_from_env(),
                lab_mode=self.settings.lab_mode,
            )
        audit_signer = self._audit_signer()  # before the tables too, for the same reason
        if self.settings.migrate_at_start:
            upgrade(self.settings.database_url, progress=_log_migration)
        self._engine = make_engine(self.settings.database_url)
        try:
            require_current(self._engine)
        except BaseException:
            self._engine.dispose()
            raise
        self.bootstrap_admin_token = bootstrap_admin_token(self._engine, self.settings)
        if audit_signer is not None:
            self._start_audit_checkpointer(self._engine, audit_signer)
        try:
            self.updates = self._start_updates(self._engine)
        except BaseException:
            self.stop()
            raise
        if self._ingest:
            self._ingester = Ingester(self.settings, self._engine, self.metrics)
            self._ingester.start()
        self._start_orchestrator(self._engine)
        self._start_reconciler(self._engine)
        self._start_drift_monitor(self._engine)
        identity = self._start_identity(self._engine)
        app = create_app(
            self.settings,
            engine=self._engine,
            registry=self.registry,
            ingester=self._ingester,
            updates=self.updates,
            metrics=self.observability,
        )
        app.state.identity = identity  # the one whose changes reach the caches at once
        self._app = app
        self._server = uvicorn.Server(uvicorn_config(app, self.settings))
        self._thread = threading.Thread(target=self._server.run, name="fleet-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the fleet API did not start on {self.settings.api_host}:"
                    f"{self.settings.api_port} within {timeout_s}s"
                )
            time.sleep(0.01)
        self._port = int(self._server.servers[0].sockets[0].getsockname()[1])
        logger.info("fleet API listening on %s", self.base_url)

    def stop(self) -> None:
        """Stop the API, then ingest (flushing its queue); safe to call twice."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._server = None
        for name in _STOP_ORDER:
            component = getattr(self, name)
            if component is not None:
                component.stop()
                setattr(self, name, None)
        # Last before the engine: its final checkpoint covers everything above wrote.
        self._stop_audit_checkpointer()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _audit_signer(self) -> CryptoSigner | None:
        """The audit-checkpoint key (made on the first start), None if checkpoints are off.

        Raises `KeyFileError` for a key that cannot be loaded (a wrong passphrase).
        """
        s = self.settings
        if not s.audit_checkpoints:
            logger.info("audit checkpoints off")
            return None
        return load_or_create_key(
            s.resolved_audit_key_dir, self._key_passphrase or passphrase_from_env()
        )

    def _start_audit_checkpointer(self, engine: Engine, signer: CryptoSigner) -> None:
        """Sign audit checkpoints into a file outside the database, at an interval."""
        s = self.settings
        self.audit_checkpointer = AuditCheckpointer(
            engine,
            signer,
            path=s.resolved_audit_checkpoint_file,
            fleet_id=s.audit_fleet_id,
            interval_s=s.audit_checkpoint_interval_s,
            webhook_url=s.audit_checkpoint_webhook_url,
            webhook_timeout_s=s.webhook_timeout_s,
        )
        self.audit_checkpointer.start()

    def _stop_audit_checkpointer(self) -> None:
        if self.audit_checkpointer is not None:
            self.audit_checkpointer.stop()
            self.audit_checkpointer = None

    def _start_identity(self, engine: Engine) -> IdentityService:
        """The identity service of this replica and, with ``broker_config_dir``, the thread
        that keeps the broker's CRL and password file current (`BrokerFilesKeeper`)."""
        s = self.settings
        identity = identity_service_for(s, engine, on_change=self._identity_changed)
        if s.broker_config_dir is not None:
            self.broker_keeper = BrokerFilesKeeper(
                engine,
                identity,
                s.broker_config_dir,
                passwords=s.broker_device_auth == "password",
                reload_command=s.broker_reload_command,
                interval_s=s.broker_sync_interval_s,
            )
            self.broker_keeper.start()
        return identity

    def _identity_changed(self) -> None:
        """An enrollment or revocation committed on this replica: the broker's files and
        this replica's copies of the identity table catch up now, not after their TTL
        (other replicas' copies within ``device_identity_cache_s``)."""
        if self.broker_keeper is not None:
            self.broker_keeper.wake()
        if self._ingester is not None:
            self._ingester.identities_changed()
        authenticator = (
            getattr(self._app.state, "device_authenticator", None) if self._app else None
        )
        if authenticator is not None:
            authenticator.invalidate()

    def _start_drift_monitor(self, engine: Engine) -> None:
        """Evaluate stored drift windows periodically; alerts go to MQTT and webhooks."""
        s = self.settings
        self.drift_monitor = DriftMonitorService(
            engine,
            Notifier(engine, publisher=self._alerts(), dispatcher=self._start_webhooks(engine)),
            interval_s=s.drift_interval_s,
            lookback_s=s.drift_lookback_s,
            cooldown_s=s.drift_cooldown_s,
            registry=self.registry,  # its failure counter beside the ingest metrics
            metrics=self.observability.drift,
        )
        self.drift_monitor.start()

    def _start_orchestrator(self, engine: Engine) -> None:
        """Start the rollout orchestrator when signed updates are on and it is enabled."""
        s = self.settings
        if not s.rollout_orchestrator or self.updates is None or self.updates.director is None:
            logger.info("rollout orchestrator off (disabled, or no keys to sign updates)")
            return
        holder = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.orchestrator = Orchestrator(
            engine,
            self.updates.director,
            self.updates.registry,
            holder=holder,
            tick_interval_s=s.rollout_tick_interval_s,
            lease_s=s.rollout_lease_s,
            offline_after_s=s.offline_after_s,
            alerts=self._alerts(),  # a rollout paused by an error is a critical alert
            metrics=self.observability.rollouts,
        )
        self.orchestrator.start()

    def _start_webhooks(self, engine: Engine) -> WebhookDispatcher:
        """The webhook dispatcher: per-webhook queues and threads, off the drift thread."""
        s = self.settings
        self._webhooks = WebhookDispatcher(
            engine,
            policy=RetryPolicy(
                max_attempts=s.webhook_max_attempts,
                backoff_s=s.webhook_backoff_s,
                max_backoff_s=s.webhook_max_backoff_s,
                timeout_s=s.webhook_timeout_s,
            ),
            destinations=destination_policy(s),
            queue_size=s.webhook_queue_size,
        )
        # Deliveries a previous run left pending (stopped, or crashed) are sent again.
        self._webhooks.start(body_of=stored_webhook_body(engine))
        return self._webhooks

    def _alerts(self) -> MqttAlertPublisher:
        """The one publisher of the fleet alerts topic, started on first use."""
        if self._alert_publisher is None:
            self._alert_publisher = MqttAlertPublisher(self.settings)
            self._alert_publisher.start()
        return self._alert_publisher

    def _start_reconciler(self, engine: Engine) -> None:
        """Republish lost or unheeded desired states (`edgefleet.fleet.reconcile`)."""
        if not self.settings.reconcile or self.updates is None or self.updates.director is None:
            logger.info("reconciler off (disabled, or no keys to sign updates)")
            return
        self.reconciler, self._retained_watcher = start_reconciler(
            engine, self.updates.director, self.settings, self.registry
        )

    def _start_updates(self, engine: Engine) -> UpdateServices:
        s = self.settings
        registry = ModelRegistry(engine, s.resolved_models_dir, None)
        repo_dir = s.resolved_repository_dir
        if self.fleet_keys is None or repo_dir is None:
            logger.info("no keys dir: signed updates are off (uploads still work)")
            return UpdateServices(registry=registry)
        open_repository(repo_dir, self.fleet_keys)
        access = RepositoryAccess(repo_dir, self.fleet_keys.repository)
        self._publisher = MqttPublisher(s)
        self._publisher.start()
        director = Director(
            engine,
            self.fleet_keys.director,
            self._publisher,
            default_expires_s=s.desired_expires_s,
            metrics=self.observability.director,
        )
        self._refresher = MetadataRefresher(access, s.metadata_refresh_interval_s)
        self._refresher.start()
        return UpdateServices(
            registry=ModelRegistry(engine, s.resolved_models_dir, access),
            repository=access,
            director=director,
        )


def _log_migration(line: str) -> None:
    logger.info("schema migration: %s", line)
