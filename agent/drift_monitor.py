"""The device side of drift: fold what the model sees into windows, cheaply.

`observe` only appends references to a buffer (the caller must not mutate the arrays
afterwards; runtimes return fresh ones), so it costs the same at batch 1 as at batch
1000. Every ``fold_rows`` buffered rows, the buffer is concatenated and folded into the
window with vectorised numpy (`shared.drift.WindowAccumulator`). The daemon calls
`maybe_close` on its own schedule; a window closes when it holds ``window_count`` rows
or is ``window_s`` old (from its first row or label, by the monitor's monotonic clock).

Labels arrive late: `observe` remembers the outputs of the last ``label_memory``
request ids (LRU), and `record_label` joins a label to them. A label counts in the
window in which it arrives, not the one its prediction fell in, so a closed window is
never reopened.

A batch that does not fit the profile is dropped whole, counted in `rejected_rows` and
logged; it never takes the other buffered rows down with it. No I/O, no threads: one
lock makes the monitor safe to call from the inference threads and the daemon.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from shared.drift import DriftError, ReferenceProfile, WindowAccumulator, WindowSketch

log = logging.getLogger(__name__)

Tensors = Mapping[str, NDArray[np.generic]]


class DriftMonitor:
    """Windows of drift counts for one model version against its reference profile."""

    def __init__(
        self,
        profile: ReferenceProfile,
        *,
        window_s: float = 300.0,
        window_count: int = 10_000,
        fold_rows: int = 1024,
        label_memory: int = 10_000,
        reservoir_size: int = 0,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_s <= 0 or window_count < 1 or fold_rows < 1 or label_memory < 0:
            raise ValueError(
                f"window_s={window_s}, window_count={window_count}, fold_rows={fold_rows} "
                f"and label_memory={label_memory} must be positive"
            )
        self.profile = profile
        self.window_s = window_s
        self.window_count = window_count
        self.fold_rows = fold_rows
        self.label_memory = label_memory
        self.reservoir_size = reservoir_size
        self._clock = clock
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._accumulator = WindowAccumulator(profile)
        tensors = [f.tensor for f in profile.inputs]
        self._input_tensor = tensors[0]
        label_tensors = []
        if profile.labels is not None:
            label_tensors = [profile.labels.prediction]
            if profile.labels.scores:
                label_tensors.append(profile.labels.scores)
        self._label_tensors = label_tensors
        self._pending: list[tuple[Tensors, Tensors]] = []
        self._pending_rows = 0
        self._pending_labels: list[tuple[Tensors, int, object]] = []
        self._recent: OrderedDict[str, tuple[Tensors, int]] = OrderedDict()
        self._opened_at: float | None = None
        self._rows = 0
        self._reservoir: dict[str, NDArray[np.generic]] = {}
        self._reservoir_seen = 0
        # The sample of the window closed last (kept until the next close).
        self.last_reservoir: dict[str, NDArray[np.generic]] = {}
        self.rejected_rows = 0
        self.unmatched_labels = 0

    @property
    def window_opened_at(self) -> float | None:
        """Clock reading of the current window's first row or label; None when empty."""
        return self._opened_at

    def observe(
        self,
        inputs: Tensors | NDArray[np.generic],
        outputs: Tensors | None = None,
        *,
        request_ids: Sequence[str] | None = None,
        now: float | None = None,
    ) -> None:
        """Buffer one batch of inputs and the outputs the model gave on them.

        ``request_ids`` (one per row) lets `record_label` join labels later. Malformed
        batches are detected when folded and dropped then (see `rejected_rows`).
        """
        if isinstance(inputs, np.ndarray):
            tensors: Tensors = {self._input_tensor: inputs}
            rows = len(inputs)
        else:
            tensors = inputs
            rows = len(next(iter(inputs.values()))) if inputs else 0
        out = outputs or {}
        with self._lock:
            if self._opened_at is None:
                self._opened_at = self._clock() if now is None else now
            self._pending.append((tensors, out))
            self._pending_rows += rows
            self._rows += rows
            if request_ids is not None and self.label_memory:
                for row, request_id in enumerate(request_ids):
                    self._recent[request_id] = (out, row)
                    self._recent.move_to_end(request_id)
                while len(self._recent) > self.label_memory:
                    self._recent.popitem(last=False)
            if self._pending_rows >= self.fold_rows:
                self._fold()

    def record_label(self, request_id: str, label: object, *, now: float | None = None) -> bool:
        """Join a late label to the prediction made for ``request_id``.

        Returns False (and counts it in `unmatched_labels`) when the prediction is
        unknown or has been forgotten.
        """
        with self._lock:
            if self.profile.labels is None:
                self.unmatched_labels += 1
                return False
            found = self._recent.pop(request_id, None)
            if found is None:
                self.unmatched_labels += 1
                return False
            if self._opened_at is None:
                self._opened_at = self._clock() if now is None else now
            outputs, row = found
            self._pending_labels.append((outputs, row, label))
            if len(self._pending_labels) >= self.fold_rows:
                self._fold_labels()
            return True

    def maybe_close(self, now: float | None = None) -> WindowSketch | None:
        """Close and return the window if it is full or old enough; else None."""
        with self._lock:
            if self._opened_at is None:
                return None
            at = self._clock() if now is None else now
            if self._rows < self.window_count and at - self._opened_at < self.window_s:
                return None
            return self._close()

    def close(self) -> WindowSketch | None:
        """Close the window now, whatever its age (shutdown, model switch); None if empty."""
        with self._lock:
            return None if self._opened_at is None else self._close()

    def _close(self) -> WindowSketch:
        self._fold()
        self._fold_labels()
        sketch = self._accumulator.snapshot()
        self._accumulator.reset()
        self._opened_at = None
        self._rows = 0
        filled = min(self._reservoir_seen, self.reservoir_size)
        self.last_reservoir = {name: r[:filled] for name, r in self._reservoir.items()}
        self._reservoir = {}
        self._reservoir_seen = 0
        log.debug("drift window closed: %s rows, %s labelled", sketch.count, sketch.labelled)
        return sketch

    def _fold(self) -> None:
        if not self._pending:
            return
        batches, self._pending, self._pending_rows = self._pending, [], 0
        try:
            inputs, outputs = _concatenate(batches)
            self._accumulator.add(inputs, outputs)
        except (DriftError, ValueError, KeyError) as e:
            # One bad batch must not take the good ones with it: retry one by one.
            log.debug("buffered drift batches did not fold together (%s); folding singly", e)
            for batch_inputs, batch_outputs in batches:
                try:
                    self._accumulator.add(batch_inputs, batch_outputs)
                except (DriftError, ValueError) as error:
                    rows = int(np.shape(next(iter(batch_inputs.values())))[0])
                    self.rejected_rows += rows
                    log.warning("drift monitor dropped a batch of %s rows: %s", rows, error)
                else:
                    self._sample(batch_inputs)
            return
        self._sample(inputs)

    def _fold_labels(self) -> None:
        if not self._pending_labels:
            return
        pending, self._pending_labels = self._pending_labels, []
        try:
            outputs = {
                name: np.stack([np.asarray(out[name])[row] for out, row, _ in pending])
                for name in self._label_tensors
            }
            labels = np.asarray([label for _, _, label in pending])
            self._accumulator.add_labels(outputs, labels)
        except (DriftError, ValueError, KeyError, IndexError) as e:
            self.unmatched_labels += len(pending)
            log.warning("drift monitor dropped %s labels: %s", len(pending), e)

    def _sample(self, inputs: Tensors) -> None:
        """Algorithm R over the window's rows, vectorised per batch.

        Within one batch two rows may draw the same slot; the later one wins, which
        biases the sample very slightly towards later rows of large batches.
        """
        k = self.reservoir_size
        if k <= 0:
            return
        arrays = {name: np.asarray(a) for name, a in inputs.items()}
        n = int(next(iter(arrays.values())).shape[0])
        if not self._reservoir:
            self._reservoir = {
                name: np.empty((k, *a.shape[1:]), dtype=a.dtype) for name, a in arrays.items()
            }
        seen = np.arange(self._reservoir_seen, self._reservoir_seen + n)
        slots = np.where(seen < k, seen, self._rng.integers(0, seen + 1))
        keep = slots < k
        for name, array in arrays.items():
            self._reservoir[name][slots[keep]] = array[keep]
        self._reservoir_seen += n

    def reservoir(self) -> dict[str, NDArray[np.generic]]:
        """A copy of the current window's sample of raw inputs (empty when disabled)."""
        with self._lock:
            filled = min(self._reservoir_seen, self.reservoir_size)
            return {name: r[:filled].copy() for name, r in self._reservoir.items()}


def _concatenate(batches: list[tuple[Tensors, Tensors]]) -> tuple[Tensors, Tensors]:
    if len(batches) == 1:
        return batches[0]
    first_in, first_out = batches[0]
    inputs = {name: np.concatenate([b[0][name] for b in batches]) for name in first_in}
    outputs = {name: np.concatenate([b[1][name] for b in batches]) for name in first_out}
    return inputs, outputs
