"""The drift monitor: every ``interval_s``, judge recent windows per version and slice.

`DriftMonitorService.run_once(now)` looks at the windows that ended in the last
``lookback_s`` for every model version that has some, cuts them into slices (the whole
fleet, each device, each tag, each hardware type by default), merges each slice, judges
it against the version's reference profile with the model's thresholds, and raises the
alerts that `edgefleet.fleet.drift.alerts` decides and the cool-down lets through.

The cool-down reads the stored alerts, so several replicas running the monitor, or a
restarted one, do not repeat each other's alerts beyond a race inside one evaluation.

Isolation: one bad input never stops the evaluation of the others. A slice that cannot
be judged is logged and skipped; when a slice of several devices (the fleet, a tag, a
hardware type) fails, the devices whose own windows cannot be judged are left out of it
(named in the alert's ``excluded_devices``) and the rest is judged; a model version whose
profile, thresholds or alerts fail is skipped and the next one is evaluated. Each failure
is counted in ``edgefleet_drift_evaluation_failures{scope=slice|device|version}``, and the
background thread survives anything a run raises.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import Engine, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col

from edgefleet.fleet.drift.alerts import AlertDecision, apply_cooldown, decide
from edgefleet.fleet.drift.analysis import DeviceScreen, comparable, judge_isolated
from edgefleet.fleet.drift.notify import Notifier
from edgefleet.fleet.drift.rollup import SLICERS, SliceFilter, slices
from edgefleet.fleet.drift.store import (
    get_reference,
    get_thresholds,
    load_windows,
    model_versions_with_windows,
)
from edgefleet.fleet.errors import NotFoundError
from edgefleet.fleet.store.drift_tables import DriftAlert
from edgefleet.shared.drift import DriftError, DriftReport
from edgefleet.shared.messages import utcnow

if TYPE_CHECKING:
    from edgefleet.fleet.observability.metrics import DriftMetrics

logger = logging.getLogger(__name__)

DEFAULT_SLICES = ("fleet", "device", "tag", "hardware")
# How many left-out devices an alert names (the count is always there).
MAX_EXCLUDED_NAMED = 50


class DriftMonitorService:
    """Evaluates recent drift windows and raises alerts, once or on a background thread."""

    def __init__(
        self,
        engine: Engine,
        notifier: Notifier,
        *,
        interval_s: float = 60.0,
        lookback_s: float = 3600.0,
        cooldown_s: float = 3600.0,
        slice_kinds: Sequence[str] = DEFAULT_SLICES,
        registry: CollectorRegistry | None = None,
        metrics: DriftMetrics | None = None,
    ) -> None:
        """``registry`` gets the monitor's failure counter (a private one if None);
        ``metrics`` the scores of every evaluated slice, the alerts and evaluation times.

        Raises `ValueError` for an unknown slice kind or a non-positive interval."""
        unknown = [k for k in slice_kinds if k not in SLICERS]
        if unknown or interval_s <= 0 or lookback_s <= 0 or cooldown_s < 0:
            raise ValueError(
                f"slice kinds must be among {sorted(SLICERS)} (got {list(slice_kinds)}), "
                f"interval_s and lookback_s positive, cooldown_s not negative (got "
                f"{interval_s}, {lookback_s}, {cooldown_s})"
            )
        self._engine = engine
        self._notifier = notifier
        self.interval_s = interval_s
        self.lookback_s = lookback_s
        self.cooldown_s = cooldown_s
        self.slice_kinds = tuple(slice_kinds)
        self._metrics = metrics
        self.failures = Counter(
            "edgefleet_drift_evaluation_failures",
            "drift evaluations that failed and were skipped: a slice, a device left out "
            "of the slices it is in, or a whole model version",
            ["scope"],
            registry=registry if registry is not None else CollectorRegistry(),
        )
        for scope in ("slice", "device", "version"):
            self.failures.labels(scope=scope)  # at zero from the first scrape
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, now: datetime | None = None) -> list[DriftAlert]:
        """Evaluate every version with windows in the lookback; return the alerts raised."""
        started = time.perf_counter()
        now = now or utcnow()
        since = now - timedelta(seconds=self.lookback_s)
        with Session(self._engine) as session:
            versions = model_versions_with_windows(session, since)
        raised: list[DriftAlert] = []
        reports: dict[tuple[str, str, str], DriftReport] = {}
        for model, version in versions:
            try:
                raised.extend(self._run_version(model, version, since, now, reports))
            except Exception:  # one version's failure must not stop the next one
                self.failures.labels(scope="version").inc()
                logger.exception("drift evaluation of %s %s failed; skipped", model, version)
        if self._metrics is not None:
            self._metrics.set_scores(reports)
            self._metrics.record_alerts((a.kind, a.severity) for a in raised)
            self._metrics.evaluation_seconds.observe(time.perf_counter() - started)
        return raised

    def _run_version(
        self,
        model: str,
        version: str,
        since: datetime,
        now: datetime,
        reports: dict[tuple[str, str, str], DriftReport],
    ) -> list[DriftAlert]:
        decisions = self._evaluate_version(model, version, since, now, reports)
        if not decisions:
            return []
        kept = apply_cooldown(
            decisions, self._last_alerted(decisions), now=now, cooldown_s=self.cooldown_s
        )
        return self._notifier.raise_alerts(kept, now) if kept else []

    def _evaluate_version(
        self,
        model: str,
        version: str,
        since: datetime,
        now: datetime,
        reports: dict[tuple[str, str, str], DriftReport],
    ) -> list[AlertDecision]:
        """The alert decisions for one version; each judged slice's report goes into
        ``reports`` under (model, version, slice)."""
        with Session(self._engine) as session:
            try:
                profile = get_reference(session, model, version)
            except NotFoundError:
                logger.debug(
                    "no reference profile for %s %s; its windows are not judged", model, version
                )
                return []
            thresholds = get_thresholds(session, model)
            records = load_windows(
                session, SliceFilter(model=model, version=version, since=since, until=now)
            )
        kept, skipped = comparable(records, profile)
        if skipped:
            logger.warning(
                "%s %s: %s windows were counted against another profile than %s; skipped",
                model,
                version,
                skipped,
                profile.profile_id[:12],
            )
        decisions: list[AlertDecision] = []
        screen = DeviceScreen(kept, profile, thresholds)
        where = f"{model} {version}"
        for slice_key, members in sorted(slices(kept, self.slice_kinds).items()):
            try:
                judged = judge_isolated(members, profile, thresholds, screen)
                if judged is None:
                    continue
                report, merged, excluded = judged.report, judged.merged, judged.excluded
                reports[(model, version, slice_key)] = report
                context: dict[str, object] = {
                    "window_start": merged.start.isoformat(),
                    "window_end": merged.end.isoformat(),
                    "windows": merged.windows,
                    "devices": merged.devices,
                }
                if excluded:
                    context["excluded_devices"] = excluded[:MAX_EXCLUDED_NAMED]
                    context["excluded_count"] = len(excluded)
                decisions.extend(
                    decide(
                        report,
                        model_name=model,
                        model_version=version,
                        slice_key=slice_key,
                        context=context,
                    )
                )
            except Exception as e:  # this slice only: the others are still judged
                self.failures.labels(scope="slice").inc()
                log = logger.warning if isinstance(e, DriftError) else logger.error
                log("%s %s: cannot judge: %s: %s", where, slice_key, type(e).__name__, e)
        for device_id, error in sorted(screen.failed().items()):
            self.failures.labels(scope="device").inc()
            logger.warning(
                "%s: windows of device %s cannot be judged (%s: %s); left out of every "
                "slice it is in",
                where,
                device_id,
                type(error).__name__,
                error,
            )
        return decisions

    def _last_alerted(
        self, decisions: Sequence[AlertDecision]
    ) -> dict[tuple[str, str, str, str], datetime]:
        keys = {d.dedupe_key for d in decisions}
        models = {k[0] for k in keys}
        out: dict[tuple[str, str, str, str], datetime] = {}
        with Session(self._engine) as session:
            rows = session.execute(
                sa_select(
                    col(DriftAlert.model_name),
                    col(DriftAlert.model_version),
                    col(DriftAlert.kind),
                    col(DriftAlert.slice_key),
                    func.max(col(DriftAlert.created_at)),
                )
                .where(col(DriftAlert.model_name).in_(models))
                .group_by(
                    col(DriftAlert.model_name),
                    col(DriftAlert.model_version),
                    col(DriftAlert.kind),
                    col(DriftAlert.slice_key),
                )
            ).all()
        for name, version, kind, slice_key, last in rows:
            key = (name, version, kind, slice_key)
            if key in keys and last is not None:
                out[key] = last
        return out

    def start(self) -> None:
        """Run `run_once` every ``interval_s`` on a daemon thread until `stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="drift-monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread (cutting short a webhook backoff); safe to call twice."""
        self._stop.set()
        self._notifier.close()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:
                # A bad evaluation (database hiccup, corrupt row) must not end monitoring.
                logger.exception(
                    "drift monitor evaluation failed; retrying in %ss", self.interval_s
                )
