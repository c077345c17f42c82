"""Windows merge by addition, fold batches correctly, and refuse what does not fit."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.shared.drift import (
    DriftInputError,
    SketchMismatchError,
    WindowAccumulator,
    WindowSketch,
    evaluate,
    merge,
    merge_all,
)
from edgefleet.shared.drift.window import NumericCounts
from edgefleet.shared.messages import DriftMessage, MessageError, decode_device_message, encode
from edgefleet.shared.topics import Channel
from tests.support.drift_reference import FEATURES, classify, make_inputs

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def window(profile, seed: int, n: int, *, shift: float = 0.0, labels: bool = True) -> WindowSketch:
    rng = np.random.default_rng(seed)
    x = make_inputs(rng, n, shift=shift)
    outputs = classify(x)
    accumulator = WindowAccumulator(profile)
    accumulator.add(x, outputs, rng.integers(0, 3, n) if labels else None)
    return accumulator.snapshot()


def assert_same(a: WindowSketch, b: WindowSketch) -> None:
    """Counts exactly equal; moments equal up to rounding."""
    assert a.count == b.count
    assert a.labelled == b.labelled
    assert a.classification == b.classification
    for role in ("inputs", "outputs"):
        fa, fb = getattr(a, role), getattr(b, role)
        assert fa.keys() == fb.keys()
        for name in fa:
            x, y = fa[name], fb[name]
            assert x.counts == y.counts
            assert x.missing == y.missing
            if isinstance(x, NumericCounts) and isinstance(y, NumericCounts):
                assert (x.count, x.min, x.max) == (y.count, y.min, y.max)
                assert x.mean == pytest.approx(y.mean, rel=1e-9, abs=1e-9)
                assert x.m2 == pytest.approx(y.m2, rel=1e-7, abs=1e-7)


sizes = st.integers(0, 300)


@settings(max_examples=25, deadline=None)
@given(
    seeds=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6)),
    n=st.tuples(sizes, sizes, sizes),
)
def test_merge_is_associative_and_commutative(profile, seeds, n) -> None:
    a, b, c = (window(profile, s, k) for s, k in zip(seeds, n, strict=True))
    assert merge(a, b) == merge(b, a)  # bit for bit: Chan's update is symmetric
    assert_same(merge(merge(a, b), c), merge(a, merge(b, c)))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6), cuts=st.lists(st.integers(1, 799), max_size=6))
def test_merging_device_windows_equals_one_window_over_all_the_data(profile, seed, cuts) -> None:
    rng = np.random.default_rng(seed)
    x = make_inputs(rng, 800, shift=0.7)
    outputs = classify(x)
    y = rng.integers(0, 3, 800)
    whole = WindowAccumulator(profile)
    whole.add(x, outputs, y)
    parts = []
    for lo, hi in zip([0, *sorted(cuts)], [*sorted(cuts), 800], strict=True):
        device = WindowAccumulator(profile)
        device.add(x[lo:hi], {k: v[lo:hi] for k, v in outputs.items()}, y[lo:hi])
        parts.append(device.snapshot())
    merged = merge_all(parts)
    assert_same(merged, whole.snapshot())
    ours, theirs = evaluate(profile, merged), evaluate(profile, whole.snapshot())
    for f, g in zip(ours.features, theirs.features, strict=True):
        assert f.scores.psi == pytest.approx(g.scores.psi, abs=1e-12)
        assert f.scores.ks == g.scores.ks
    assert ours.metrics == pytest.approx(theirs.metrics)


def test_moments_match_numpy_including_across_batches(profile) -> None:
    rng = np.random.default_rng(3)
    x = make_inputs(rng, 1000)
    accumulator = WindowAccumulator(profile)
    for lo in range(0, 1000, 37):
        accumulator.add(x[lo : lo + 37], classify(x[lo : lo + 37]))
    sketch = accumulator.snapshot()
    for j, name in enumerate(FEATURES):
        counts = sketch.inputs[name]
        assert isinstance(counts, NumericCounts)
        column = x[:, j].astype(np.float64)
        assert counts.count == 1000
        assert counts.mean == pytest.approx(column.mean(), rel=1e-12)
        assert counts.m2 / counts.count == pytest.approx(column.var(), rel=1e-9)
        assert (counts.min, counts.max) == (column.min(), column.max())
        assert sum(counts.counts) == 1000


def test_nan_counts_as_missing_and_inf_lands_in_the_outer_bins(profile) -> None:
    x = make_inputs(np.random.default_rng(1), 10)
    x[0, 0] = np.nan
    x[1, 0] = np.inf
    x[2, 0] = -np.inf
    accumulator = WindowAccumulator(profile)
    accumulator.add(x, classify(np.nan_to_num(x)))
    counts = accumulator.snapshot().inputs["temperature"]
    assert isinstance(counts, NumericCounts)
    assert counts.missing == 1
    assert counts.count == 7  # finite values only in the moments
    assert sum(counts.counts) == 9
    assert counts.counts[0] >= 1
    assert counts.counts[-1] >= 1
    assert np.isfinite([counts.mean, counts.m2, counts.min or 0.0, counts.max or 0.0]).all()
    assert counts.min is not None


def test_wrong_feature_count_is_rejected_naming_the_tensor_and_leaves_counts_alone(profile) -> None:
    accumulator = WindowAccumulator(profile)
    good = make_inputs(np.random.default_rng(1), 5)
    accumulator.add(good, classify(good))
    before = accumulator.snapshot()
    with pytest.raises(
        DriftInputError, match=r"input tensor 'input': expected shape \[N, 3\], got \[5, 2\]"
    ):
        accumulator.add(good[:, :2], classify(good))
    with pytest.raises(DriftInputError, match="output tensor 'probabilities' is missing"):
        accumulator.add(good, {"label": classify(good)["label"]})
    with pytest.raises(DriftInputError, match="5 input rows but 4 output rows"):
        accumulator.add(good, {k: v[:4] for k, v in classify(good).items()})
    with pytest.raises(DriftInputError, match="labels of shape"):
        accumulator.add(good, classify(good), np.zeros(3, dtype=np.int64))
    assert accumulator.snapshot() == before


def test_wrong_dtype_is_rejected_with_the_dtype_named(profile) -> None:
    accumulator = WindowAccumulator(profile)
    text = np.array([["a", "b", "c"]] * 2)
    with pytest.raises(DriftInputError, match="expected numbers, got dtype <U1"):
        accumulator.add(text, classify(np.ones((2, 3))))
    objects = np.array([[1.0, None, "x"]], dtype=object)
    with pytest.raises(DriftInputError, match="non-numeric value"):
        accumulator.add(objects, classify(np.ones((1, 3))))
    assert accumulator.snapshot().count == 0


def test_none_in_an_object_batch_counts_as_missing(profile) -> None:
    accumulator = WindowAccumulator(profile)
    accumulator.add(np.array([[20.0, None, 3.0]], dtype=object), classify(np.ones((1, 3))))
    assert accumulator.snapshot().inputs["pressure"].missing == 1


def test_sketches_of_different_profiles_do_not_merge(profile) -> None:
    a = window(profile, 1, 10)
    other = a.model_copy(update={"profile_id": "f" * 64})
    with pytest.raises(SketchMismatchError, match="different profiles"):
        merge(a, other)
    with pytest.raises(SketchMismatchError, match="evaluated against"):
        evaluate(profile, other)
    broken = a.model_copy(
        update={"inputs": {**a.inputs, "count": NumericCounts(counts=[1], count=1)}}
    )
    with pytest.raises(SketchMismatchError, match="'count'"):
        merge(a, broken)
    with pytest.raises(SketchMismatchError, match="no sketches"):
        merge_all([])


def test_drift_message_carries_the_typed_sketch_round_trip(profile) -> None:
    sketch = window(profile, 5, 50)
    message = DriftMessage(
        device_id="d1", seq=9, ts=NOW, window_start=NOW, window_end=NOW, count=50, sketch=sketch
    )
    decoded = decode_device_message(Channel.DRIFT, "d1", encode(message))
    assert isinstance(decoded, DriftMessage)
    assert decoded.sketch == sketch
    wire = json.loads(encode(message))
    assert wire["sketch"]["v"] == 2  # the compact form (shared.drift.compact)
    assert isinstance(wire["sketch"]["i"]["temperature"][0], str)  # packed runs


def test_drift_message_from_an_older_agent_without_sketch_still_decodes() -> None:
    raw = {
        "schema": "edgefleet/v1/drift",
        "device_id": "d1",
        "seq": 1,
        "window_start": NOW.isoformat(),
        "window_end": NOW.isoformat(),
        "count": 0,
        "sketch": {},
        "field_from_the_future": 1,
    }
    decoded = decode_device_message(Channel.DRIFT, "d1", json.dumps(raw).encode())
    assert isinstance(decoded, DriftMessage)
    assert decoded.sketch is None


@pytest.mark.parametrize(
    "feature",
    [
        {"kind": "numeric", "counts": [1], "count": 1, "mean": float("inf")},
        {"kind": "numeric", "counts": [1], "count": 1, "mean": 0, "m2": float("nan")},
        {"kind": "numeric", "counts": [1], "count": 1, "min": float("-inf")},
        {"kind": "numeric", "counts": [-1], "count": 1},
        {"kind": "categorical", "counts": [0] * 10_001},
        {"kind": "categorical", "counts": [2**63]},
    ],
    ids=["inf mean", "nan m2", "-inf min", "negative count", "too many bins", "count > int64"],
)
def test_a_sketch_out_of_bounds_is_refused_on_the_wire(feature: dict[str, object]) -> None:
    raw = {
        "schema": "edgefleet/v1/drift",
        "device_id": "d1",
        "seq": 1,
        "window_start": NOW.isoformat(),
        "window_end": NOW.isoformat(),
        "count": 1,
        "sketch": {"profile_id": "p", "count": 1, "inputs": {"x": feature}},
    }
    with pytest.raises(MessageError, match="sketch"):
        decode_device_message(Channel.DRIFT, "d1", json.dumps(raw).encode())


def test_merging_forged_sketches_past_the_bounds_is_a_mismatch_not_a_crash() -> None:
    forged = WindowSketch(
        profile_id="p",
        count=2**63 - 1,
        inputs={"x": NumericCounts(counts=[1], count=1, mean=1e308, m2=1e308)},
    )
    with pytest.raises(SketchMismatchError, match="out of bounds"):
        merge(forged, forged)
