"""The agent's monitor: windows close by count and by time, late labels join, bad batches drop."""

from __future__ import annotations

import gc

import numpy as np
import onnxruntime as ort
import pytest

from edgefleet.agent.drift_monitor import DriftMonitor
from edgefleet.shared.drift import WindowSketch, build_profile
from tests.support.drift_reference import classify, make_inputs


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def rows(seed: int, n: int):
    x = make_inputs(np.random.default_rng(seed), n)
    return x, classify(x)


def test_window_closes_by_count_with_every_row_folded(profile) -> None:
    monitor = DriftMonitor(profile, window_count=300, window_s=3600, fold_rows=64, clock=Clock())
    for i in range(299):
        monitor.observe(*rows(i, 1))
    assert monitor.maybe_close() is None
    monitor.observe(*rows(999, 1))
    sketch = monitor.maybe_close()
    assert sketch is not None
    assert sketch.count == 300
    assert all(sum(f.counts) + f.missing == 300 for f in sketch.inputs.values())
    assert monitor.maybe_close() is None  # the next window is empty


def test_window_closes_by_time_from_its_first_row(profile) -> None:
    clock = Clock()
    monitor = DriftMonitor(profile, window_s=60, window_count=10**6, clock=clock)
    clock.now = 500.0
    assert monitor.maybe_close() is None  # nothing seen: no window at all
    monitor.observe(*rows(1, 10))
    assert monitor.window_opened_at == 500.0
    clock.now = 559.0
    assert monitor.maybe_close() is None
    clock.now = 560.0
    sketch = monitor.maybe_close()
    assert sketch is not None
    assert sketch.count == 10
    assert monitor.window_opened_at is None


def test_late_labels_join_their_predictions_by_request_id(profile) -> None:
    monitor = DriftMonitor(profile, window_count=10**6, label_memory=3, clock=Clock())
    x, outputs = rows(1, 4)
    monitor.observe(x, outputs, request_ids=["a", "b", "c", "d"])  # "a" is forgotten (LRU of 3)
    truth = outputs["label"]
    assert monitor.record_label("b", int(truth[1]))
    assert monitor.record_label("c", int((truth[2] + 1) % 3))
    assert not monitor.record_label("a", 0)
    assert not monitor.record_label("zzz", 0)
    assert not monitor.record_label("b", 0)  # a label joins once
    sketch = monitor.close()
    assert sketch is not None
    assert sketch.labelled == 2
    assert sketch.classification is not None
    confusion = np.array(sketch.classification.confusion)
    assert confusion.sum() == 2
    assert np.trace(confusion) == 1
    assert monitor.unmatched_labels == 3


def test_a_malformed_batch_is_dropped_without_losing_the_good_ones(profile) -> None:
    monitor = DriftMonitor(profile, fold_rows=1000, clock=Clock())
    monitor.observe(*rows(1, 5))
    bad_x, bad_out = rows(2, 3)
    monitor.observe(bad_x[:, :2], bad_out)
    monitor.observe(*rows(3, 7))
    sketch = monitor.close()
    assert sketch is not None
    assert sum(sketch.inputs["temperature"].counts) == 12
    assert monitor.rejected_rows == 3


def test_reservoir_is_capped_and_off_by_default(profile) -> None:
    off = DriftMonitor(profile, clock=Clock())
    off.observe(*rows(1, 50))
    assert off.reservoir() == {}
    on = DriftMonitor(profile, reservoir_size=20, fold_rows=16, seed=1, clock=Clock())
    for i in range(30):
        on.observe(*rows(i, 5))
    sample = on.reservoir()["input"]
    assert sample.shape == (20, 3)
    on.close()
    assert on.last_reservoir["input"].shape == (20, 3)
    assert on.reservoir() == {}


def test_monitor_folds_a_real_onnx_models_inputs_and_outputs(wine_model) -> None:
    session = ort.InferenceSession(str(wine_model.path))
    label, probabilities = session.run(None, {"input": wine_model.x_train})
    profile = build_profile(
        wine_model.x_train,
        {"label": label, "probabilities": probabilities},
        feature_names=wine_model.feature_names,
        labels=wine_model.y_train,
    )
    monitor = DriftMonitor(profile, window_count=len(wine_model.x_test), fold_rows=8)
    for i, row in enumerate(wine_model.x_test):
        out = session.run(None, {"input": row[None, :]})
        monitor.observe(
            {"input": row[None, :]},
            {"label": out[0], "probabilities": out[1]},
            request_ids=[str(i)],
        )
    for i, y in enumerate(wine_model.y_test):
        assert monitor.record_label(str(i), int(y))
    sketch = monitor.maybe_close()
    assert sketch is not None
    assert sketch.count == sketch.labelled == len(wine_model.x_test)
    assert sketch.classification is not None
    confusion = np.array(sketch.classification.confusion)
    assert np.trace(confusion) / confusion.sum() == pytest.approx(wine_model.accuracy)


def test_labels_join_exactly_across_mixed_batches_and_a_window_split(profile) -> None:
    monitor = DriftMonitor(profile, window_count=6, window_s=3600, label_memory=100, clock=Clock())
    batches = [rows(i, n) for i, n in enumerate((1, 3, 2, 4))]
    ids = [["a"], ["b0", "b1", "b2"], None, ["d0", "d1", "d2", "d3"]]
    for (x, out), request_ids in zip(batches, ids, strict=True):
        monitor.observe(x, out, request_ids=request_ids)
    first = monitor.maybe_close()  # 1 + 3 + 2 rows: the split falls after the third batch
    assert first is not None
    assert first.count == 6
    # Each label is the prediction made for its own row, so every joined label is a hit.
    predicted = {"a": batches[0][1]["label"][0], "d2": batches[3][1]["label"][2]}
    predicted |= {f"b{i}": batches[1][1]["label"][i] for i in range(3)}
    for request_id, label in predicted.items():
        assert monitor.record_label(request_id, int(label))
    assert not monitor.record_label("c0", 0)
    second = monitor.close()
    assert second is not None
    assert second.count == 4
    assert second.labelled == len(predicted)
    assert second.classification is not None
    confusion = np.array(second.classification.confusion)
    assert np.trace(confusion) == confusion.sum() == len(predicted)


def _feed(monitor: DriftMonitor, *, fast: bool) -> list[object]:
    """One scripted run of batches, labels and closes; what the monitor said at each step.

    ``fast`` sends the inference path's batches through `DriftMonitor.array_observer`
    (as the model host does for a one-input model); otherwise through `observe`. Each
    label is the prediction made for its own row, so a label joined to the wrong row
    shows up off the confusion matrix's diagonal.
    """
    observe = monitor.array_observer("input")
    said: list[object] = []
    predicted: dict[str, int] = {}
    sizes = [1, 1, 3, 1, 2, 1, 1, 5, 1, 0, 1, 4, 1, 1, 2, 1, 1, 1, 3, 1]
    for step, size in enumerate(sizes):
        x, out = rows(100 + step, size)
        if step % 5 == 0:
            ids: list[str] | None = None
        elif step % 5 == 4 and size > 1:
            ids = [f"s{step}r{i}" for i in range(size)]  # one id per row
        else:
            ids = [f"s{step}"]  # one id: the first row's, even in a batch of several
        predicted |= {rid: int(out["label"][i]) for i, rid in enumerate((ids or [])[:size])}
        if fast:
            observe(x, out, tuple(ids) if ids and step % 2 else ids)
        else:
            monitor.observe(x, out, request_ids=ids)
        if step == 13:
            monitor.observe(x[:, :2], out)  # a malformed batch between good ones
        if step % 3 == 2:
            said.append(monitor.maybe_close())
        if step % 6 == 5:
            said.extend(monitor.record_label(rid, label) for rid, label in predicted.items())
            predicted.clear()
    said.extend(monitor.record_label(rid, label) for rid, label in predicted.items())
    said.append(monitor.close())
    said.append((monitor.rejected_rows, monitor.unmatched_labels))
    return said


def test_the_inference_paths_observer_gives_the_same_windows_as_observe(profile) -> None:
    """Entries from `array_observer` cut, fold and join labels exactly as `observe` does."""
    made = [
        DriftMonitor(profile, window_count=7, window_s=3600, label_memory=6, clock=Clock())
        for _ in range(2)
    ]
    fast, plain = _feed(made[0], fast=True), _feed(made[1], fast=False)
    windows = [s for s in plain if isinstance(s, WindowSketch)]
    assert len(windows) >= 4  # the script closes several windows, by count
    assert sum(w.labelled for w in windows) >= 15
    for window in windows:  # every label joined its own row's prediction
        assert window.classification is not None
        confusion = np.array(window.classification.confusion)
        assert np.trace(confusion) == confusion.sum() == window.labelled
    assert fast == plain


def test_observing_rows_leaves_nothing_for_the_garbage_collector(profile) -> None:
    """What waits for the drift timer is not tracked by the collector (see the monitor).

    Per-call containers kept in the inbox made the collector scan and promote them every
    few hundred calls and run full collections of the heap: microseconds per inference.
    """
    monitor = DriftMonitor(profile, window_count=10**6, fold_rows=10**6, clock=Clock())
    observe = monitor.array_observer("input")
    batches = [rows(i, 1) for i in range(2000)]
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        for i, (x, out) in enumerate(batches):
            observe(x, out, (f"r{i}",))
        grown = len(gc.get_objects()) - before
    finally:
        gc.enable()
    assert grown < 50, f"{grown} tracked objects for {len(batches)} observed rows"
    sketch = monitor.close()
    assert sketch is not None
    assert sketch.count == len(batches)
