"""Staged rollouts: pure decision logic over typed data (no database, no broker).

`policy.new_rollout` plans a rollout, `policy.decide` runs one tick of it,
`policy.apply_command` applies an operator's command, `approval` decides whether a
rollout waits for approval and applies an approval or denial, `patch.change_rollout`
changes a rollout's spec; the orchestrator
(`edgefleet.fleet.rollout_service`, the database shell) persists the returned state and
carries out the returned actions. See `edgefleet.fleet.rollouts.policy` for the rules.

The modules here (`model`, `policy`, `gates`, `selector`, `approval`, `patch`) import
neither SQLAlchemy nor the broker, so the rules can be tested by tables and properties
alone.
"""

from edgefleet.fleet.rollouts.model import (
    Action,
    Assign,
    Candidate,
    Complete,
    Decision,
    DeviceObservation,
    DeviceRecord,
    DeviceRolloutState,
    FailurePolicy,
    Gate,
    GateDecision,
    MaintenanceWindow,
    MarkTimedOut,
    ModelTarget,
    OperatorCommand,
    Pause,
    RollBack,
    RolloutCommandError,
    RolloutConflictError,
    RolloutOverlapError,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    SelectionError,
    Selector,
    StartWave,
    TimelineEntry,
    VersionMetrics,
    Wave,
    WaveMetrics,
)
from edgefleet.fleet.rollouts.policy import (
    apply_command,
    decide,
    held_devices,
    new_rollout,
    unconfirmed_actions,
)

__all__ = [
    "Action",
    "Assign",
    "Candidate",
    "Complete",
    "Decision",
    "DeviceObservation",
    "DeviceRecord",
    "DeviceRolloutState",
    "FailurePolicy",
    "Gate",
    "GateDecision",
    "MaintenanceWindow",
    "MarkTimedOut",
    "ModelTarget",
    "OperatorCommand",
    "Pause",
    "RollBack",
    "RolloutCommandError",
    "RolloutConflictError",
    "RolloutOverlapError",
    "RolloutSpec",
    "RolloutState",
    "RolloutStatus",
    "SelectionError",
    "Selector",
    "StartWave",
    "TimelineEntry",
    "VersionMetrics",
    "Wave",
    "WaveMetrics",
    "apply_command",
    "decide",
    "held_devices",
    "new_rollout",
    "unconfirmed_actions",
]
