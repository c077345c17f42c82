"""What the orchestrator reads from the database for one tick of one rollout.

`observe` turns the device registry (``device``), the deployment events devices reported
(``device_event``) and the director's desired states (``desired_state``) into one
`DeviceObservation` per target; `wave_metrics` turns telemetry (``telemetry``) into the
`WaveMetrics` the gate's guards compare. The reads a tick repeats run on the database
driver (`edgefleet.fleet.rollout_service.reads`); what did not change since the previous
tick is kept (`EventCache`).

Rules (devices report events on their own per-device ``seq``, shared by every channel,
so a birth state and an event can be ordered by it):
- **online**: the device's last state said online and it was heard from within
  ``offline_after_s``;
- **current version** of the rollout's model: the version in the device's birth state,
  replaced by each later event of this rollout that shows a version active
  (``committed``, ``healthy``, or ``info`` "already active"); a ``failed`` or
  ``rolled_back`` event leaves it unchanged (the device kept, or went back to, what it
  ran). ``previous_version`` is the one it replaced. A model is the rollout's target
  when its package sha256 is the target's (`edgefleet.shared.messages.ModelRef`), and
  another version of the model when its manifest name is the target's; names are never
  parsed;
- **last event**: the newest event of this rollout other than ``info`` (progress notes),
  with the fleet's receive time, so it compares with assignment times on the fleet's
  clock;
- **assigned_at**: for a device the rollout's state has not assigned, when the director
  stored a non-rollback desired state of this rollout for it (lets a rollout adopt an
  assignment its state lost); None for the others.

Metrics: error rate = errors / inferences; latency p95 = the 95th percentile (nearest
rank) of the devices' reported per-interval p95s. The candidate is the target version
on the current wave's devices since their first assignment; the baseline is the most
common previous version on the same devices since ``baseline_lookback_s`` before the
wave started.

Drift score (only when the wave's gate has ``max_drift_score``; the candidate only):
- the windows: every stored drift window (``drift_window``) of a device of the current
  wave, of the rollout's model at the target version, received (fleet clock, as for
  telemetry: device clocks may be skewed) at or after that device's assignment, and
  counted against the version's reference profile (`edgefleet.fleet.drift.store.get_reference`,
  stored when its package was uploaded); windows counted against another profile, or
  whose sketch does not parse, are left out;
- merged by addition (`edgefleet.shared.drift.merge_all`) and judged by
  `edgefleet.shared.drift.evaluate` with the model's drift thresholds
  (`edgefleet.fleet.drift.store.get_thresholds`; ignored features stay out);
- the score is the largest PSI of any input or output feature of that merge, and
  ``drift_feature`` names it. PSI is the drift thresholds' primary signal: it is first
  in their default ``alert_on`` and, unlike KS, defined for categorical features
  (predicted classes) too, so one scale covers every feature (0.1 warn, 0.25 alert);
- no reference profile, no windows, fewer merged rows than the thresholds'
  ``min_count``, or windows that do not fit the profile → no score
  (``drift_unavailable`` says which); ``drift_samples`` is the merged row count. The
  gate waits for a score and fails ``metrics_timeout_s`` after the soak without one.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, func, select
from sqlmodel import Session, col

from edgefleet.fleet.drift.store import get_reference, get_thresholds
from edgefleet.fleet.errors import NotFoundError
from edgefleet.fleet.rollout_service import reads
from edgefleet.fleet.rollouts.model import (
    DeviceObservation,
    ModelTarget,
    RolloutState,
    VersionMetrics,
    WaveMetrics,
)
from edgefleet.fleet.store.tables import DriftWindowRow, EventRow, TelemetryRow
from edgefleet.shared.drift import SketchMismatchError, WindowSketch, evaluate, merge_all
from edgefleet.shared.messages import EventKind
from edgefleet.shared.replace import replace

CHUNK = 500
ACTIVE_EVENTS = frozenset({EventKind.COMMITTED.value, EventKind.HEALTHY.value})
ALREADY_ACTIVE = "already active"
BASELINE_LOOKBACK_S = 3600.0


@dataclass
class _Fold:
    current: str | None
    previous: str | None = None
    kind: EventKind | None = None
    at: datetime | None = None

    def activate(self, version: str | None) -> None:
        if version is not None and version != self.current:
            self.previous, self.current = self.current, version


class EventCache:
    """The deployment events of each rollout read so far, so a tick reads only new ones.

    A 1,000-device rollout collects ~10,000 events; reading and folding all of them
    every tick was a third of the fleet's CPU during the rollout benchmark. Each tick
    now lists the keys ``(device, seq)`` of the events received since ``overlap_s``
    before the newest one already seen (ingest batches commit out of receive order, by
    less than that) and reads in full only the events it has not seen (by primary key,
    `edgefleet.fleet.rollout_service.reads`), so a re-read changes nothing and costs two
    small columns a row. On SQLite, which numbers rows in commit order, a tick reads instead exactly
    the events stored after the last one it read (`reads.events_inserted_after`):
    listing the window still scanned every event of the rollout there. In case a write
    lagged by more than the overlap (an ingester retrying through a database outage),
    or SQLite renumbered rows (``VACUUM``), every ``full_every_s`` the cache lists the
    keys of all the rollout's events again. Events are never changed nor deleted once
    stored, so one read of an event is enough.

    Each device's observation is kept with what it was made from (its registry row, as
    `reads.device_rows` reads it, and the time of an assignment to adopt) and made
    again only when one of those or the device's events changed.
    """

    def __init__(
        self,
        *,
        overlap_s: float = 10.0,
        full_every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._overlap = timedelta(seconds=overlap_s)
        self._full_every_s = full_every_s
        self._clock = clock
        self._rollouts: dict[str, _RolloutEvents] = {}

    def retain(self, rollout_ids: Iterable[str]) -> None:
        """Forget every rollout not in ``rollout_ids`` (no longer active)."""
        keep = set(rollout_ids)
        for rollout_id in list(self._rollouts):
            if rollout_id not in keep:
                del self._rollouts[rollout_id]

    def events_of(self, conn: Connection, rollout_id: str) -> _RolloutEvents:
        """The rollout's events, after reading what is new (see the class docstring)."""
        entry = self._rollouts.get(rollout_id)
        mono = self._clock()
        if entry is None:
            entry = self._rollouts[rollout_id] = _RolloutEvents(read_in_full_at=mono)
            entry.inserted = reads.last_insert(conn)  # before reading: nothing slips by
            _read_events(conn, entry, rollout_id)
            return entry
        if mono - entry.read_in_full_at >= self._full_every_s:
            entry.read_in_full_at = mono
            if entry.inserted is not None:
                entry.inserted = reads.last_insert(conn)
            self._add_unseen(conn, entry, rollout_id, None)
        elif entry.inserted is not None:
            events, entry.inserted = reads.events_inserted_after(conn, rollout_id, entry.inserted)
            entry.add(events)
        elif entry.newest is None:
            self._add_unseen(conn, entry, rollout_id, None)
        else:
            self._add_unseen(conn, entry, rollout_id, entry.newest - self._overlap)
        return entry

    @staticmethod
    def _add_unseen(
        conn: Connection, entry: _RolloutEvents, rollout_id: str, since: datetime | None
    ) -> None:
        """Read the events of ``rollout_id`` received since ``since`` that ``entry`` lacks."""
        by_device = entry.by_device
        unseen = [
            key
            for key in reads.event_keys(conn, rollout_id, since)
            if key.seq not in by_device.get(key.device_id, ())
        ]
        entry.add(reads.events(conn, unseen))


def _read_events(conn: Connection, entry: _RolloutEvents, rollout_id: str) -> None:
    """Add every event of ``rollout_id`` to ``entry`` (the plain query, read once)."""
    entry.add(
        conn.execute(
            select(
                col(EventRow.device_id),
                col(EventRow.seq),
                col(EventRow.kind),
                col(EventRow.model_version),
                col(EventRow.model_sha256),
                col(EventRow.received_at),
                col(EventRow.reason),
            ).where(col(EventRow.rollout_id) == rollout_id)
        )
    )


# What an observation is made from besides the device's events: its registry row (None
# if it has none) and the time of an assignment to adopt.
_Inputs = tuple[reads.DeviceRow | None, datetime | None]


@dataclass
class _RolloutEvents:
    read_in_full_at: float
    by_device: dict[str, dict[int, Any]] = field(default_factory=dict)
    newest: datetime | None = None
    # Where the database numbers rows in commit order (`reads.last_insert`): the number
    # up to which every event stored has been read.
    inserted: int | None = None
    # Devices with events not yet folded into their observation.
    changed: set[str] = field(default_factory=set)
    # The last observation made of each device, with its inputs: reused while they and
    # its events are the same (folding and building a thousand pydantic models a tick
    # showed in the profile).
    observations: dict[str, tuple[_Inputs, DeviceObservation]] = field(default_factory=dict)

    def add(self, events: Iterable[Any]) -> None:
        """Keep ``events`` (rows with the columns of `reads.EventRead`) not seen yet."""
        for event in events:
            seen = self.by_device.setdefault(event.device_id, {})
            if event.seq not in seen:
                seen[event.seq] = event
                self.changed.add(event.device_id)
            if self.newest is None or event.received_at > self.newest:
                self.newest = event.received_at

    def observation(
        self,
        device_id: str,
        device: reads.DeviceRow | None,
        model: ModelTarget,
        *,
        assigned_at: datetime | None,
    ) -> DeviceObservation:
        """The observation of ``device_id`` (``device``: its registry row, or None)."""
        inputs: _Inputs = (device, assigned_at)
        last = self.observations.get(device_id)
        if last is not None and last[0] == inputs and device_id not in self.changed:
            return last[1]
        events = self.by_device.get(device_id, {})
        fold = _fold(device, [events[seq] for seq in sorted(events)], model)
        self.changed.discard(device_id)
        online = device is not None and device.online
        if last is not None and _same(last[1], fold, online=online, assigned_at=assigned_at):
            new = last[1]
        else:
            new = DeviceObservation(
                device_id=device_id,
                online=online,
                last_event_kind=fold.kind,
                last_event_at=fold.at,
                current_version=fold.current,
                previous_version=fold.previous,
                assigned_at=assigned_at,
            )
        self.observations[device_id] = (inputs, new)
        return new


def _same(
    last: DeviceObservation, fold: _Fold, *, online: bool, assigned_at: datetime | None
) -> bool:
    return (
        last.online == online
        and last.last_event_kind == fold.kind
        and last.last_event_at == fold.at
        and last.current_version == fold.current
        and last.previous_version == fold.previous
        and last.assigned_at == assigned_at
    )


def observe(
    conn: Connection,
    state: RolloutState,
    *,
    now: datetime,
    offline_after_s: float,
    cache: EventCache | None = None,
) -> dict[str, DeviceObservation]:
    """One observation per target device that the fleet has heard of.

    ``cache`` (kept across calls by the orchestrator) makes a call read only the events
    that are new since the previous one, and reuse the observations whose inputs did
    not change; without it every event is read.
    """
    model = state.spec.model
    cutoff = now - timedelta(seconds=offline_after_s)
    devices = reads.device_rows(conn, state.targets, cutoff)
    events = (cache or EventCache()).events_of(conn, state.rollout_id)
    assigned: dict[str, datetime] = {}
    # Only a device our state has not assigned can have an assignment to adopt; reading
    # every desired state of the rollout (and its JSON body) each tick was a hot spot.
    unassigned = [d for d, r in state.devices.items() if r.assigned_at is None]
    for desired in reads.desired_states(conn, state.rollout_id, unassigned):
        body = desired.body
        if isinstance(body, dict) and not body.get("rollback", False):
            assigned[desired.device_id] = desired.updated_at
    observations: dict[str, DeviceObservation] = {}
    by_device = events.by_device
    for device_id in state.targets:
        device = devices.get(device_id)
        if device is None and device_id not in by_device:
            continue
        observations[device_id] = events.observation(
            device_id, device, model, assigned_at=assigned.get(device_id)
        )
    return observations


def _fold(device: Any, events: Sequence[Any], model: ModelTarget) -> _Fold:
    fold = _Fold(current=_running(device, model))
    state_seq = device.last_state_seq if device is not None else None
    for event in events:
        if event.kind == EventKind.INFO.value:
            if event.reason == ALREADY_ACTIVE and (state_seq is None or event.seq > state_seq):
                fold.activate(_version(event, model))
            continue
        fold.kind = EventKind(event.kind)
        fold.at = event.received_at
        if event.kind in ACTIVE_EVENTS and (state_seq is None or event.seq > state_seq):
            fold.activate(_version(event, model))
    return fold


def _running(device: Any, model: ModelTarget) -> str | None:
    """The version of ``model`` the device's birth state says it runs, or None.

    The package's sha256 identifies the target itself; another version of the model
    (the one a rollout replaces) is known by its manifest name, which is what a birth
    state's ``name`` always carried.
    """
    if device is None:
        return None
    if model.sha256 is not None and device.model_sha256 == model.sha256:
        return model.version
    return device.model_version if device.model_name == model.name else None


def _version(event: Any, model: ModelTarget) -> str | None:
    """The version an event of this rollout shows: the target's when the event's sha256
    is the target's, else the one it reports (a rollback's previous version).

    By sha256, not by name: agents before `ModelRef.target` put the target name in the
    event's ``name``, newer ones the manifest name; both carry the package's sha256.
    """
    if model.sha256 is not None and event.model_sha256 == model.sha256:
        return model.version
    version: str | None = event.model_version
    return version


def wave_metrics(
    conn: Connection,
    state: RolloutState,
    *,
    baseline_lookback_s: float = BASELINE_LOOKBACK_S,
) -> WaveMetrics | None:
    """Metrics of the current wave, or None when its gate has no metric guard."""
    wave = state.current_wave
    if wave < 0 or not state.waves[wave].gate.has_metric_guards:
        return None
    members = [r for r in state.wave_members(wave) if r.assigned_at is not None]
    if not members:
        return None
    ids = [r.device_id for r in members]
    target = state.spec.model.version
    first = min(r.assigned_at for r in members if r.assigned_at is not None)
    candidate = _version_metrics(conn, ids, target, first)
    if state.waves[wave].gate.max_drift_score is not None:
        assigned = {r.device_id: r.assigned_at for r in members if r.assigned_at is not None}
        candidate = replace(
            candidate, **drift_score(conn, state.spec.model.name, target, assigned).fields()
        )
    previous = Counter(
        r.from_version for r in members if r.from_version is not None and r.from_version != target
    )
    baseline = None
    if previous:
        version = previous.most_common(1)[0][0]
        started = state.wave_started_at or first
        since = started - timedelta(seconds=baseline_lookback_s)
        baseline = _version_metrics(conn, ids, version, since)
    return WaveMetrics(wave=wave, candidate=candidate, baseline=baseline)


def _version_metrics(
    conn: Connection, device_ids: Sequence[str], version: str, since: datetime
) -> VersionMetrics:
    inferences = errors = 0
    p95s: list[float] = []
    for chunk in _chunks(device_ids):
        where = (
            col(TelemetryRow.device_id).in_(chunk),
            col(TelemetryRow.model_version) == version,
            col(TelemetryRow.received_at) >= since,
        )
        totals = conn.execute(
            select(
                func.coalesce(func.sum(TelemetryRow.inferences), 0),
                func.coalesce(func.sum(TelemetryRow.errors), 0),
            ).where(*where)
        ).one()
        inferences += int(totals[0])
        errors += int(totals[1])
        p95s += [
            float(v)
            for (v,) in conn.execute(
                select(col(TelemetryRow.latency_p95_ms)).where(
                    *where, col(TelemetryRow.latency_p95_ms).is_not(None)
                )
            )
            if v is not None
        ]
    return VersionMetrics(
        version=version,
        error_rate=min(1.0, errors / inferences) if inferences else None,
        latency_p95_ms=_nearest_rank(p95s, 0.95),
        inference_samples=inferences,
    )


@dataclass(frozen=True)
class DriftScore:
    """The drift fields of a `VersionMetrics` (see the module docstring)."""

    score: float | None = None
    feature: str | None = None
    samples: int = 0
    unavailable: str | None = None

    def fields(self) -> dict[str, Any]:
        """As `VersionMetrics` field updates."""
        return {
            "drift_score": self.score,
            "drift_feature": self.feature,
            "drift_samples": self.samples,
            "drift_unavailable": self.unavailable,
        }


def drift_score(
    conn: Connection, model: str, version: str, assigned: Mapping[str, datetime]
) -> DriftScore:
    """The drift score of ``model`` ``version`` over the windows of the devices in
    ``assigned`` received since their assignment (see the module docstring).

    Never raises for missing or bad data (that is a score-less `DriftScore` saying why);
    raises `sqlalchemy.exc.SQLAlchemyError` when the database fails.
    """
    session = Session(bind=conn)
    try:
        reference = get_reference(session, model, version)
        thresholds = get_thresholds(session, model)
    except NotFoundError:
        return DriftScore(unavailable=f"no reference profile for {model} {version}")
    finally:
        session.close()
    sketches, skipped = _sketches(conn, model, version, assigned, reference.profile_id)
    left_out = f", {skipped} window(s) of another profile left out" if skipped else ""
    if not sketches:
        return DriftScore(unavailable=f"no drift windows since assignment{left_out}")
    try:
        report = evaluate(reference, merge_all(sketches), thresholds)
    except SketchMismatchError as e:
        return DriftScore(unavailable=f"windows do not fit the reference profile: {e}")
    if not report.judged:
        return DriftScore(
            samples=report.count,
            unavailable=f"{report.count} rows, the drift thresholds judge from "
            f"{thresholds.min_count}{left_out}",
        )
    scored = [v.scores for v in report.features if v.scores.psi is not None]
    if not scored:
        return DriftScore(samples=report.count, unavailable="no feature has values to score")
    worst = max(scored, key=lambda f: f.psi or 0.0)
    return DriftScore(
        score=max(0.0, worst.psi or 0.0),
        feature=f"{worst.role} {worst.name}",
        samples=report.count,
    )


def _sketches(
    conn: Connection,
    model: str,
    version: str,
    assigned: Mapping[str, datetime],
    profile_id: str,
) -> tuple[list[WindowSketch], int]:
    """The parseable sketches counted against ``profile_id``, and how many were not."""
    if not assigned:
        return [], 0
    sketches: list[WindowSketch] = []
    skipped = 0
    first = min(assigned.values())
    for chunk in _chunks(sorted(assigned)):
        rows = conn.execute(
            select(
                col(DriftWindowRow.device_id),
                col(DriftWindowRow.model_name),
                col(DriftWindowRow.received_at),
                col(DriftWindowRow.sketch),
            ).where(
                col(DriftWindowRow.device_id).in_(chunk),
                col(DriftWindowRow.model_version) == version,
                col(DriftWindowRow.received_at) >= first,
            )
        )
        for row in rows:
            # Drift windows name the model the agent serves by its manifest name (they
            # never carried a target name), and the query matched the version.
            if row.received_at < assigned[row.device_id] or row.model_name != model:
                continue
            sketch = _sketch(row.sketch)
            if sketch is None:
                continue
            if sketch.profile_id != profile_id:
                skipped += 1
                continue
            sketches.append(sketch)
    return sketches, skipped


def _sketch(value: Any) -> WindowSketch | None:
    if not value:
        return None  # agents before drift sketches
    try:
        return WindowSketch.model_validate(value)
    except ValidationError:
        return None


def _nearest_rank(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _chunks(items: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), CHUNK):
        yield list(items[start : start + CHUNK])
