"""The package upgrade's restart verdict, from the update state the agent persisted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgefleet.agent.update.machine import AT_REST, Phase, UpdateState
from edgefleet.agent.update.restart_gate import read_verdict, restart_verdict
from edgefleet.agent.update.types import UpdateTarget
from edgefleet.agent.update.wiring import STATE_FILE

TARGET = UpdateTarget(desired_seq=3, name="wine", version="1.2.0", sha256="ab" * 32, length=10)


def persisted(phase: Phase) -> bytes:
    """The bytes the runner writes for a state in ``phase`` (atomic_write_json's JSON)."""
    return UpdateState(phase=phase, target=TARGET).model_dump_json().encode()


@pytest.mark.parametrize("phase", sorted(AT_REST))
def test_a_state_at_rest_lets_the_upgrade_restart_now(phase: Phase) -> None:
    verdict = restart_verdict(persisted(phase))
    assert verdict.restart
    assert verdict.line() == f"restart: update phase {phase.value} (wine 1.2.0)"


@pytest.mark.parametrize("phase", sorted(set(Phase) - AT_REST))
def test_a_state_mid_update_defers_the_restart(phase: Phase) -> None:
    verdict = restart_verdict(persisted(phase))
    assert not verdict.restart
    assert verdict.line() == f"defer: update phase {phase.value} (wine 1.2.0) is mid-update"


def test_every_phase_is_judged_by_the_machines_own_rest_set() -> None:
    """No second list of 'at rest' phases: the verdict follows machine.AT_REST exactly."""
    assert {p for p in Phase if restart_verdict(persisted(p)).restart} == set(AT_REST)


def test_a_phase_from_a_newer_agent_defers_rather_than_interrupt_it() -> None:
    verdict = restart_verdict(json.dumps({"phase": "resharding" + "x" * 100}).encode())
    assert not verdict.restart
    assert "is unknown to this version" in verdict.reason
    assert len(verdict.reason) < 100, "an unknown phase is shortened"


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (None, "no update state yet"),
        (b"{not json", "the update state is unreadable; the agent resets it"),
        (b"[1, 2]", "the update state has no phase; the agent resets it"),
        (b'{"phase": 7}', "the update state has no phase; the agent resets it"),
        (b"{}", "the update state has no phase; the agent resets it"),
    ],
)
def test_no_or_unusable_state_restarts_because_the_agent_would_start_fresh(
    state: bytes | None, reason: str
) -> None:
    assert restart_verdict(state).line() == f"restart: {reason}"


def test_a_target_without_name_or_version_is_left_out_of_the_reason() -> None:
    state = json.dumps({"phase": "probation", "target": {"name": "wine"}}).encode()
    assert restart_verdict(state).line() == "defer: update phase probation is mid-update"


def test_read_verdict_reads_the_state_file_of_the_data_dir(tmp_path: Path) -> None:
    assert read_verdict(tmp_path).line() == "restart: no update state yet"
    (tmp_path / STATE_FILE).write_bytes(persisted(Phase.DOWNLOADING))
    assert not read_verdict(tmp_path).restart
