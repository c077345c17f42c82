"""Target selection, wave planning and overlap detection."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from edgefleet.fleet.rollouts import (
    Candidate,
    Gate,
    MaintenanceWindow,
    RolloutOverlapError,
    SelectionError,
    Selector,
    Wave,
)
from edgefleet.fleet.rollouts.selector import (
    check_overlap,
    plan_waves,
    select_targets,
    share,
    split_waves,
)
from tests.fleet.rollouts.support import fleet, spec

MIXED = [
    Candidate(device_id="cam-1", tags=("store", "eu"), hardware="jetson"),
    Candidate(device_id="cam-2", tags=("store",), hardware="pi4"),
    Candidate(device_id="gw-1", tags=("eu",), hardware="pi4"),
    Candidate(device_id="gw-2", tags=("store", "eu", "beta"), hardware="pi5"),
]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (Selector(), {"cam-1", "cam-2", "gw-1", "gw-2"}),
        (Selector(tags=("store", "eu")), {"cam-1", "gw-2"}),  # all of the tags
        (Selector(hardware=("pi4", "pi5")), {"cam-2", "gw-1", "gw-2"}),  # any of the hardware
        (Selector(device_ids=("gw-1", "cam-2")), {"gw-1", "cam-2"}),
        (Selector(tags=("eu",), hardware=("pi4",)), {"gw-1"}),  # criteria combine with and
        (Selector(tags=("store",), device_ids=("gw-1", "gw-2")), {"gw-2"}),
    ],
)
def test_selector_criteria_combine(selector: Selector, expected: set[str]) -> None:
    assert set(select_targets(MIXED, selector, seed="s")) == expected


def test_fraction_picks_the_same_devices_for_the_same_seed_in_any_candidate_order() -> None:
    devices = fleet(200)
    first = select_targets(devices, Selector(fraction=0.25), seed="r-1")
    shuffled = list(devices)
    random.Random(7).shuffle(shuffled)
    assert select_targets(shuffled, Selector(fraction=0.25), seed="r-1") == first
    assert len(first) == 50
    # Another seed picks another sample, and the order is not alphabetical.
    assert select_targets(devices, Selector(fraction=0.25), seed="r-2") != first
    assert first != sorted(first)


@given(
    n=st.integers(1, 60),
    small=st.floats(0.01, 1.0),
    extra=st.floats(0.0, 1.0),
    seed=st.text(min_size=1, max_size=8),
    order_seed=st.integers(0, 1000),
)
def test_selection_is_stable_and_a_larger_fraction_is_a_superset(
    n: int, small: float, extra: float, seed: str, order_seed: int
) -> None:
    devices = fleet(n)
    large = min(1.0, small + extra)
    picked = select_targets(devices, Selector(fraction=small), seed=seed)
    shuffled = list(devices)
    random.Random(order_seed).shuffle(shuffled)
    assert select_targets(shuffled, Selector(fraction=small), seed=seed) == picked
    assert set(picked) <= set(select_targets(devices, Selector(fraction=large), seed=seed))
    assert 1 <= len(picked) == share(small, n)


def test_unknown_device_ids_are_named() -> None:
    with pytest.raises(SelectionError, match=r"does not know: ghost-1, ghost-2"):
        select_targets(MIXED, Selector(device_ids=("cam-1", "ghost-2", "ghost-1")), seed="s")


def test_selector_matching_nothing_is_refused() -> None:
    with pytest.raises(SelectionError, match=r"matches none of 4 device"):
        select_targets(MIXED, Selector(tags=("nowhere",)), seed="s")


def test_duplicate_candidates_are_refused() -> None:
    with pytest.raises(SelectionError, match=r"'cam-1' is listed twice"):
        select_targets([*MIXED, MIXED[0]], Selector(), seed="s")


@pytest.mark.parametrize(
    ("waves", "total", "ends"),
    [
        ((0.01, 0.1, 0.5, 1.0), 1000, [10, 100, 500, 1000]),
        ((0.1, 1.0), 10, [1, 10]),  # 0.1 of 10 is 1, not 2 from float rounding
        ((0.7, 1.0), 10, [7, 10]),
        ((0.01, 0.1, 0.5, 1.0), 3, [1, 2, 3]),  # at least one device per wave; empty dropped
        ((0.01, 0.1, 0.5, 1.0), 1, [1]),
        ((1, 10, 1.0), 50, [1, 10, 50]),  # ints are absolute counts
        ((5, 0.1, 1.0), 20, [5, 6, 20]),  # a fraction below the count still adds a device
        ((100, 1.0), 30, [30]),  # a count beyond the set covers it
    ],
)
def test_wave_sizes(waves: tuple[float | int, ...], total: int, ends: list[int]) -> None:
    parsed = [Wave(count=w) if isinstance(w, int) else Wave(fraction=w) for w in waves]
    planned = plan_waves(parsed, total, Gate())
    assert [w.end for w in planned] == ends
    sizes = [len(w) for w in split_waves([f"d{i}" for i in range(total)], planned)]
    assert all(size >= 1 for size in sizes)
    assert sum(sizes) == total


def test_a_wave_gate_overrides_the_rollout_gate() -> None:
    canary_gate = Gate(soak_s=3600)
    planned = plan_waves([Wave(count=1, gate=canary_gate), Wave(fraction=1.0)], 10, Gate())
    assert planned[0].gate == canary_gate
    assert planned[1].gate == Gate()


def test_overlap_names_the_devices_and_the_rollout_that_holds_them() -> None:
    active = {"r-old": {"cam-1", "gw-2", "x"}, "r-other": {"y"}}
    with pytest.raises(RolloutOverlapError) as caught:
        check_overlap(["cam-1", "cam-2", "gw-2"], active)
    assert caught.value.held == {"r-old": ["cam-1", "gw-2"]}
    assert "2 device(s) cam-1, gw-2 (held by active rollout 'r-old')" in str(caught.value)
    check_overlap(["cam-2"], active)  # disjoint: no error


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"waves": (Wave(fraction=0.5),)}, "last wave must be fraction=1.0"),
        ({"waves": (Wave(fraction=0.5), Wave(fraction=0.2), Wave(fraction=1.0))}, "must grow"),
        ({"waves": (Wave(count=5), Wave(count=5), Wave(fraction=1.0))}, "must grow"),
        ({"waves": ()}, "at least one wave"),
    ],
)
def test_invalid_wave_lists_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(**kwargs)


def test_a_wave_has_exactly_one_size() -> None:
    with pytest.raises(ValidationError, match="exactly one of fraction or count"):
        Wave(fraction=0.5, count=3)
    with pytest.raises(ValidationError, match="exactly one of fraction or count"):
        Wave()


def test_an_empty_maintenance_window_is_refused() -> None:
    with pytest.raises(ValidationError, match="start and end are both"):
        MaintenanceWindow.model_validate({"start": "02:00", "end": "02:00"})
