"""The agent's drift timer: fold windows off the request path and queue closed ones.

`DriftPublisher` owns no model: `ModelHost` asks it for a monitor when a model starts
serving (`monitor_for`) and hands the monitor back when the model stops (`retired`,
which closes and publishes the window at once). Its timer thread (`run`) calls
`DriftMonitor.maybe_close` on the active monitor every ``tick_s``, which folds what the
inferences buffered and closes the window when it is full or old enough.

Invariants:
- a closed window is queued as one `DriftMessage` through the agent's outbox (QoS 1),
  so a broker outage or a reboot after the close loses nothing; its floats are rounded
  (`edgefleet.shared.drift.compact.quantize`) and it travels in the compact form;
- one lock serialises the timer and retirements, so a window is closed once, by
  whichever comes first;
- window times on the wire are wall-clock (UTC): the monitor's monotonic opening time
  is converted when the window closes, so a clock step during a window moves only its
  start, never its length.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from edgefleet.agent.config import DriftConfig
from edgefleet.agent.drift_monitor import DriftMonitor
from edgefleet.agent.model_host import ActiveModel, ModelHost
from edgefleet.shared.drift import ReferenceProfile, WindowSketch
from edgefleet.shared.drift.compact import quantize
from edgefleet.shared.messages import DeviceMessageBase, DriftMessage, ModelRef, utcnow
from edgefleet.shared.topics import Channel

log = logging.getLogger(__name__)

MAX_WINDOWS_PER_TICK = 16

Enqueue = Callable[[Channel, Callable[[int], DeviceMessageBase]], "int | None"]


class DriftPublisher:
    """Builds monitors for profiled models and publishes their closed windows."""

    def __init__(
        self,
        *,
        device_id: str,
        config: DriftConfig,
        enqueue: Enqueue,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._device_id = device_id
        self._config = config
        self._enqueue = enqueue
        self._clock = clock
        self._lock = threading.Lock()
        self.published = 0

    def monitor_for(self, profile: ReferenceProfile | None) -> DriftMonitor | None:
        """A monitor for a model with ``profile`` (None when off or there is no profile)."""
        config = self._config
        if not config.enabled or profile is None:
            return None
        return DriftMonitor(
            profile,
            window_s=config.window_s,
            window_count=config.window_count,
            fold_rows=config.fold_rows,
            label_memory=config.label_memory,
            reservoir_size=config.reservoir_size,
            clock=self._clock,
        )

    def retired(self, model: ActiveModel, monitor: DriftMonitor) -> None:
        """Close the window of a model that stopped serving and queue it."""
        with self._lock:
            self._publish(model.ref, monitor, monitor.close())

    def tick(self, host: ModelHost) -> int:
        """Fold the active monitor; queue the windows that closed. Returns how many."""
        with self._lock:
            serving = host.monitored()
            if serving is None:
                return 0
            model, monitor = serving
            queued = 0
            # Bounded: a burst can fill a few windows between ticks; the rest waits.
            for _ in range(MAX_WINDOWS_PER_TICK):
                sketch = monitor.maybe_close()
                if sketch is None:
                    break
                queued += self._publish(model.ref, monitor, sketch)
            return queued

    def run(self, host: ModelHost, stop: threading.Event) -> None:
        """`tick` every ``tick_s`` until ``stop`` is set; never raises."""
        while not stop.wait(self._config.tick_s):
            try:
                self.tick(host)
            except Exception:
                # Drift must never take the agent down; the next tick tries again.
                log.exception("agent %s: drift timer failed", self._device_id)

    def _publish(self, ref: ModelRef, monitor: DriftMonitor, sketch: WindowSketch | None) -> bool:
        if sketch is None or (sketch.count == 0 and sketch.labelled == 0):
            return False
        # Rounded to what the fleet's statistics need before it is encoded: most of the
        # compact form's saving (`edgefleet.shared.drift.compact`); counts stay exact.
        sketch = quantize(sketch, monitor.profile)
        end = utcnow()
        opened = monitor.closed_window_opened_at
        age_s = 0.0 if opened is None else max(0.0, self._clock() - opened)
        start = end - timedelta(seconds=age_s)
        seq = self._enqueue(
            Channel.DRIFT,
            lambda s: DriftMessage(
                device_id=self._device_id,
                seq=s,
                model=ref,
                window_start=start,
                window_end=end,
                count=sketch.count,
                sketch=sketch,
            ),
        )
        if seq is not None:
            self.published += 1
        log.debug(
            "drift window of %s %s queued: %s rows, %s labelled",
            ref.name,
            ref.version,
            sketch.count,
            sketch.labelled,
        )
        return seq is not None
