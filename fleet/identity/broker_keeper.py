"""Keeps the broker's CRL and device password file in step with the identity table.

A revocation must reach the broker, not only the fleet: this thread rewrites the files of
the directory `edgefleet fleet broker-config` wrote (``broker_config_dir``) and runs the
operator's ``broker_reload_command`` (Mosquitto re-reads them on SIGHUP). It wakes at
once when this replica enrolls or revokes (`IdentityService`'s ``on_change``), and every
``broker_sync_interval_s`` for changes made by other replicas and to re-sign the CRL
before it expires.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, select

from edgefleet.fleet.identity.broker_files import BrokerLayout, reload_broker, sync_broker_files
from edgefleet.fleet.identity.service import IdentityService, revoked_serials
from edgefleet.fleet.store.identity_tables import BrokerPasswordRow
from edgefleet.shared.messages import utcnow

logger = logging.getLogger(__name__)


class BrokerFilesKeeper:
    """One thread; `sync` also runs on its own (tests, the CLI)."""

    def __init__(
        self,
        engine: Engine,
        identity: IdentityService,
        directory: Path,
        *,
        passwords: bool,
        reload_command: str | None,
        interval_s: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.identity = identity
        self.layout = BrokerLayout(directory)
        self.passwords = passwords
        self.reload_command = reload_command
        self.interval_s = interval_s
        self.clock = clock
        self.syncs = 0  # completed syncs that changed a file (tests wait on it)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sync(self) -> bool:
        """Rewrite what is out of date and reload the broker if anything was; True if so.

        Raises `OSError` if a file cannot be written and
        `edgefleet.fleet.identity.service.IdentityUnavailableError` if the CA cannot sign
        the CRL.
        """
        now = self.clock()
        with Session(self.engine) as session:
            revoked = {serial for serial, _ in revoked_serials(session)}
            passwords = (
                [(r.device_id, r.password_hash) for r in session.exec(select(BrokerPasswordRow))]
                if self.passwords
                else None
            )
            crl_pem = self.identity.crl_pem(session)
        changed = sync_broker_files(
            self.layout, revoked=revoked, crl_pem=crl_pem, device_passwords=passwords, now=now
        )
        if changed:
            logger.info("broker files in %s rewritten", self.layout.directory)
            if self.reload_command:
                reload_broker(self.reload_command)
            self.syncs += 1
        return changed

    def wake(self) -> None:
        """Sync soon (an identity changed on this replica)."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="broker-files", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before the sync: a wake during it means sync again
            try:
                self.sync()
            except Exception:  # next round retries; the fleet's own checks still hold
                logger.exception("could not bring the broker files up to date")
            self._wake.wait(self.interval_s)
