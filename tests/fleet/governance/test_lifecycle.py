"""The model lifecycle's transitions and the four-eyes rule, as a table."""

from __future__ import annotations

import pytest

from edgefleet.fleet.errors import FourEyesError
from edgefleet.fleet.governance.lifecycle import (
    LifecycleError,
    ModelState,
    may_pass_first_wave,
    require_alias_target,
    require_deployable,
    retire,
    review,
)

U, A, R, X = ModelState.UPLOADED, ModelState.APPROVED, ModelState.REJECTED, ModelState.RETIRED


@pytest.mark.parametrize(
    ("state", "approve", "reviewer", "lab", "expected"),
    [
        (U, True, "user:bob", False, A),
        (U, False, "user:bob", False, R),
        (U, True, "user:ann", False, FourEyesError),
        (U, False, "user:ann", False, FourEyesError),
        (U, True, "user:ann", True, A),
        (A, True, "user:bob", False, LifecycleError),
        (R, True, "user:bob", False, LifecycleError),
        (X, False, "user:bob", False, LifecycleError),
    ],
)
def test_review(
    state: ModelState, approve: bool, reviewer: str, lab: bool, expected: object
) -> None:
    def act() -> ModelState:
        return review(
            state,
            approve=approve,
            uploader="user:ann",
            reviewer=reviewer,
            single_person_approval=lab,
        )

    if isinstance(expected, type):
        with pytest.raises(expected):
            act()
    else:
        assert act() is expected


def test_retire_from_anything_but_retired() -> None:
    for state in (U, A, R):
        assert retire(state) is X
    with pytest.raises(LifecycleError):
        retire(X)


def test_what_each_state_may_do() -> None:
    assert [may_pass_first_wave(s) for s in (U, A, R, X)] == [False, True, False, False]
    require_deployable(U, "wine 1.0.0")
    require_deployable(A, "wine 1.0.0")
    for state in (R, X):
        with pytest.raises(LifecycleError, match=state.value):
            require_deployable(state, "wine 1.0.0")
    require_alias_target(A, "wine 1.0.0")
    with pytest.raises(LifecycleError, match="approved"):
        require_alias_target(U, "wine 1.0.0")
