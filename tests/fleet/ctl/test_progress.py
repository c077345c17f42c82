"""The rollout progress text: bars, wave lines, the log summary and the final outcome,
each a pure function of the rollout's REST representation."""

from __future__ import annotations

from typing import Any

import pytest

from edgefleet.fleet.ctl import progress
from edgefleet.fleet.ctl.errors import ExitCode
from edgefleet.fleet.ctl.views import Rollout


def _rollout(**overrides: Any) -> Rollout:
    """A two-wave rollout of 5 devices: the canary healthy, wave 2 half way."""
    body: dict[str, Any] = {
        "id": "ro-1",
        "model": "wine",
        "version": "1.1.0",
        "status": "running",
        "current_wave": 1,
        "targets": 5,
        "wave_sizes": [1, 4],
        "counts": {"healthy": 2, "downloading": 1, "pending": 2, "failed": 0},
        "waves": [
            {
                "index": 0,
                "size": 1,
                "end": 1,
                "started": True,
                "counts": {"healthy": 1},
                "gate_decision": {"wave": 0, "passed": True, "reasons": []},
            },
            {
                "index": 1,
                "size": 4,
                "end": 5,
                "started": True,
                "counts": {"healthy": 1, "downloading": 1, "pending": 2},
            },
        ],
        "timeline": [{"id": 1, "kind": "wave_started"}],  # not declared: kept as is
    }
    return Rollout.model_validate(body | overrides)


@pytest.mark.parametrize(
    ("counts", "total", "width", "drawn"),
    [
        ({}, 4, 8, "[........]"),
        ({"healthy": 4}, 4, 8, "[########]"),
        ({"healthy": 1, "failed": 1, "downloading": 1}, 4, 8, "[##xx>>..]"),
        ({"rolled_back": 2, "timed_out": 1, "installed": 1}, 4, 4, "[xxx>]"),
        ({"pending": 3, "offline": 1}, 4, 4, "[....]"),
        # Rounding: the cells always add up to the width.
        ({"healthy": 1}, 3, 10, "[###.......]"),
        ({"healthy": 2}, 3, 10, "[#######...]"),
        # A newer fleet's unknown state is drawn as waiting, not lost or crashing.
        ({"quarantined": 2, "healthy": 2}, 4, 4, "[##..]"),
        # More devices counted than planned (a view mid-change) still fits the width.
        ({"healthy": 5}, 4, 4, "[####]"),
        ({"healthy": 0}, 0, 4, "[....]"),
    ],
)
def test_bar_draws_each_group_in_proportion(
    counts: dict[str, int], total: int, width: int, drawn: str
) -> None:
    assert progress.bar(progress.tally(counts, total), width) == drawn


def test_colored_bar_wraps_groups_in_ansi_and_keeps_the_cells() -> None:
    drawn = progress.bar(progress.tally({"healthy": 1, "failed": 1}, 4), 4, color=True)
    assert drawn == "[\x1b[32m#\x1b[0m\x1b[31mx\x1b[0m\x1b[2m..\x1b[0m]"


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("completed", ExitCode.OK),
        ("rolled_back", ExitCode.ROLLED_BACK),
        ("aborted", ExitCode.ABORTED),
        ("failed", ExitCode.FAILED),
        ("approval_denied", ExitCode.DENIED),
        ("running", None),
        ("soaking", None),
        ("paused", None),
        ("rolling_back", None),
        ("waiting_for_approval", None),
        ("created", None),
        ("some_new_status", None),
    ],
)
def test_outcome_is_final_only_for_terminal_statuses(status: str, code: ExitCode | None) -> None:
    assert progress.outcome(status) == code


def test_every_terminal_status_of_the_fleet_has_an_exit_code() -> None:
    from edgefleet.fleet.rollouts.model import TERMINAL_STATUSES

    assert {s.value for s in TERMINAL_STATUSES} == set(progress.OUTCOMES)


@pytest.mark.parametrize(
    ("counts", "text"),
    [
        ({}, "no devices"),
        ({"pending": 0, "healthy": 0}, "no devices"),
        ({"pending": 2, "failed": 1, "healthy": 3}, "healthy 3, failed 1, pending 2"),
        ({"zeta": 1, "alpha": 2, "healthy": 1}, "healthy 1, alpha 2, zeta 1"),
    ],
)
def test_state_counts_list_non_zero_states_in_a_fixed_order(
    counts: dict[str, int], text: str
) -> None:
    assert progress.state_counts(counts) == text


def test_render_shows_a_header_and_one_bar_per_wave() -> None:
    lines = progress.render(_rollout(), width=8)
    assert lines == [
        "rollout ro-1: wine 1.1.0 running, wave 2/2, 2/5 healthy",
        "  wave 1 [########] 1/1  gate passed  (healthy 1)",
        "  wave 2 [##>>....] 1/4  running  (healthy 1, downloading 1, pending 2)",
    ]


def test_render_says_why_a_rollout_stands_still() -> None:
    failed_gate = {"wave": 1, "passed": False, "reasons": ["failure ratio 0.50 > 0.00"]}
    rollout = _rollout(
        status="paused",
        status_reason="gate of wave 2 failed",
        held="waiting for model approval of wine 1.1.0",
    )
    waves = [w.as_json() for w in rollout.waves]
    waves[1]["gate_decision"] = failed_gate
    lines = progress.render(_rollout(**rollout.as_json() | {"waves": waves}), width=4)
    assert lines[2].endswith(
        "gate failed: failure ratio 0.50 > 0.00  (healthy 1, downloading 1, pending 2)"
    )
    assert lines[3:] == [
        "  reason: gate of wave 2 failed",
        "  held: waiting for model approval of wine 1.1.0",
    ]


def test_waves_not_started_show_no_counts() -> None:
    waves = _rollout().as_json()["waves"]
    waves[1] |= {"started": False, "counts": {"pending": 4}}
    lines = progress.render(_rollout(current_wave=0, waves=waves), width=4)
    assert lines[0] == "rollout ro-1: wine 1.1.0 running, wave 1/2, 2/5 healthy"
    assert lines[2] == "  wave 2 [....] 0/4  not started"


def test_summary_is_one_line_that_changes_only_with_the_state() -> None:
    line = progress.summary(_rollout())
    assert line == (
        "rollout ro-1: wine 1.1.0 running, wave 2/2, 2/5 healthy"
        " | healthy 2, downloading 1, pending 2 | wave 1 gate passed"
    )
    assert "\n" not in line
    assert progress.summary(_rollout()) == line
    moved = _rollout(counts={"healthy": 3, "downloading": 0, "pending": 2})
    assert progress.summary(moved) != line


def test_unplanned_rollout_renders_without_waves() -> None:
    # An unreadable rollout's summary: no plan, no counts, a reason.
    rollout = _rollout(
        status="aborted",
        current_wave=-1,
        targets=0,
        wave_sizes=[],
        counts={},
        waves=[],
        status_reason="stored state does not parse",
    )
    assert progress.render(rollout) == [
        "rollout ro-1: wine 1.1.0 aborted, no plan, 0/0 healthy",
        "  reason: stored state does not parse",
    ]


@pytest.mark.parametrize(
    ("previous", "lines", "written"),
    [
        (0, ["a", "b"], "\x1b[Ja\nb\n"),
        (2, ["c"], "\x1b[2F\x1b[Jc\n"),
        (3, [], "\x1b[3F\x1b[J"),
    ],
)
def test_redraw_replaces_the_previous_frame(previous: int, lines: list[str], written: str) -> None:
    assert progress.redraw(previous, lines) == written


def test_header_colors_the_status_only_when_asked() -> None:
    rolled_back = _rollout(status="rolled_back")
    assert "\x1b[" not in progress.header(rolled_back)
    assert "\x1b[31mrolled_back\x1b[0m" in progress.header(rolled_back, color=True)
