"""The device side of drift: fold what the model sees into windows, cheaply.

Invariants:
- `observe` (the inference path) takes no lock and does no work: it appends one entry of
  four references to a flat inbox list with one ``list.extend`` of a tuple (atomic,
  under the GIL and on free-threaded builds alike, so entries never interleave) and
  sets the window's opening time if none is set. The caller must not write into the
  arrays afterwards; runtimes return fresh ones. An entry is ``(None, inputs, outputs,
  request_ids)``, or, from `array_observer` (the model host's path for a model with one
  input), ``(tensor name, input array, outputs, request id or None)``.
- Why flat, and why the request id alone: the inbox holds thousands of entries between
  two timer ticks. Per-call tuples kept there are tracked by the garbage collector,
  which then scans and promotes them every few hundred calls and runs full collections
  of the whole heap (measured in a started agent: about 3 us per call on average, most
  of it in full collections of ~0.1 s each). The transient tuple given to ``extend`` is
  freed at once, and what stays (ndarrays, dicts of ndarrays, strings) is not tracked.
- Everything else happens off the request path, under one lock: the daemon's drift
  timer calls `maybe_close`, which drains the inbox in arrival order (counting rows,
  remembering request ids for labels), folds the rows into the window with vectorised
  numpy (`edgefleet.shared.drift.WindowAccumulator`), and closes the window when it holds
  ``window_count`` rows (the drain stops at that row's batch, so the next window starts
  with the next batch) or is ``window_s`` old (from its first row or label, by the
  monitor's monotonic clock). Only if ``fold_rows`` calls pile up in the inbox (the
  timer stalled) does `observe` fold them itself, which bounds the inbox's memory.
- Labels arrive late: the drain copies the label tensors of the last ``label_memory``
  rows that carried a request id into a ring, and maps each id to its row's sequence
  number (ids are meant to be unique; a repeated id points at its latest row), so the
  drain does no Python work per row beyond one dict update; `record_label`
  (which drains first, so a label may follow its prediction at once) joins a label to
  them. A label counts in the window in which it arrives, not the one its prediction
  fell in, so a closed window is never reopened.
- A batch that does not fit the profile is dropped whole, counted in `rejected_rows` and
  logged; it never takes the other buffered rows down with it.
- Input tensors of more than two dimensions (images) are flattened to ``[N, -1]`` when
  folded by `edgefleet.shared.drift.profile.flatten_tensors`, the reshape `build_profile` applies
  to the reference data, so the profile's features are the flattened elements:
  fine for the small images of sensors and tiny CNNs, too many features for a camera
  frame, whose profile should be built on an embedding output instead.

No I/O, no threads of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgefleet.shared.drift import DriftError, ReferenceProfile, WindowAccumulator, WindowSketch
from edgefleet.shared.drift.profile import flatten_tensors

log = logging.getLogger(__name__)

Tensors = Mapping[str, NDArray[np.generic]]
_NO_OUTPUTS: Tensors = {}


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
        if reservoir_size < 0:
            raise ValueError(f"reservoir_size must be 0 (off) or more, found {reservoir_size}")
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
        self._input_tensor = profile.inputs[0].tensor
        label_tensors = []
        if profile.labels is not None:
            label_tensors = [profile.labels.prediction]
            if profile.labels.scores:
                label_tensors.append(profile.labels.scores)
        self._label_tensors = label_tensors
        # Flat entries of _ENTRY items (see the module invariants).
        self._inbox: list[Any] = []
        self._inbox_limit = _ENTRY * fold_rows
        self._pending: list[tuple[Tensors, Tensors]] = []
        self._pending_labels: list[tuple[dict[str, NDArray[np.generic]], object]] = []
        # Late-label memory: request id -> sequence number of its row in the label ring.
        self._remember_labels = label_memory > 0 and profile.labels is not None
        self._recent: dict[str, int] = {}
        self._label_ring: dict[str, NDArray[np.generic]] = {}
        self._remembered = 0
        self._opened_at: float | None = None
        self._rows = 0
        self._reservoir: dict[str, NDArray[np.generic]] = {}
        self._reservoir_seen = 0
        # When the window closed last had opened (clock reading), for its start time.
        self.closed_window_opened_at: float | None = None
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
        if self._opened_at is None:
            # Unlocked: a race only moves the opening by the time between two calls.
            self._opened_at = self._clock() if now is None else now
        if isinstance(inputs, np.ndarray):
            inputs = {self._input_tensor: inputs}
        self.observe_batch(inputs, outputs or _NO_OUTPUTS, request_ids)

    def observe_batch(
        self, inputs: Tensors, outputs: Tensors, request_ids: Sequence[str] | None
    ) -> None:
        """`observe` for the inference path: tensors by name, the monitor's clock."""
        if self._opened_at is None:
            self._opened_at = self._clock()  # unlocked, as in `observe`
        inbox = self._inbox
        inbox.extend((None, inputs, outputs, request_ids))
        if len(inbox) >= self._inbox_limit:
            self._catch_up()

    def array_observer(self, name: str) -> ArrayObserver:
        """`observe_batch` for a model whose one input is the tensor ``name``, made once.

        The returned function takes that input's array, the outputs and the request
        ids; it keeps a lone request id as it is rather than its sequence (see the
        module invariants). Other request ids take `observe_batch`.
        """
        inbox = self._inbox
        extend = inbox.extend
        limit = self._inbox_limit
        clock = self._clock
        observe_batch = self.observe_batch
        monitor = self

        def observe(
            array: NDArray[np.generic], outputs: Tensors, request_ids: Sequence[str] | None
        ) -> None:
            if monitor._opened_at is None:
                monitor._opened_at = clock()  # unlocked, as in `observe`
            # The common case first: one request id in a tuple or list.
            kind = request_ids.__class__
            if (kind is tuple or kind is list) and len(request_ids) == 1:  # type: ignore[arg-type]
                request_id = request_ids[0]  # type: ignore[index]
            elif request_ids is None:
                request_id = None
            else:
                observe_batch({name: array}, outputs, request_ids)
                return
            extend((name, array, outputs, request_id))
            if len(inbox) >= limit:
                monitor._catch_up()

        return observe

    def _catch_up(self) -> None:
        """The timer fell behind: fold here rather than let the inbox grow unbounded.

        All of it, into the open window: closing is the timer's business.
        """
        with self._lock:
            self._drain(self._clock(), limit=None)
            self._fold()

    def record_label(self, request_id: str, label: object, *, now: float | None = None) -> bool:
        """Join a late label to the prediction made for ``request_id``.

        Returns False (and counts it in `unmatched_labels`) when the profile has no
        label spec, or the prediction is unknown, already labelled or forgotten.
        """
        with self._lock:
            if self.profile.labels is None:
                self.unmatched_labels += 1
                return False
            self._drain(self._clock() if now is None else now, limit=None)
            found = self._recall(request_id)
            if found is None:
                self.unmatched_labels += 1
                return False
            if self._opened_at is None:
                self._opened_at = self._clock() if now is None else now
            self._pending_labels.append((found, label))
            if len(self._pending_labels) >= self.fold_rows:
                self._fold_labels()
            return True

    def maybe_close(self, now: float | None = None) -> WindowSketch | None:
        """Fold what is buffered; close and return the window if it is full or old enough.

        Called by the daemon's drift timer, never on the request path. A window that
        filled up returns at once; call again for the next one.
        """
        with self._lock:
            at = self._clock() if now is None else now
            self._drain(at, limit=self.window_count)
            opened = self._opened_at
            if opened is None:
                return None
            if self._rows < self.window_count and at - opened < self.window_s:
                self._fold()
                return None
            return self._close()

    def close(self) -> WindowSketch | None:
        """Close the window now, whatever its age (shutdown, model switch); None if empty.

        Everything buffered counts in it, even beyond ``window_count``.
        """
        with self._lock:
            self._drain(self._clock(), limit=None)
            return None if self._opened_at is None else self._close()

    def fold(self) -> None:
        """Fold what is buffered into the open window, up to ``window_count`` rows."""
        with self._lock:
            self._drain(self._clock(), limit=self.window_count)
            self._fold()
            self._fold_labels()

    def reservoir(self) -> dict[str, NDArray[np.generic]]:
        """A copy of the current window's sample of raw inputs (empty when disabled).

        Folds what is buffered first, so the sample covers every row observed so far.
        """
        self.fold()
        with self._lock:
            filled = min(self._reservoir_seen, self.reservoir_size)
            return {name: r[:filled].copy() for name, r in self._reservoir.items()}

    def _drain(self, now: float, *, limit: int | None) -> None:
        """Move inbox batches to the fold buffer, in order, until the window holds ``limit``.

        Vectorised over the batches (the timer drains thousands of one-row batches per
        tick, and Python work per row here was most of the monitor's cost): one list
        comprehension for the row counts, one concatenation per tensor, one dict update
        for the request ids.
        """
        inbox = self._inbox
        # Entries appended from now on wait for the next drain; extend is atomic, so the
        # copy holds whole entries.
        entries = inbox[:]
        if not entries:
            return
        if self._opened_at is None:
            self._opened_at = now
        arrays = _array_rows(entries)
        if arrays is None:
            batches = _batches(entries)
            sizes = _batch_rows(batches)
        else:
            sizes = arrays[0]
        taken = len(sizes) if limit is None else self._entries_up_to(sizes, limit)
        sizes = sizes[:taken]
        del inbox[: taken * _ENTRY]
        self._rows += sum(sizes)
        if arrays is not None:
            # Every entry came from one `array_observer`: stacked straight from the lists.
            returned = entries[2 : taken * _ENTRY : _ENTRY]
            block = _stack_arrays(entries[0], arrays[1][:taken], returned)
            if block is not None:
                self._pending.append(block)
                if self._remember_labels:
                    self._remember(block[1], _lone_ids(entries, sizes))
                return
            batches = _batches(entries[: taken * _ENTRY])
        else:
            batches = batches[:taken]
            block = _stack(batches)
            if block is not None:
                self._pending.append(block)
                if self._remember_labels:
                    self._remember(block[1], _request_ids(batches, sizes))
                return
        remember = self._remember_labels
        # Batches that do not stack (one is malformed): keep them apart so `_fold` drops
        # only the bad ones.
        for (inputs, outputs, request_ids), size in zip(batches, sizes, strict=True):
            self._pending.append((inputs, outputs))
            if remember:
                self._remember(outputs, _request_ids([(inputs, outputs, request_ids)], [size]))

    def _entries_up_to(self, sizes: list[int], limit: int) -> int:
        """How many entries to take: the one that brings the window to ``limit`` rows is last."""
        cut = int(np.searchsorted(np.cumsum(sizes), limit - self._rows, side="left"))
        return min(len(sizes), cut + 1)

    def _remember(self, outputs: Tensors, request_ids: list[str | None]) -> None:
        """Keep the label tensors of rows with a request id in the label ring.

        The ring holds the rows of the last ``label_memory`` request ids; ``_recent``
        maps an id to its sequence number, valid while the ring still holds it.
        """
        memory = self.label_memory
        keep = [i for i, rid in enumerate(request_ids) if rid is not None]
        if not keep:
            return
        keep = keep[-memory:]
        try:
            rows = {name: np.asarray(outputs[name]) for name in self._label_tensors}
            ring = self._label_ring
            for name, array in rows.items():
                have = ring.get(name)
                if have is None:
                    ring[name] = np.empty((memory, *array.shape[1:]), dtype=array.dtype)
                elif have.shape[1:] != array.shape[1:] or have.dtype != array.dtype:
                    raise ValueError(
                        f"output {name!r}: shape {list(array.shape[1:])} {array.dtype} per row, "
                        f"expected {list(have.shape[1:])} {have.dtype}"
                    )
            seq = self._remembered
            slots = np.arange(seq, seq + len(keep)) % memory
            index = keep if len(keep) < len(request_ids) else slice(None)
            for name, array in rows.items():
                ring[name][slots] = array[index]
        except (KeyError, ValueError, IndexError, TypeError) as e:
            log.debug("drift monitor cannot keep %s predictions for labels: %s", len(keep), e)
            return
        ids = request_ids if len(keep) == len(request_ids) else [request_ids[i] for i in keep]
        recent = self._recent
        recent.update(zip(ids, range(seq, seq + len(keep)), strict=True))  # type: ignore[arg-type]
        self._remembered = seq + len(keep)
        if len(recent) > 2 * memory:
            cutoff = self._remembered - memory
            self._recent = {rid: s for rid, s in recent.items() if s >= cutoff}

    def _recall(self, request_id: str) -> dict[str, NDArray[np.generic]] | None:
        """The label tensors of ``request_id``'s row (a copy), forgetting it; None if unknown."""
        seq = self._recent.pop(request_id, None)
        if seq is None or seq < self._remembered - self.label_memory:
            return None
        slot = seq % self.label_memory
        return {name: ring[slot].copy() for name, ring in self._label_ring.items()}

    def _close(self) -> WindowSketch:
        self._fold()
        self._fold_labels()
        sketch = self._accumulator.snapshot()
        self._accumulator.reset()
        self.closed_window_opened_at = self._opened_at
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
        batches, self._pending = self._pending, []
        try:
            inputs, outputs = _concatenate(batches)
            self._accumulator.add(inputs, outputs)
        except (DriftError, ValueError, KeyError) as e:
            # One bad batch must not take the good ones with it: retry one by one.
            log.debug("buffered drift batches did not fold together (%s); folding singly", e)
            for batch_inputs, batch_outputs in batches:
                flat = _flatten(batch_inputs)
                try:
                    self._accumulator.add(flat, batch_outputs)
                except (DriftError, ValueError) as error:
                    rows = int(np.shape(next(iter(batch_inputs.values())))[0])
                    self.rejected_rows += rows
                    log.warning("drift monitor dropped a batch of %s rows: %s", rows, error)
                else:
                    self._sample(flat)
            return
        self._sample(inputs)

    def _fold_labels(self) -> None:
        if not self._pending_labels:
            return
        pending, self._pending_labels = self._pending_labels, []
        try:
            outputs = {
                name: np.stack([rows[name] for rows, _ in pending]) for name in self._label_tensors
            }
            labels = np.asarray([label for _, label in pending])
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


def _flatten(inputs: Tensors) -> Tensors:
    """Images and other tensors of more than two dimensions as ``[N, -1]`` rows.

    The reshape `build_profile` applies to reference data, so columns line up; no cap
    here: the profile's width check decides what fits.
    """
    return flatten_tensors(inputs)


def _concatenate(batches: list[tuple[Tensors, Tensors]]) -> tuple[Tensors, Tensors]:
    if len(batches) == 1:
        first_in, first_out = batches[0]
        return _flatten(first_in), first_out
    first_in, first_out = batches[0]
    inputs = {name: np.concatenate([b[0][name] for b in batches]) for name in first_in}
    outputs = {name: np.concatenate([b[1][name] for b in batches]) for name in first_out}
    return _flatten(inputs), outputs


Batch = tuple[Tensors, Tensors, Sequence[str] | None]
ArrayObserver = Callable[[NDArray[np.generic], Tensors, Sequence[str] | None], None]

_ENTRY = 4  # items per inbox entry: (tensor name or None, inputs, outputs, request ids)
_ID_SEQUENCES = (tuple, list)


def _batches(entries: list[Any]) -> list[Batch]:
    """Flat inbox entries as (inputs, outputs, request ids) batches."""
    batches: list[Batch] = []
    for at in range(0, len(entries), _ENTRY):
        name, inputs, outputs, ids = entries[at : at + _ENTRY]
        if name is None:
            batches.append((inputs, outputs, ids))
        else:
            batches.append(({name: inputs}, outputs, None if ids is None else (ids,)))
    return batches


def _array_rows(entries: list[Any]) -> tuple[list[int], list[NDArray[np.generic]]] | None:
    """(rows, input array) of each entry when all came from one `array_observer`, else None."""
    names = entries[0::_ENTRY]
    first = names[0]
    if first is None or names.count(first) != len(names):
        return None
    arrays: list[NDArray[np.generic]] = entries[1::_ENTRY]
    try:
        return [len(a) for a in arrays], arrays
    except TypeError:  # a 0-d array: the general path drops it when folded
        return None


def _stack_arrays(
    name: str, arrays: list[NDArray[np.generic]], outputs: list[Tensors]
) -> tuple[Tensors, Tensors] | None:
    """`_stack` for entries of one `array_observer`."""
    if len(arrays) == 1:
        return {name: arrays[0]}, outputs[0]
    try:
        inputs = {name: np.concatenate(arrays)}
        stacked = {key: np.concatenate([o[key] for o in outputs]) for key in outputs[0]}
    except (KeyError, ValueError, TypeError):
        return None
    return inputs, stacked


def _lone_ids(entries: list[Any], sizes: list[int]) -> list[str | None]:
    """Row-aligned request ids of `array_observer` entries (its id is its first row's)."""
    ids: list[str | None] = entries[3 : len(sizes) * _ENTRY : _ENTRY]
    if sizes.count(1) == len(sizes):
        return ids
    out: list[str | None] = []
    for request_id, size in zip(ids, sizes, strict=True):
        if size:
            out.append(request_id)
            out.extend(repeat(None, size - 1))
    return out


def _rows_of(inputs: Tensors) -> int:
    return len(next(iter(inputs.values()))) if inputs else 0


def _batch_rows(batches: list[Batch]) -> list[int]:
    """Rows of each batch (of its first input tensor; 0 for a batch without inputs)."""
    try:
        name = next(iter(batches[0][0]))
        return [len(b[0][name]) for b in batches]
    except (StopIteration, KeyError, TypeError):
        return [_safe_rows(b[0]) for b in batches]


def _safe_rows(inputs: Tensors) -> int:
    try:
        return _rows_of(inputs)
    except TypeError:  # a 0-d array: rejected when folded
        return 1


def _stack(batches: list[Batch]) -> tuple[Tensors, Tensors] | None:
    """All batches as one (inputs, outputs) block, or None if they do not line up."""
    if len(batches) == 1:
        return batches[0][0], batches[0][1]
    first_in, first_out = batches[0][0], batches[0][1]
    try:
        inputs = {name: np.concatenate([b[0][name] for b in batches]) for name in first_in}
        outputs = {name: np.concatenate([b[1][name] for b in batches]) for name in first_out}
    except (KeyError, ValueError, TypeError):
        return None
    return inputs, outputs


def _request_ids(batches: list[Batch], sizes: list[int]) -> list[str | None]:
    """One request id (or None) per row of ``batches``, row-aligned."""
    try:
        if [len(b[2]) for b in batches] == sizes:  # type: ignore[arg-type]
            return [rid for b in batches for rid in b[2]]  # type: ignore[union-attr]
    except TypeError:  # a batch without ids
        pass
    out: list[str | None] = []
    for (_, _, request_ids), size in zip(batches, sizes, strict=True):
        given = list(request_ids or ())[:size]
        out.extend(given)
        out.extend(repeat(None, size - len(given)))
    return out
