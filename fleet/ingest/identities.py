"""Which device ids the ingester takes messages from when the fleet requires identities.

With ``require_device_identity`` on, a device message is stored only if its device id
has an identity in the ``active`` state (`edgefleet.fleet.store.identity_tables`); any
other (unknown, pending, revoked) is dead-lettered with the reason and touches nothing
else: no device row, no telemetry, events, drift or state.

Cheap on the hot path: the set of active ids is read in one query and kept for
``device_identity_cache_s`` seconds; a batch is checked against it in memory. The ingester
may run in another process than the REST API that enrolls and revokes, so the bound is a
TTL, not an in-process invalidation: a device revoked now has its messages refused at the
latest ``device_identity_cache_s`` after the revocation, including those already in
flight (queued in the broker or the hand-off). `invalidate` forces the next check to
reread, for callers in the same process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, Table, select

from edgefleet.fleet.store.identity_tables import DeviceIdentityRow

_IDENTITIES: Table = DeviceIdentityRow.__table__  # type: ignore[attr-defined]
ACTIVE = "active"  # IdentityState.ACTIVE; not imported, to keep ingest off the CA stack


class ActiveDevices:
    """A TTL cache of the device ids whose identity is active; thread-safe."""

    def __init__(
        self,
        engine: Engine,
        ttl_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._current: Identities | None = None
        self._read_at: float | None = None

    def invalidate(self) -> None:
        """Make the next lookup reread the identities (after an enroll or revoke)."""
        with self._lock:
            self._read_at = None

    def snapshot(self) -> Identities:
        """The active ids as of at most ``ttl_s`` ago, reread if older. Raises
        SQLAlchemyError if they cannot be read (the ingester retries)."""
        with self._lock:
            now = self._clock()
            if self._current is None or self._read_at is None or now - self._read_at >= self._ttl_s:
                with self._engine.connect() as conn:
                    rows = conn.execute(select(_IDENTITIES.c.device_id, _IDENTITIES.c.state)).all()
                states = {d: s for d, s in rows}
                self._current = Identities(frozenset(d for d, s in rows if s == ACTIVE), states)
                self._read_at = now
            return self._current


@dataclass(frozen=True, slots=True)
class Identities:
    """The device ids that are active, and the state of every other known one."""

    active: frozenset[str]
    states: dict[str, str]

    def refusal(self, device_id: str) -> str | None:
        """Why ``device_id`` may not send (None: it is active); raises nothing."""
        if device_id in self.active:
            return None
        state = self.states.get(device_id)
        if state is None:
            return f"device {device_id} has no identity: it is not enrolled in this fleet"
        return f"device {device_id}'s identity is {state}, not active"
