"""The compact wire form: exact round trips, identical merges, and refusals that say why."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.shared.drift import WindowAccumulator, WindowSketch, evaluate, merge_all
from edgefleet.shared.drift.compact import (
    MAX_MATRIX_ROWS,
    MAX_PACKED_CHARS,
    MAX_PACKED_COUNT,
    MAX_SKETCH_BINS,
    decode_runs,
    digest_to_id,
    encode_runs,
    from_compact,
    id_to_digest,
    pack_matrix,
    pack_runs,
    quantize,
    to_compact,
    unpack_matrix,
    unpack_runs,
)
from edgefleet.shared.drift.window import NumericCounts, RegressionCounts
from edgefleet.shared.messages import DriftMessage, MessageError, decode_device_message, encode
from edgefleet.shared.topics import Channel
from tests.support.drift_reference import classify, make_inputs, version1_payload

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def random_window(profile, seed: int, n: int) -> WindowSketch:
    """A window with shifts, missing values, infinities and late labels, all from ``seed``."""
    rng = np.random.default_rng(seed)
    x = make_inputs(rng, n, shift=float(rng.normal(0, 2)))
    if n:
        x[rng.random(n) < 0.05, 0] = np.nan
        x[rng.random(n) < 0.02, 1] = np.inf
        x[rng.random(n) < 0.02, 1] = -np.inf
    with np.errstate(invalid="ignore"):  # inf inputs: NaN scores, counted as missing
        outputs = classify(x)
    accumulator = WindowAccumulator(profile)
    accumulator.add(x, outputs)
    labelled = rng.random(n) < 0.3
    accumulator.add_labels(
        {k: v[labelled] for k, v in outputs.items()}, rng.integers(0, 3, int(labelled.sum()))
    )
    return accumulator.snapshot()


def message(sketch: WindowSketch, seq: int = 1) -> DriftMessage:
    return DriftMessage(
        device_id="d1",
        seq=seq,
        ts=NOW,
        window_start=NOW,
        window_end=NOW,
        count=sketch.count,
        sketch=sketch,
    )


def received(payload: bytes) -> WindowSketch:
    decoded = decode_device_message(Channel.DRIFT, "d1", payload)
    assert isinstance(decoded, DriftMessage)
    assert decoded.sketch is not None
    return decoded.sketch


@given(st.lists(st.integers(0, 3), max_size=40))
def test_runs_round_trip_and_are_never_longer(counts: list[int]) -> None:
    runs = encode_runs(counts)
    assert decode_runs(runs) == counts
    assert len(runs) <= len(counts)


BINS = st.lists(st.one_of(st.just(0), st.integers(0, MAX_PACKED_COUNT)), max_size=60)


@given(BINS)
def test_packed_runs_round_trip_exactly(counts: list[int]) -> None:
    packed = pack_runs(encode_runs(counts))
    assert "=" not in packed
    assert decode_runs(unpack_runs(packed)) == counts


@given(st.lists(BINS, max_size=6).filter(lambda rows: rows != [[]]))
def test_packed_matrices_round_trip_exactly(rows: list[list[int]]) -> None:
    packed = pack_matrix([encode_runs(r) for r in rows])
    assert [decode_runs(r) for r in unpack_matrix(packed)] == rows


def test_a_10000_row_bin_takes_two_bytes_and_a_long_zero_run_three() -> None:
    assert len(unpack_runs("0A8")) == 1
    assert pack_runs([1000]) == "0A8"  # 2 * 1000 = 2000: two varint bytes, three characters
    assert pack_runs([-10_000]) == "oZwB"  # 2 * 10000 + 1: three bytes


def test_a_count_no_5_byte_varint_holds_has_no_packed_form() -> None:
    assert unpack_runs(pack_runs([MAX_PACKED_COUNT])) == [MAX_PACKED_COUNT]
    with pytest.raises(ValueError, match="more than 5 varint bytes"):
        pack_runs([MAX_PACKED_COUNT + 1])


def test_a_sha256_profile_id_travels_as_its_43_character_digest() -> None:
    profile_id = "0123456789abcdef" * 4
    digest = id_to_digest(profile_id)
    assert digest is not None
    assert len(digest) == 43
    assert digest_to_id(digest) == profile_id
    assert id_to_digest("p") is None
    assert id_to_digest(profile_id.upper()) is None  # hex back would not be the same id


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 400))
def test_compact_round_trip_is_exact_rounded_or_not(profile, seed: int, n: int) -> None:
    sketch = random_window(profile, seed, n)
    for s in (sketch, quantize(sketch, profile)):
        assert from_compact(to_compact(s)) == s
        payload = encode(message(s))
        wire = json.loads(payload)["sketch"]
        assert wire["v"] == 2
        assert isinstance(wire["i"]["temperature"][0], str)  # packed, not a JSON array
        assert isinstance(wire["c"]["m"], str)
        assert "p" not in wire
        assert digest_to_id(wire["h"]) == s.profile_id
        assert received(payload) == s
        # Re-encoding what was received gives the same bytes: one canonical form.
        assert encode(message(received(payload))) == payload


@settings(max_examples=20, deadline=None)
@given(
    seeds=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=6),
    n=st.integers(0, 300),
)
def test_the_fleet_merges_compact_reports_exactly_as_version_1_reports(
    profile, seeds: list[int], n: int
) -> None:
    sent = [quantize(random_window(profile, seed, n + i), profile) for i, seed in enumerate(seeds)]
    compact = merge_all(received(encode(message(s, i))) for i, s in enumerate(sent))
    version1 = merge_all(received(version1_payload(message(s, i))) for i, s in enumerate(sent))
    assert compact == version1
    assert evaluate(profile, compact) == evaluate(profile, version1)


@settings(max_examples=20, deadline=None)
@given(seeds=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=6))
def test_rounding_leaves_every_count_based_score_identical(profile, seeds: list[int]) -> None:
    """What `quantize` costs against full-precision version-1 reports of the same windows."""
    windows = [random_window(profile, seed, 200 + i) for i, seed in enumerate(seeds)]
    exact = merge_all(received(version1_payload(message(w))) for w in windows)
    rounded = merge_all(received(encode(message(quantize(w, profile)))) for w in windows)
    a, b = evaluate(profile, exact), evaluate(profile, rounded)
    assert (a.drifted_inputs, a.drifted_outputs, a.metrics) == (
        b.drifted_inputs,
        b.drifted_outputs,
        b.metrics,
    )
    for va, vb in zip(a.features, b.features, strict=True):
        fa, fb = va.scores, vb.scores
        for name in ("count", "psi", "js", "chi2", "chi2_pvalue", "ks", "ks_pvalue"):
            assert getattr(fa, name) == getattr(fb, name), (fa.name, name)
        if fa.wasserstein_norm is not None:
            # min/max move by half a quantum (1/200 std) at most: W1 / std by 5e-3 x mass.
            assert fb.wasserstein_norm == pytest.approx(fa.wasserstein_norm, abs=5e-3)
    for role in ("inputs", "outputs"):
        for name, x in getattr(exact, role).items():
            y = getattr(rounded, role)[name]
            assert x.counts == y.counts
            if isinstance(x, NumericCounts) and isinstance(y, NumericCounts) and x.count:
                reference = next(f for f in getattr(profile, role) if f.name == name)
                # Each window's mean is within half a quantum (<= 1/200 std): so is the merge.
                assert abs(x.mean - y.mean) <= 5e-3 * reference.std
                # The merge's m2 also takes the rounded means' spread: looser than 4 digits.
                assert y.m2 == pytest.approx(x.m2, rel=1e-2)
    for w in windows:
        q = quantize(w, profile)
        for name, x in w.inputs.items():
            y = q.inputs[name]
            if isinstance(x, NumericCounts) and isinstance(y, NumericCounts):
                assert y.m2 == pytest.approx(x.m2, rel=5e-4)  # 4 significant digits


def test_quantize_is_idempotent_and_shortens_the_floats(profile) -> None:
    sketch = random_window(profile, 3, 500)
    once = quantize(sketch, profile)
    assert quantize(once, profile) == once
    assert len(encode(message(once))) < len(encode(message(sketch)))
    temperature = once.inputs["temperature"]
    assert isinstance(temperature, NumericCounts)
    assert len(repr(temperature.mean)) <= 7  # std 2: quantum 1e-2


def test_a_version_1_report_from_an_older_agent_still_decodes(profile) -> None:
    sketch = random_window(profile, 4, 100)
    payload = version1_payload(message(sketch))
    assert json.loads(payload)["sketch"]["version"] == 1
    assert received(payload) == sketch


VALID = {
    "v": 2,
    "p": "p",
    "n": 3,
    # [1, -2, 2] (1, two empty bins, 2): varints 2, 5, 4 = bytes 02 05 04.
    "i": {"x": ["AgUE", 0.5, 0.25, 0.0, 1.0]},
    "o": {"label": {"k": "BAI"}},  # [2, 1]
    "l": 2,
    # [[1, 0], [0, 1]]: 02 00, then 01 (row end), 00 02.
    "c": {"m": "AgABAAI", "p": "AgABAAI", "n": "AAIBAgA"},
}


def payload_with(path: tuple[str | int, ...], value: object) -> bytes:
    sketch = json.loads(json.dumps(VALID))
    node = sketch
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    raw = {
        "schema": "edgefleet/v1/drift",
        "device_id": "d1",
        "seq": 1,
        "window_start": NOW.isoformat(),
        "window_end": NOW.isoformat(),
        "count": 3,
        "sketch": sketch,
    }
    return json.dumps(raw).encode()


def test_the_valid_example_decodes() -> None:
    assert [pack_runs([1, -2, 2]), pack_runs([2, 1])] == ["AgUE", "BAI"]
    assert pack_matrix([[1, 0], [0, 1]]) == "AgABAAI"
    sketch = received(payload_with(("n",), 3))
    x = sketch.inputs["x"]
    assert isinstance(x, NumericCounts)
    assert (x.counts, x.count, x.mean) == ([1, 0, 0, 2], 3, 0.5)
    assert sketch.classification is not None
    assert sketch.classification.confusion == [[1, 0], [0, 1]]


MANY = {f"f{i}": ["oZwB", 0, 0, None, None] for i in range(MAX_SKETCH_BINS // 10_000 + 1)}


def b64(*raw: int) -> str:
    """Bytes as url-safe base64 without padding: hand-made packed payloads."""
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        (("i", "x"), ["AgQ", 0.5, 0.25, 0.0], "numeric feature is \\[runs, mean, m2, min, max"),
        (("i", "x"), ["AgQ", 0.5, 0.25, 0.0, 1.0, 0, 0, 9], "got 8 items"),
        (("i", "x"), ["AgQ", 0.5, -1, 0.0, 1.0], "m2.*greater than or equal to 0"),
        (("i", "x"), ["AgQ", 0.5, 1, 0.0, 1.0, -3], "missing.*greater than or equal to 0"),
        (("i", "x"), ["AgQ", 0.5, 1, 0.0, 1.0, 0, 4], "4 infinite values but only 3 binned"),
        (("i", "x"), ["AgQ", 0.5, 1, 2.0, 1.0], "min 2.0 is above max 1.0"),
        (("i", "x"), ["AgQ", 0.5, 1, None, 1.0], "both null"),
        (("i", "x"), ["AgQ", "NaN", 1, 0.0, 1.0], "finite"),
        (("i", "x"), [[1, 2], 0.5, 1, 0.0, 1.0], "i.x.numeric.counts.*runs are a string"),
        (("i", "x"), ["Ag+E", 0.5, 1, 0.0, 1.0], "i.x.numeric.counts.*not url-safe base64"),
        (("i", "x"), ["AgU=", 0.5, 1, 0.0, 1.0], "not url-safe base64 without padding"),
        (("i", "x"), ["AgUEA", 0.5, 1, 0.0, 1.0], "not url-safe base64"),
        (("i", "x"), [b64(2, 0x80), 0.5, 1, 0.0, 1.0], "last varint is truncated"),
        (("i", "x"), [b64(0x80, 0x80, 0x80, 0x80, 0x80, 1), 0.5, 1, 0.0, 1.0], "longer than 5"),
        (("i", "x"), [b64(0x82, 0), 0.5, 1, 0.0, 1.0], "not in its shortest form"),
        (("i", "x"), [b64(2, 1), 0.5, 1, 0.0, 1.0], "a run of 0 empty bins"),
        (("i", "x"), ["o5wB", 0.5, 1, 0.0, 1.0], "10001 bins, more than the 10000"),
        (("i", "x"), ["n5wBBQ", 0.5, 1, 0.0, 1.0], "10001 bins, more than the 10000"),
        (("i", "x"), ["A" * (MAX_PACKED_CHARS + 1), 0, 1, 0, 1], f"more than {MAX_PACKED_CHARS}"),
        (("o", "label"), {"k": b64(*[2] * 10_001)}, "10001 bins, more than the 10000"),
        (("o", "label"), {"k": "BAI", "m": -1}, "greater than or equal to 0"),
        (("i",), MANY, f"more than {MAX_SKETCH_BINS}"),
        (("c", "m"), b64(2, 0, 1, 2), "confusion has 2 rows but row 1 has 1 bins"),
        (("c", "m"), [[1, 0], [0, 1]], "c.m.*a matrix is a string"),
        (("c", "m"), b64(*[1] * MAX_MATRIX_ROWS), f"more than {MAX_MATRIX_ROWS} rows"),
        (("c", "m"), b64(2, 0x80), "c.m.*last varint is truncated"),
        (("c", "n"), "AAI", "2 positive score histograms, 1 negative"),
        (("c", "n"), b64(0, 2, 1, 2), "class 1: 2 positive score bins, 1 negative"),
        (("n",), -1, "greater than or equal to 0"),
        (("h",), "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s", "either p .* or h"),
        (("v",), 3, "sketch"),
    ],
    ids=[
        "numeric too short",
        "numeric too long",
        "negative m2",
        "negative missing",
        "more infinities than values",
        "min above max",
        "half-null range",
        "nan mean",
        "runs as a JSON array",
        "base64 outside the url-safe alphabet",
        "base64 with padding",
        "base64 of impossible length",
        "truncated varint",
        "overlong varint",
        "varint not in its shortest form",
        "run of 0 bins",
        "zero run past the bin bound",
        "zero runs overflow the bin count",
        "packed runs over the length bound",
        "too many categories",
        "negative missing category",
        "runs expanding past the sketch bound",
        "confusion not square",
        "matrix as a JSON array",
        "matrix with too many rows",
        "matrix with a truncated varint",
        "score histograms unpaired",
        "score histograms of unequal length",
        "negative row count",
        "both p and h",
        "unknown version",
    ],
)
def test_a_malformed_compact_sketch_is_refused_saying_why(
    path: tuple[str | int, ...], value: object, reason: str
) -> None:
    with pytest.raises(MessageError, match=reason) as refused:
        decode_device_message(Channel.DRIFT, "d1", payload_with(path, value))
    assert "sketch" in str(refused.value)


def test_a_sketch_without_a_compact_form_is_sent_in_version_1_not_dropped() -> None:
    # More finite values than binned ones: no accumulator makes it, but encode never fails.
    odd = WindowSketch(
        profile_id="p", count=1, inputs={"x": NumericCounts(counts=[1], count=2, mean=1.0)}
    )
    payload = encode(message(odd))
    assert json.loads(payload)["sketch"]["version"] == 1
    assert received(payload) == odd


def test_a_sketch_with_a_bin_past_the_varint_bound_is_sent_in_version_1() -> None:
    big = MAX_PACKED_COUNT + 1
    huge = WindowSketch(
        profile_id="p", count=big, inputs={"x": NumericCounts(counts=[big], count=big, mean=1.0)}
    )
    with pytest.raises(ValueError, match="no compact form: count 17179869184 needs more"):
        to_compact(huge)
    payload = encode(message(huge))
    assert json.loads(payload)["sketch"]["version"] == 1
    assert received(payload) == huge


def test_a_regressors_error_sums_round_trip_and_are_rounded_to_five_digits(profile) -> None:
    sketch = WindowSketch(
        profile_id="p",
        count=3,
        inputs={"x": NumericCounts(counts=[0, 3, 0], count=3, mean=1.0, min=0.5, max=2.0)},
        labelled=3,
        regression=RegressionCounts(
            count=3, error_sum=-0.123456789, abs_error_sum=1.23456789, squared_error_sum=0.0
        ),
    )
    assert received(encode(message(sketch))) == sketch
    rounded = quantize(sketch, profile)
    assert rounded.regression is not None
    assert (rounded.regression.error_sum, rounded.regression.abs_error_sum) == (-0.12346, 1.2346)
    assert received(encode(message(rounded))) == rounded
