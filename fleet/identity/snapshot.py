"""Every device identity's state and key, read in one query and kept for a TTL.

The two hot paths that ask "may this device speak?" share it: the ingester, for each
batch of MQTT messages (`edgefleet.fleet.ingest.subscriber`), and the repository's
check of a signed device request (`edgefleet.fleet.identity.device_auth`). A copy is
reread once older than ``ttl_s``; the REST API that enrolls and revokes may run in
another process or replica, so the bound on how long a revocation takes to be seen is
the TTL, not an in-process invalidation (`invalidate` serves callers in the same
process). Imports no CA or cryptography: the ingester stays off that stack.

The TTL bounds how stale a copy may be when it *lets a device in*. A copy that would
*refuse* one may be staler than the device's enrollment at another replica (a device
sends its first messages a moment after enrolling, and the broker may hand them to a
replica whose copy is older), so callers that refuse for good ask for a copy read after
the request arrived (``snapshot(read_after=...)``) before they refuse.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, Table, select

from edgefleet.fleet.identity.enrollment import IdentityState
from edgefleet.fleet.store.identity_tables import DeviceIdentityRow

_IDENTITIES: Table = DeviceIdentityRow.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Identities:
    """Every identity's state and key fingerprint, as read at ``read_at`` (monotonic)."""

    by_device: dict[str, tuple[str, str | None]]
    read_at: float

    def refusal(self, device_id: str) -> str | None:
        """Why ``device_id`` may not send (None: it is active); raises nothing."""
        state, _ = self.by_device.get(device_id, (None, None))
        if state == IdentityState.ACTIVE.value:
            return None
        if state is None:
            return f"device {device_id} has no identity: it is not enrolled in this fleet"
        return f"device {device_id}'s identity is {state}, not active"


class IdentityCache:
    """The identities as of at most ``ttl_s`` ago; thread-safe."""

    def __init__(
        self, engine: Engine, ttl_s: float, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._engine = engine
        self._ttl_s = ttl_s
        self._monotonic = monotonic
        self._lock = threading.Lock()  # one reread at a time
        self._current: Identities | None = None

    def now(self) -> float:
        """The cache's clock (monotonic seconds), as ``read_after`` and ``read_at`` use it."""
        return self._monotonic()

    def fresh(self) -> bool:
        """Whether `snapshot` would answer without reading the database."""
        current = self._current
        return current is not None and self._monotonic() - current.read_at < self._ttl_s

    def invalidate(self) -> None:
        """Make the next `snapshot` reread (after an enroll or revoke in this process)."""
        with self._lock:
            self._current = None

    def snapshot(self, *, read_after: float | None = None) -> Identities:
        """The identities, reread if older than ``ttl_s`` or read before ``read_after``
        (a `now` reading). Raises SQLAlchemyError if they cannot be read (the callers
        retry or refuse)."""
        current = self._current
        if current is not None and self._usable(current, self._monotonic(), read_after):
            return current
        with self._lock:
            current = self._current
            now = self._monotonic()
            if current is None or not self._usable(current, now, read_after):
                query = select(
                    _IDENTITIES.c.device_id, _IDENTITIES.c.state, _IDENTITIES.c.key_fingerprint
                )
                with self._engine.connect() as conn:
                    rows = conn.execute(query).all()
                current = Identities({d: (s, f) for d, s, f in rows}, now)
                self._current = current
            return current

    def _usable(self, copy: Identities, now: float, read_after: float | None) -> bool:
        return now - copy.read_at < self._ttl_s and (
            read_after is None or copy.read_at >= read_after
        )
