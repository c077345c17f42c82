"""Renewing the device certificate from a timer, before it expires.

`renewal_due` is the rule, pure: renew once less than ``remaining_share`` of the
certificate's lifetime is left (a third by default: a 90-day certificate is renewed at
day 60, leaving a month of retries before it lapses). `Renewer` is the thread around it:
it sleeps until the current certificate is due (reading the file again at least hourly,
so a renewal by ``edgefleet agent renew`` moves the timer too), renews over the current
certificate (`edgefleet.agent.identity.renew`), and after a failure retries with
jittered exponential backoff from ``renew_retry_min_s`` to ``renew_retry_max_s``. On
success it calls ``on_renewed``: the agent reconnects its broker link so the broker sees
the new certificate (the outbox keeps every message across the reconnect).

A certificate that expired cannot be renewed (the fleet refuses it): the device needs a
new enrollment token then, and the renewer says so in its log at each attempt. A device
clock far ahead of the fleet's would find each new certificate due at once; the renewer
then waits ``renew_retry_max_s`` before the next renewal instead of renewing in a loop.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.agent.config import IdentityConfig
from edgefleet.agent.credentials import DeviceCredentials
from edgefleet.agent.identity import Enrolled, IdentityError, renew
from edgefleet.agent.link import backoff_s

log = logging.getLogger(__name__)

# However far off the due time is, the certificate file is looked at again this often.
MAX_SLEEP_S = 3600.0


def renewal_due(not_before: datetime, not_after: datetime, remaining_share: float) -> datetime:
    """When a certificate valid from ``not_before`` to ``not_after`` should be renewed:
    once less than ``remaining_share`` (0 < share < 1) of its lifetime is left."""
    return not_after - (not_after - not_before) * remaining_share


class Renewer:
    """Renews the device's certificate before it expires. `start` once, `stop` once."""

    def __init__(
        self,
        *,
        credentials: DeviceCredentials,
        fleet_url: str,
        config: IdentityConfig,
        ssl_context: ssl.SSLContext | None,
        on_renewed: Callable[[Enrolled], None],
        name: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
    ) -> None:
        self._credentials = credentials
        self._fleet_url = fleet_url
        self._config = config
        self._context = ssl_context
        self._on_renewed = on_renewed
        self._clock = clock
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._due_override = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.renewals = 0
        self.failures = 0

    @property
    def identity_dir(self) -> Path:
        return self._credentials.identity_dir

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the timer; a renewal in progress finishes first (its timeout bounds it)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def renew_now(self) -> None:
        """Renew at once, whatever the due time (safe from any thread)."""
        self._due_override = True
        self._wake.set()

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            if not self._due_override:
                due = renewal_due(
                    self._credentials.not_before,
                    self._credentials.not_after,
                    self._config.renew_remaining_share,
                )
                wait_s = (due - self._clock()).total_seconds()
                if wait_s > 0:
                    log.debug("%s: certificate renewal due at %s", self.identity_dir, due)
                    self._sleep(min(wait_s, MAX_SLEEP_S))
                    continue
            self._due_override = False
            if self._renew():
                attempt = 0
                if self._still_due():
                    # A device clock far ahead of the fleet's: the new certificate, issued
                    # by the fleet's clock, is due at once by ours. Not a loop: wait long.
                    log.warning(
                        "%s: the renewed certificate (valid from %s) is already due for"
                        " renewal by this device's clock (%s): is the clock right?",
                        self.identity_dir,
                        self._credentials.not_before,
                        self._clock(),
                    )
                    self._sleep(self._config.renew_retry_max_s)
                continue
            delay = backoff_s(
                attempt,
                min_s=self._config.renew_retry_min_s,
                max_s=self._config.renew_retry_max_s,
                rng=self._rng,
            )
            attempt += 1
            self._sleep(delay)

    def _still_due(self) -> bool:
        due = renewal_due(
            self._credentials.not_before,
            self._credentials.not_after,
            self._config.renew_remaining_share,
        )
        return due <= self._clock()

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _renew(self) -> bool:
        try:
            renewed = renew(
                self._fleet_url,
                identity_dir=self.identity_dir,
                timeout_s=self._config.renew_timeout_s,
                context=self._context,
            )
        except (IdentityError, OSError) as e:
            self.failures += 1
            expired = self._clock() > self._credentials.not_after
            log.warning(
                "%s: certificate renewal failed%s: %s",
                self.identity_dir,
                " (it has expired: enroll the device anew)" if expired else ", will retry",
                e,
            )
            return False
        self.renewals += 1
        log.info(
            "renewed the device certificate: serial %s until %s", renewed.serial, renewed.not_after
        )
        try:
            self._on_renewed(renewed)
        except Exception:  # the timer must outlive a failing callback
            log.exception("%s: after the renewal, the reconnect failed", self.identity_dir)
        return True
