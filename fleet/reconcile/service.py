"""The reconciler's shell: reads the store, asks the policy, republishes through the director.

Every ``interval_s`` (and at once when the `RetainedWatcher` sees a desired topic cleared,
or when it has just settled after subscribing) `Reconciler.run_once` builds a
`edgefleet.fleet.reconcile.policy.DeviceView` per device with a stored desired state, in
three queries (desired states and their devices; the devices that reported an event
naming their current desired seq), lets `decide` judge each, and republishes the chosen
devices with `edgefleet.fleet.director.Director.republish_many`: the stored envelope
with its seq, and the director's own re-read afterwards, so a republish can never leave
an older state retained than one a rollout stored meanwhile.

Every replica reconciles; they publish the same bytes, so two doing it at once is
harmless. The per-device memory (attempts, backoff) lives in this process only: a
restarted replica starts afresh, with at most ``max_attempts`` more republishes per
desired state. A failing tick is logged and counted and never stops the thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import ValidationError
from sqlalchemy import Engine, and_, select

from edgefleet.fleet.errors import FleetError, PublishError
from edgefleet.fleet.reconcile.policy import (
    DeviceView,
    GiveUp,
    Memory,
    ReconcileRules,
    Republish,
    Wait,
    classify_retained,
    decide,
    publish_failed,
)
from edgefleet.fleet.reconcile.watcher import RetainedWatcher
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.tables import DesiredStateRow, Device, EventRow
from edgefleet.fleet.store.types import as_utc
from edgefleet.shared.messages import utcnow
from edgefleet.shared.signing.director import DesiredBody, SignedDesiredState

logger = logging.getLogger(__name__)

MIN_WAKE_GAP_S = 0.2  # a burst of cleared topics makes one tick, not one each


class Republisher(Protocol):
    """What the reconciler needs of `edgefleet.fleet.director.Director`."""

    def republish_many(
        self, device_ids: list[str]
    ) -> Mapping[str, SignedDesiredState | FleetError]:
        """Per device: the envelope published again, or why not."""
        ...


class RetainedSource(Protocol):
    """What the reconciler needs of `RetainedWatcher`."""

    def settled(self) -> bool: ...

    def seconds_to_settle(self) -> float | None: ...

    def observed(self) -> dict[str, int]: ...

    def prune(self, keep: Collection[str]) -> None: ...


class ReconcileMetrics:
    """The reconciler's counters, on the fleet's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.republished = Counter(
            "edgefleet_reconcile_republished",
            "desired states published again, by why",
            ["reason"],
            registry=registry,
        )
        self.publish_failed = Counter(
            "edgefleet_reconcile_publish_failed",
            "republishes the broker did not acknowledge",
            registry=registry,
        )
        self.gave_up = Counter(
            "edgefleet_reconcile_gave_up",
            "desired states no longer republished (attempts spent, or expired)",
            ["reason", "why"],
            registry=registry,
        )
        self.pending = Gauge(
            "edgefleet_reconcile_pending_devices",
            "devices whose desired state needs republishing (now or after a backoff)",
            registry=registry,
        )
        self.tick_errors = Counter(
            "edgefleet_reconcile_tick_errors", "reconcile passes that failed", registry=registry
        )


@dataclass(frozen=True, slots=True)
class Stored:
    """One device's stored desired state and what the fleet knows of the device."""

    body: DesiredBody
    online: bool
    last_seen: datetime | None
    active_sha256: str | None
    state_ts: datetime | None
    acted: bool


class Reconciler:
    """Republishes lost or unheeded desired states; `run_once`, or `start` / `stop`."""

    def __init__(
        self,
        engine: Engine,
        director: Republisher,
        watcher: RetainedSource,
        rules: ReconcileRules,
        metrics: ReconcileMetrics,
        *,
        interval_s: float,
        offline_after_s: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self._director = director
        self._watcher = watcher
        self._rules = rules
        self._metrics = metrics
        self._interval_s = interval_s
        self._offline_after = timedelta(seconds=offline_after_s)
        self._clock = clock
        self._memory: dict[str, Memory] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Run a pass soon (thread-safe; called from the watcher's thread)."""
        self._wake.set()

    def run_once(self, now: datetime | None = None) -> dict[str, Republish]:
        """One pass over every stored desired state; returns the devices republished.

        Raises what the database raises; a failed publish is counted, not raised.
        """
        now = now or self._clock()
        stored = _load(self._engine)
        self._watcher.prune(stored)
        observed = self._watcher.observed()
        settled = self._watcher.settled()
        chosen: dict[str, Republish] = {}
        memory: dict[str, Memory] = {}
        pending = 0
        for device_id, row in stored.items():
            view = DeviceView(
                desired=row.body,
                retained=classify_retained(observed.get(device_id), row.body.seq, settled=settled),
                online=row.online
                and row.last_seen is not None
                and as_utc(row.last_seen) >= now - self._offline_after,
                active_sha256=row.active_sha256,
                online_since=as_utc(row.state_ts) if row.state_ts is not None else None,
                acted=row.acted,
            )
            decision, remembered = decide(view, self._memory.get(device_id), now, self._rules)
            if remembered is not None:
                memory[device_id] = remembered
            if isinstance(decision, Republish):
                chosen[device_id] = decision
                pending += 1
            elif isinstance(decision, Wait):
                pending += 1
            elif isinstance(decision, GiveUp):
                self._metrics.gave_up.labels(decision.reason.value, decision.why).inc()
                # An expired state is ordinary ageing; attempts spent without effect are not.
                logger.log(
                    logging.INFO if decision.why == "expired" else logging.WARNING,
                    "reconciler: giving up on desired seq %s of %s (%s, %s after %s attempts)",
                    row.body.seq,
                    device_id,
                    decision.reason.value,
                    decision.why,
                    decision.attempts,
                )
        self._memory = memory
        self._metrics.pending.set(pending)
        if chosen:
            self._republish(chosen)
        return chosen

    def _republish(self, chosen: Mapping[str, Republish]) -> None:
        outcomes = self._director.republish_many(sorted(chosen))
        for device_id, decision in chosen.items():
            outcome = outcomes.get(device_id)
            if isinstance(outcome, SignedDesiredState):
                self._metrics.republished.labels(decision.reason.value).inc()
                logger.info(
                    "reconciler: republished desired seq %s of %s (%s, attempt %s)",
                    outcome.signed.seq,
                    device_id,
                    decision.reason.value,
                    decision.attempt,
                )
                continue
            if isinstance(outcome, PublishError) and device_id in self._memory:
                self._memory[device_id] = publish_failed(self._memory[device_id])
            self._metrics.publish_failed.inc()
            logger.warning("reconciler: republishing %s failed: %s", device_id, outcome)

    def start(self) -> None:
        """Run `run_once` every ``interval_s`` (or when woken) on a daemon thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread; safe to call twice."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            timeout = self._interval_s
            settle = self._watcher.seconds_to_settle()
            if settle is not None:
                # Judge absent messages right after the broker had time to send them.
                timeout = min(timeout, settle + 0.05)
            self._wake.wait(timeout)
            if self._stop.is_set():
                return
            self._wake.clear()
            try:
                self.run_once()
            except Exception:  # a bad pass must not end reconciliation for good
                self._metrics.tick_errors.inc()
                logger.exception("reconcile pass failed")
            self._stop.wait(MIN_WAKE_GAP_S)


def start_reconciler(
    engine: Engine,
    director: Republisher,
    settings: FleetSettings,
    registry: CollectorRegistry,
) -> tuple[Reconciler, RetainedWatcher]:
    """A started watcher and reconciler from the fleet's settings; `stop` both when done."""
    rules = ReconcileRules(
        after_s=settings.reconcile_after_s,
        # A director's publish waits this long for its PUBACK: until then a state it
        # just stored may not be on the broker yet.
        in_flight_s=settings.publish_timeout_s,
        backoff_s=settings.reconcile_backoff_s,
        backoff_max_s=settings.reconcile_backoff_max_s,
        max_attempts=settings.reconcile_max_attempts,
    )
    holder: list[Reconciler] = []
    watcher = RetainedWatcher(
        settings,
        settle_s=settings.reconcile_settle_s,
        on_lost=lambda: holder[0].wake() if holder else None,
    )
    reconciler = Reconciler(
        engine,
        director,
        watcher,
        rules,
        ReconcileMetrics(registry),
        interval_s=settings.reconcile_interval_s,
        offline_after_s=settings.offline_after_s,
    )
    holder.append(reconciler)
    watcher.start()
    reconciler.start()
    return reconciler, watcher


def _load(engine: Engine) -> dict[str, Stored]:
    desired: Any = DesiredStateRow.__table__  # type: ignore[attr-defined]
    devices: Any = Device.__table__  # type: ignore[attr-defined]
    events: Any = EventRow.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                desired.c.device_id,
                desired.c.body,
                devices.c.online,
                devices.c.last_seen,
                devices.c.model_sha256,
                devices.c.state_ts,
            ).select_from(desired.outerjoin(devices, devices.c.device_id == desired.c.device_id))
        ).all()
        acted = set(
            conn.execute(
                select(events.c.device_id)
                .distinct()
                .select_from(
                    events.join(
                        desired,
                        and_(
                            events.c.device_id == desired.c.device_id,
                            events.c.desired_seq == desired.c.seq,
                        ),
                    )
                )
            ).scalars()
        )
    stored: dict[str, Stored] = {}
    for device_id, body, online, last_seen, sha256, state_ts in rows:
        if not body:
            continue  # a seq allocated in a transaction that stored nothing yet
        try:
            parsed = DesiredBody.model_validate(body)
        except ValidationError as e:
            logger.warning(
                "reconciler: stored desired state of %s does not parse: %s", device_id, e
            )
            continue
        stored[device_id] = Stored(
            body=parsed,
            online=bool(online),
            last_seen=last_seen,
            active_sha256=sha256,
            state_ts=state_ts,
            acted=device_id in acted,
        )
    return stored
