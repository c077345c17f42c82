"""The rollout orchestrator: the I/O shell that runs `edgefleet.fleet.rollouts.policy.decide`.

Every tick (``tick_interval_s``) the replica makes sure it holds the orchestrator lease
(`edgefleet.fleet.rollout_service.lease`): the holder renews it once a third of its
duration has passed, a replica without it tries to take it; only the holder drives
rollouts. For each active rollout it reads the state, builds observations and metrics
(`edgefleet.fleet.rollout_service.observe`), calls `decide`, **stores the new state
first** (compare-and-set on the rollout's version, with the lease re-checked in the
same transaction) and only then carries out the actions: ``Assign`` →
`Director.assign_many` of the rollout's target; ``RollBack`` → a signed rollback to
the device's previous version, batched the same way per version.
Every outcome goes into the rollout's history, and every rollout-level decision (wave
started, gate passed or failed, held for model approval, paused, rolling back, rolled
back, completed, failed) also into the audit log, actor ``system``, one entry each, in
the transaction that saves it (`decision_audit`); device steps are not audited.

Invariants (from the pure core's save-then-act contract):
- an action is carried out only after the state that produced it is stored, so a crash
  loses at most the *carrying out*, never the decision; on taking the lease (start-up or
  take-over) the orchestrator re-does `unconfirmed_actions`;
- re-doing is idempotent: when the director's stored desired state for the device is
  already this rollout's (same target, same rollback flag) it is re-published with its
  seq, never signed again, so no device gets a second assignment for one decision;
- a replica that lost the lease stops carrying out actions at once; its stale writes
  fail the compare-and-set;
- a state it saved is handed to the state cache only once its transaction committed
  (`edgefleet.fleet.rollout_service.store.committed`), so the next tick reads back only
  the rollout's version, and parses the state only when another writer (a command, a replica) moved
  it on.

Isolation: one rollout cannot stall the others. Whatever goes wrong while reading or
deciding one rollout (a stored state that no longer parses, an exception from `decide`
or from its observations, a write its values break) pauses *that* rollout with the error
as its ``status_reason`` and a ``decide_failed`` history line, publishes a critical
``rollout_paused_error`` alert (`AlertPublisher`, when one is given), and the tick goes
on with the next rollout. Only a lost lease and an unreachable database
(`DATABASE_DOWN`) stop a tick: they are no rollout's fault, and the next tick retries.
An error that repeats at every tick is recorded once (the reason is unchanged). Carrying
out actions is not covered: the director's own failures are per device (``action_failed``
lines, retried), and anything else there is the process failing, not the rollout.

A rollback to ``to_version=None`` (the device ran no model of that name before) is not
published: the protocol has no "uninstall", so it is skipped with a history line, and
the rollout ends FAILED for that device once the rollback timeout passes.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import Engine
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from edgefleet.fleet.audit.entry import SYSTEM_ACTOR, AuditObject, AuditRecord
from edgefleet.fleet.audit.log import append as append_audit
from edgefleet.fleet.errors import FleetError
from edgefleet.fleet.rollout_service.lease import Lease
from edgefleet.fleet.rollout_service.observe import EventCache, observe, wave_metrics
from edgefleet.fleet.rollout_service.store import (
    HistoryLine,
    StaleRolloutError,
    StoredRollout,
    UnreadableRollout,
    append,
    committed,
    decision_lines,
    load_active_checked,
    model_state,
    pause_unreadable,
    save,
    snapshot,
)
from edgefleet.fleet.rollouts.model import (
    Action,
    Assign,
    Decision,
    RollBack,
    RolloutState,
    RolloutStatus,
)
from edgefleet.fleet.rollouts.policy import decide, pause_for_error, unconfirmed_actions
from edgefleet.shared.messages import AlertMessage, utcnow
from edgefleet.shared.signing.director import DesiredTarget, SignedDesiredState

if TYPE_CHECKING:
    from edgefleet.fleet.observability.metrics import RolloutMetrics

logger = logging.getLogger(__name__)

# A tick reads and decides every device of every active rollout, so its cost grows with
# the rollout: ~0.25 s of CPU at 10,000 devices, where ticking every 0.5 s took most of
# a core and made a rollout's fleet CPU grow with the square of its size (each tick
# O(devices), and a larger rollout lasting more ticks; tests/benchmarks/fleet_scale.py).
# Waiting at least this many times the tick's own CPU keeps the orchestrator under
# 1 / (1 + TICK_CPU_BACKOFF) of a core; a large rollout then reacts a little later.
TICK_CPU_BACKOFF = 3.0

LEASE_NAME = "rollout-orchestrator"
# Devices per director batch; the lease is re-checked between batches.
PUBLISH_BATCH = 250
ALERT_KIND = "rollout_paused_error"
# How much of an error's text a status reason and an alert carry (a pydantic error on a
# large state can run to pages).
MAX_ERROR_CHARS = 500
# The database is unreachable: every rollout would fail alike, so the tick stops.
DATABASE_DOWN = (OperationalError, InterfaceError, DisconnectionError, PoolTimeoutError)


class RolloutDirector(Protocol):
    """What the orchestrator needs of `edgefleet.fleet.director.Director`."""

    def assign_many(
        self,
        device_ids: Sequence[str],
        target: DesiredTarget,
        *,
        rollout_id: str | None = None,
        rollback: bool = False,
        expires_in_s: int | None = None,
    ) -> dict[str, SignedDesiredState | FleetError]: ...

    def current_many(self, device_ids: Sequence[str]) -> dict[str, SignedDesiredState]: ...

    def republish_many(
        self, device_ids: Sequence[str]
    ) -> dict[str, SignedDesiredState | FleetError]: ...


class TargetRegistry(Protocol):
    """What the orchestrator needs of `edgefleet.fleet.registry.ModelRegistry`."""

    def published_target(self, name: str, version: str) -> DesiredTarget: ...


class AlertPublisher(Protocol):
    """Where rollout alerts go (`edgefleet.fleet.drift.notify.MqttAlertPublisher` is one:
    the fleet alerts topic)."""

    def publish_alert(self, message: AlertMessage) -> None:
        """Publish at QoS 1 and wait for the acknowledgement; raises on failure."""
        ...


class LeaseLostError(Exception):
    """This replica no longer holds the orchestrator lease; it must stop acting."""


def next_wait_s(interval_s: float, *, elapsed_s: float, cpu_s: float, lease_s: float) -> float:
    """How long the orchestrator waits after a tick that took ``elapsed_s`` (``cpu_s`` of
    its thread's CPU): the rest of ``interval_s``, but at least `TICK_CPU_BACKOFF` times
    the tick's CPU, and never past a third of the lease (when its renewal is due)."""
    wait = max(interval_s - elapsed_s, TICK_CPU_BACKOFF * cpu_s)
    return max(0.0, min(wait, lease_s / 3 - elapsed_s))


class Orchestrator:
    """Drives every active rollout while this replica (``holder``) holds the lease."""

    def __init__(
        self,
        engine: Engine,
        director: RolloutDirector,
        registry: TargetRegistry,
        *,
        holder: str,
        tick_interval_s: float = 1.0,
        lease_s: float = 5.0,
        offline_after_s: float = 300.0,
        clock: Callable[[], datetime] = utcnow,
        alerts: AlertPublisher | None = None,
        metrics: RolloutMetrics | None = None,
    ) -> None:
        """``metrics`` gets the devices per state, gate decisions and wave durations."""
        if lease_s <= tick_interval_s:
            raise ValueError(
                f"the lease ({lease_s} s) must outlast a tick interval ({tick_interval_s} s)"
            )
        self._engine = engine
        self._director = director
        self._registry = registry
        self._clock = clock
        self._alerts = alerts
        self._metrics = metrics
        self.tick_interval_s = tick_interval_s
        self.offline_after_s = offline_after_s
        self.lease = Lease(engine, LEASE_NAME, holder, duration_s=lease_s, clock=clock)
        self._recovered = False
        self._renewed_at = 0.0
        # Actions whose publish failed, retried while the state still asks for them.
        self._retry: dict[tuple[str, str], Action] = {}
        self._events = EventCache()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def holder(self) -> str:
        return self.lease.holder

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Run `tick` every ``tick_interval_s`` in a background thread."""
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"rollout-orchestrator-{self.holder}", daemon=True
        )
        self._thread.start()

    def stop(self, *, release: bool = True) -> None:
        """Stop the thread (after its current tick); ``release`` hands the lease over now."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if release:
            try:
                self.lease.release()
            except SQLAlchemyError as e:
                logger.warning("could not release the orchestrator lease: %s", e)

    def _run(self) -> None:
        while not self._stop.is_set():
            started, cpu_started = time.monotonic(), time.thread_time()
            try:
                self.tick()
            except SQLAlchemyError as e:
                logger.warning("rollout tick failed on the database: %s", e)
            except Exception:
                logger.exception("rollout tick failed")
            self._stop.wait(
                next_wait_s(
                    self.tick_interval_s,
                    elapsed_s=time.monotonic() - started,
                    cpu_s=time.thread_time() - cpu_started,
                    lease_s=self.lease.duration.total_seconds(),
                )
            )

    # -- one tick ----------------------------------------------------------------------

    def tick(self) -> int:
        """Renew the lease and, if held, drive every active rollout once.

        Returns how many rollouts were driven (0 when another replica holds the lease).
        Raises `sqlalchemy.exc.SQLAlchemyError` when the database fails.
        """
        if not self._hold():
            self._recovered = False
            if self._metrics is not None:
                self._metrics.set_active(None)  # the holder reports the rollouts
            return 0
        rollouts: list[StoredRollout] = []
        try:
            if not self._recovered:
                self.recover()
                self._recovered = True
            with self._engine.connect() as conn:
                rollouts, unreadable = load_active_checked(conn)
            self._events.retain(r.id for r in rollouts)
            if self._metrics is not None:
                self._metrics.set_active([r.state for r in rollouts])
            for broken in unreadable:
                self._pause_unreadable(broken)
            for stored in rollouts:
                if self._stop.is_set():
                    break
                try:
                    self._drive(stored)
                except _DecidingError as e:  # this rollout's own failure: pause it only
                    self._pause_on_error(stored, e.__cause__ or e)
        except LeaseLostError:
            logger.warning("%s lost the orchestrator lease mid-tick; stopped acting", self.holder)
            self._recovered = False
        return len(rollouts) if self.lease.held else 0

    def recover(self) -> None:
        """Make sure every action the stored states still expect was carried out
        (re-publishing stored desired states; see the module docstring)."""
        with self._engine.connect() as conn:
            rollouts, _ = load_active_checked(conn)  # the tick pauses the unreadable ones
        for stored in rollouts:
            try:
                actions = unconfirmed_actions(stored.state)
            except Exception as e:  # a bad state pauses its own rollout only
                self._pause_on_error(stored, e)
                continue
            if actions:
                logger.info(
                    "rollout %s: re-doing %s unconfirmed action(s)", stored.id, len(actions)
                )
                self._perform(stored.state, actions, recovering=True)

    def _renew(self) -> bool:
        self._renewed_at = time.monotonic()
        return self.lease.try_acquire()

    def _renewal_due(self) -> bool:
        return time.monotonic() - self._renewed_at >= self.lease.duration.total_seconds() / 3

    def _hold(self) -> bool:
        """Whether this replica holds the lease: the holder renews it once a third of it
        has passed (it still has two thirds to run, and every save re-checks it in its
        transaction); a replica without it tries to take it every tick. Renewing at every
        tick cost a write transaction each half second for nothing."""
        if self.lease.held and not self._renewal_due():
            return True
        return self._renew()

    def _renew_if_due(self) -> None:
        if self._renewal_due() and not self._renew():
            raise LeaseLostError(self.holder)

    def _drive(self, stored: StoredRollout) -> None:
        """Decide ``stored`` once, save, then act. Raises `_DecidingError` (from what went
        wrong) when carrying out the decision is not reached: see the module docstring."""
        try:
            decision = self._decide_and_save(stored)
        except (LeaseLostError, *DATABASE_DOWN):
            raise
        except Exception as e:
            raise _DecidingError(stored.id) from e
        if decision is None:
            return
        retries = self._due_retries(decision.state)
        self._perform(decision.state, [*retries, *decision.actions], recovering=bool(retries))

    def _decide_and_save(self, stored: StoredRollout) -> Decision | None:
        """The decision for ``stored``, saved; None when another writer got there first."""
        now = self._clock()
        with self._engine.connect() as conn:
            observations = observe(
                conn,
                stored.state,
                now=now,
                offline_after_s=self.offline_after_s,
                cache=self._events,
            )
            metrics = wave_metrics(conn, stored.state)
            model = stored.state.spec.model
            lifecycle = model_state(conn, model.name, model.version)
        decision = decide(stored.state, observations, metrics, now, model_state=lifecycle)
        if decision.state != stored.state or decision.actions:
            # Reading and deciding a 10,000-device rollout on a busy replica can outlast
            # what was left of the lease since the tick began (the benchmark at that size
            # lost it mid-tick and re-did its actions): renew it first if due.
            self._renew_if_due()
            with self._engine.begin() as conn:
                if not self.lease.holds(conn):
                    raise LeaseLostError(self.holder)
                try:
                    saved = save(
                        conn,
                        stored,
                        decision.state,
                        decision_lines(decision, now),
                        decision_audit(stored.state, decision),
                    )
                except StaleRolloutError as e:
                    logger.debug("%s; deciding again next tick", e)
                    return None
            # Committed: the next tick (and the API) need not read and parse it back.
            committed(self._engine, saved)
            if self._metrics is not None:
                self._metrics.record(stored.state, decision, now)
            if decision.state.status != stored.state.status:
                logger.info(
                    "rollout %s: %s -> %s",
                    stored.id,
                    stored.state.status.value,
                    decision.state.status.value,
                )
        return decision

    # -- isolation ---------------------------------------------------------------------

    def _pause_on_error(self, stored: StoredRollout, error: BaseException) -> None:
        """Pause ``stored`` with ``error`` recorded (see the module docstring). A failure to
        pause is logged and left to the next tick; a lost lease or database propagates."""
        now = self._clock()
        reason = _reason(error)
        try:
            decision = pause_for_error(stored.state, reason, now)
            if decision.state == stored.state:
                logger.debug("rollout %s stays paused: %s", stored.id, reason)
                return
            logger.error("rollout %s: deciding failed, pausing it", stored.id, exc_info=error)
            lines = [_error_line(error, stored.state.status.value, now)]
            lines += decision_lines(decision, now)
            with self._engine.begin() as conn:
                if not self.lease.holds(conn):
                    raise LeaseLostError(self.holder)
                saved = save(
                    conn, stored, decision.state, lines, decision_audit(stored.state, decision)
                )
            committed(self._engine, saved)
        except StaleRolloutError as e:
            logger.info(
                "rollout %s changed while being paused (%s); next tick decides", stored.id, e
            )
            return
        except (LeaseLostError, *DATABASE_DOWN):
            raise
        except Exception:  # the next tick tries again; the others go on
            logger.exception("rollout %s: could not be paused after its error", stored.id)
            return
        self._alert(stored.id, stored.state.status.value, error, reason)

    def _pause_unreadable(self, broken: UnreadableRollout) -> None:
        """Pause a rollout whose stored state does not parse, once per distinct error."""
        reason = _reason(broken.error)
        # A state that is not even a JSON object cannot hold the reason: paused is enough.
        if broken.status == RolloutStatus.PAUSED.value and broken.status_reason in (reason, None):
            logger.debug("rollout %s stays paused: its state does not parse", broken.id)
            return
        logger.error(
            "rollout %s: its stored state does not parse, pausing it: %s", broken.id, reason
        )
        now = self._clock()
        lines = [
            _error_line(broken.error, broken.status, now),
            HistoryLine(kind="paused", ts=now, message=reason),
        ]
        try:
            with self._engine.begin() as conn:
                if not self.lease.holds(conn):
                    raise LeaseLostError(self.holder)
                if not pause_unreadable(conn, broken, reason, lines):
                    return  # written in between: the next tick reads it again
                append_audit(
                    conn,
                    AuditRecord(
                        actor=SYSTEM_ACTOR,
                        action="rollout.paused",
                        object=AuditObject(kind="rollout", id=broken.id),
                        before={"status": broken.status},
                        after={"status": RolloutStatus.PAUSED.value, "status_reason": reason},
                    ),
                    now=now,
                )
        except (LeaseLostError, *DATABASE_DOWN):
            raise
        except Exception:  # the next tick tries again; the others go on
            logger.exception("rollout %s: could not be paused after its error", broken.id)
            return
        self._alert(broken.id, broken.status, broken.error, reason)

    def _alert(self, rollout_id: str, status: str, error: BaseException, reason: str) -> None:
        if self._alerts is None:
            return
        message = AlertMessage(
            id=uuid.uuid4().hex,
            kind=ALERT_KIND,
            severity="critical",
            message=f"rollout {rollout_id} {reason}",
            ts=self._clock(),
            evidence={
                "rollout_id": rollout_id,
                "status_before": status,
                "error": type(error).__name__,
                "detail": _text(error),
            },
        )
        try:
            self._alerts.publish_alert(message)
        except Exception as e:  # the pause is stored; the alert is best effort
            logger.warning(
                "rollout %s is paused but its alert was not published: %s", rollout_id, e
            )

    def _due_retries(self, state: RolloutState) -> list[Action]:
        if not any(key[0] == state.rollout_id for key in self._retry):
            return []  # the usual case: spare listing every in-flight device each tick
        expected = unconfirmed_actions(state)
        due: list[Action] = []
        for key, action in list(self._retry.items()):
            if key[0] != state.rollout_id:
                continue
            del self._retry[key]
            if action in expected:
                due.append(action)
        return due

    # -- carrying out ------------------------------------------------------------------

    def _perform(self, state: RolloutState, actions: list[Action], *, recovering: bool) -> None:
        lines: list[HistoryLine] = []
        batches: dict[tuple[str, bool], list[Assign | RollBack]] = {}
        for action in actions:
            if not isinstance(action, Assign | RollBack):
                continue
            if isinstance(action, RollBack) and action.to_version is None:
                lines.append(self._skipped(state, action))
                continue
            batches.setdefault(_destination(state, action), []).append(action)
        try:
            for (version, rollback), batch in batches.items():
                for start in range(0, len(batch), PUBLISH_BATCH):
                    self._renew_if_due()
                    chunk = batch[start : start + PUBLISH_BATCH]
                    for action, line in zip(
                        chunk,
                        self._publish(state, version, rollback, chunk, recovering=recovering),
                        strict=True,
                    ):
                        lines.append(line)
                        if line.kind == "action_failed":
                            self._retry[(state.rollout_id, action.device_id)] = action
        finally:
            if lines:
                with self._engine.begin() as conn:
                    append(conn, state.rollout_id, lines)

    def _skipped(self, state: RolloutState, action: Assign | RollBack) -> HistoryLine:
        return HistoryLine(
            kind="rollback_skipped",
            ts=self._clock(),
            device_id=action.device_id,
            wave=state.devices[action.device_id].wave,
            message=f"device ran no {state.spec.model.name} before this rollout: there is "
            "no earlier version to roll back to, and the protocol has no uninstall",
        )

    def _publish(
        self,
        state: RolloutState,
        version: str,
        rollback: bool,
        actions: list[Assign | RollBack],
        *,
        recovering: bool,
    ) -> list[HistoryLine]:
        """Carry out one batch of actions that send their devices to the same version.

        A device whose stored desired state is already this one (same rollout, target
        and rollback flag: the action was carried out before a crash) gets it
        re-published with its seq, never signed again; the others get a new one.
        Returns one history line per action, in order.
        """
        now = self._clock()
        ids = [a.device_id for a in actions]
        outcomes: dict[str, SignedDesiredState | FleetError] = {}
        republished: set[str] = set()
        try:
            target = self._registry.published_target(state.spec.model.name, version)
            current = self._director.current_many(ids)
            republished = {
                d
                for d, envelope in current.items()
                if envelope.signed.rollout_id == state.rollout_id
                and envelope.signed.rollback == rollback
                and envelope.signed.target.sha256 == target.sha256
            }
            if republished:
                outcomes.update(self._director.republish_many(sorted(republished)))
            fresh = [d for d in ids if d not in republished]
            if fresh:
                outcomes.update(
                    self._director.assign_many(
                        fresh, target, rollout_id=state.rollout_id, rollback=rollback
                    )
                )
        except FleetError as e:
            outcomes = {d: outcomes.get(d, e) for d in ids}
        what = "rollback to" if rollback else "assigned"
        lines = []
        for action in actions:
            device_id = action.device_id
            wave = state.devices[device_id].wave
            outcome = outcomes[device_id]
            if isinstance(outcome, FleetError):
                logger.warning(
                    "rollout %s: %s of %s failed: %s",
                    state.rollout_id,
                    action.kind,
                    device_id,
                    outcome,
                )
                lines.append(
                    HistoryLine(
                        kind="action_failed",
                        ts=now,
                        device_id=device_id,
                        wave=wave,
                        message=f"{action.kind} to {version} failed: {outcome}",
                        detail={"action": action.kind, "version": version, "error": outcome.code},
                    )
                )
                continue
            again = device_id in republished
            seq = outcome.signed.seq
            lines.append(
                HistoryLine(
                    kind="desired_republished" if again else "desired_published",
                    ts=now,
                    device_id=device_id,
                    wave=wave,
                    message=f"{what} {version} (desired seq {seq})"
                    + (" re-published after a restart" if again else ""),
                    detail={
                        "seq": seq,
                        "version": version,
                        "rollback": rollback,
                        "republished": again,
                        "recovering": recovering,
                        "by": self.holder,
                    },
                )
            )
        return lines


def decision_audit(before: RolloutState, decision: Decision) -> list[AuditRecord]:
    """The audit entries of an orchestrator decision, actor ``system``: one per
    rollout-level step of it (wave started, gate passed or failed, held, paused,
    rolling back, rolled back, completed, failed), none per device step."""
    records = []
    for entry in decision.timeline:
        if entry.device_id is not None:
            continue
        records.append(
            AuditRecord(
                actor=SYSTEM_ACTOR,
                action=f"rollout.{entry.event}"[:64],
                object=AuditObject(kind="rollout", id=before.rollout_id),
                before={"status": before.status.value, "current_wave": before.current_wave},
                after={**snapshot(decision.state), "wave": entry.wave, "message": entry.message},
            )
        )
    return records


class _DecidingError(Exception):
    """Reading or deciding a rollout failed (the cause is chained): pause it."""


def _text(error: BaseException) -> str:
    text = " ".join(str(error).split()) or repr(error)
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def _reason(error: BaseException) -> str:
    return f"paused: deciding it failed with {type(error).__name__}: {_text(error)}"


def _error_line(error: BaseException, status: str, now: datetime) -> HistoryLine:
    return HistoryLine(
        kind="decide_failed",
        ts=now,
        message=f"deciding the rollout failed with {type(error).__name__}: {_text(error)}",
        detail={"error": type(error).__name__, "detail": _text(error), "status_before": status},
    )


def _destination(state: RolloutState, action: Assign | RollBack) -> tuple[str, bool]:
    """The version an action sends its device to, and whether that is a rollback."""
    if isinstance(action, RollBack):
        assert action.to_version is not None
        return action.to_version, True
    return state.spec.model.version, False
