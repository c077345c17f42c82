"""Builds the periodic `TelemetryMessage` from the metrics, the process and the outbox.

CPU and RSS are the whole process's: when a simulator runs many agents in one
process, each of them reports the shared process's figures.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from edgefleet.agent.metrics import InferenceMetrics
from edgefleet.agent.outbox import Outbox
from edgefleet.agent.process_stats import CpuMeter, rss_bytes
from edgefleet.shared.messages import ModelRef, TelemetryMessage

log = logging.getLogger(__name__)


class TelemetryCollector:
    """Turns the state of one agent into one telemetry message per call of `collect`."""

    def __init__(
        self,
        *,
        device_id: str,
        metrics: InferenceMetrics,
        outbox: Outbox,
        data_dir: Path,
        active_model: Callable[[], ModelRef | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._device_id = device_id
        self._metrics = metrics
        self._outbox = outbox
        self._data_dir = data_dir
        self._active_model = active_model
        self._clock = clock
        self._cpu = CpuMeter()  # its first reading covers the time since here
        self._started = clock()
        self._last = self._started

    def collect(self, seq: int) -> TelemetryMessage:
        """The telemetry for the interval since the previous call, numbered ``seq``."""
        now = self._clock()
        stats = self._metrics.interval()
        interval_s, self._last = now - self._last, now
        try:
            disk_free = shutil.disk_usage(self._data_dir).free
        except OSError as e:
            log.debug("cannot read free disk of %s: %s", self._data_dir, e)
            disk_free = 0
        return TelemetryMessage(
            device_id=self._device_id,
            seq=seq,
            interval_s=interval_s,
            inferences=stats.inferences,
            errors=stats.errors,
            inferences_total=stats.inferences_total,
            errors_total=stats.errors_total,
            latency=stats.latency,
            cpu_percent=self._cpu.percent(),
            rss_bytes=rss_bytes(),
            disk_free_bytes=disk_free,
            outbox_depth=self._outbox.depth,
            outbox_dropped_total=self._outbox.dropped_total,
            uptime_s=now - self._started,
            active_model=self._active_model(),
        )
