"""A model version's lifecycle, pure: uploaded → approved | rejected → retired.

Invariants:
- approval and rejection need a person other than the uploader (four eyes), unless the
  fleet runs in one-person lab mode (``single_person_approval``);
- only an approved version may pass a rollout's first wave or carry an alias;
- a rejected or retired version starts no rollout and is assigned to no device;
- retired is final.
"""

from __future__ import annotations

from enum import StrEnum

from edgefleet.fleet.errors import FleetError, FourEyesError


class ModelState(StrEnum):
    UPLOADED = "uploaded"
    APPROVED = "approved"
    REJECTED = "rejected"
    RETIRED = "retired"


class LifecycleError(FleetError):
    """A transition the version's state does not allow (409)."""

    code = "lifecycle_conflict"


def review(
    state: ModelState,
    *,
    approve: bool,
    uploader: str,
    reviewer: str,
    single_person_approval: bool,
) -> ModelState:
    """The state after approving (or rejecting) a version in ``state``.

    ``uploader`` and ``reviewer`` are person ids (`Principal.person`). Raises
    `FourEyesError` when they are one person and lab mode is off, `LifecycleError`
    for a version that is not waiting for review.
    """
    verb = "approve" if approve else "reject"
    if state is not ModelState.UPLOADED:
        raise LifecycleError(f"cannot {verb} a version that is {state.value}")
    if reviewer == uploader and not single_person_approval:
        raise FourEyesError(
            f"four eyes: {reviewer} uploaded this version and cannot {verb} it;"
            " another person with model:approve must (or run the fleet with"
            " single_person_approval for a one-person lab)"
        )
    return ModelState.APPROVED if approve else ModelState.REJECTED


def retire(state: ModelState) -> ModelState:
    """The state after retiring; raises `LifecycleError` for one already retired."""
    if state is ModelState.RETIRED:
        raise LifecycleError("the version is already retired")
    return ModelState.RETIRED


def require_deployable(state: ModelState, what: str) -> None:
    """Raises `LifecycleError` unless ``state`` may start a rollout or an assignment."""
    if state in (ModelState.REJECTED, ModelState.RETIRED):
        raise LifecycleError(f"{what} is {state.value}: it starts no rollout and no assignment")


def may_pass_first_wave(state: ModelState) -> bool:
    """Whether a rollout of a version in ``state`` may go past its first (canary) wave."""
    return state is ModelState.APPROVED


def require_alias_target(state: ModelState, what: str) -> None:
    """Raises `LifecycleError` unless an alias may point at a version in ``state``."""
    if state is not ModelState.APPROVED:
        raise LifecycleError(
            f"an alias may point only at an approved version; {what} is {state.value}"
        )
