"""The acceptance rules of desired states: one table row per rule, named after what it stops."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.agent.update.acceptance import (
    Accepted,
    Ignored,
    Rejected,
    Verdict,
    judge,
    judge_install,
)
from edgefleet.agent.update.types import (
    DesiredReceived,
    DesiredRejected,
    InstalledModel,
    UpdateTarget,
)
from edgefleet.shared.signing.errors import (
    Downgrade,
    Expired,
    Malformed,
    ReplayedOrOlder,
    UpdateRejected,
)
from tests.agent.update.support import desired

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
ACTIVE = InstalledModel(name="wine", version="1.5.2", sha256="a" * 64)


def target(seq: int, sha: str = "b", version: str = "1.6.0", *, rollback: bool = False):
    return UpdateTarget(
        desired_seq=seq,
        name="wine",
        version=version,
        sha256=sha * 64,
        length=10,
        rollout_id="ro-1",
        rollback=rollback,
    )


def offer(seq: int, sha: str = "b", *, expires_at: datetime = LATER) -> DesiredReceived:
    return desired(target(seq, sha), expires_at=expires_at)


UNOPENED = DesiredRejected(
    reason="desired state is signed by unknown key(s) 0123456789ab",
    desired_seq=9,
    envelope_sha256="e" * 64,
)
EXPIRED = offer(6, expires_at=NOW - timedelta(seconds=1))


@dataclass(frozen=True)
class Case:
    """One payload and what the device took before it: seq 5, for target ``b``."""

    offer: DesiredReceived | DesiredRejected
    held: tuple[UpdateTarget | None, ...] = (target(5),)
    last_seq: int = 5
    last_rejected: str | None = None
    now: datetime = NOW


@dataclass(frozen=True)
class Expect:
    verdict: type[Accepted | Ignored | Rejected]
    cause: type[UpdateRejected] | None = None
    message: str = ""


RULES: dict[str, tuple[Case, Expect]] = {
    "first_desired_state_is_accepted": (
        Case(offer(0), held=(), last_seq=-1),
        Expect(Accepted),
    ),
    "newer_desired_state_is_accepted": (Case(offer(6, "c")), Expect(Accepted)),
    "forged_or_foreign_envelope_is_rejected": (
        Case(UNOPENED),
        Expect(Rejected, UpdateRejected, "signed by unknown key"),
    ),
    "retained_copy_of_the_accepted_state_is_not_a_replay": (
        Case(offer(5, "b")),
        Expect(Ignored, message="taken already"),
    ),
    "retained_copy_naming_the_active_model_is_not_a_replay": (
        # A desired state for the model already active leaves no target to compare with.
        Case(offer(5, "a"), held=(None, None)),
        Expect(Ignored),
    ),
    "retained_copy_is_not_a_replay_even_once_expired": (
        Case(offer(5, "b", expires_at=NOW - timedelta(days=3))),
        Expect(Ignored),
    ),
    "replayed_older_desired_state_is_rejected": (
        Case(offer(3, "b")),
        Expect(Rejected, ReplayedOrOlder, "seq 3 is not newer than the last accepted 5"),
    ),
    "seq_reused_for_another_target_is_rejected": (
        Case(offer(5, "c")),
        Expect(Rejected, ReplayedOrOlder, "seq 5 is not newer than the last accepted 5"),
    ),
    "seq_reused_for_another_target_than_the_pending_one_is_rejected": (
        Case(offer(5, "c"), held=(target(4, "d"), target(5, "b"))),
        Expect(Rejected, ReplayedOrOlder, "seq 5 is not newer"),
    ),
    "frozen_expired_desired_state_is_rejected": (
        Case(EXPIRED),
        Expect(Rejected, Expired, "expired at 2025-06-01T11:59:59"),
    ),
    "desired_state_expiring_this_instant_is_rejected": (
        Case(offer(6, expires_at=NOW)),
        Expect(Rejected, Expired, "expired at"),
    ),
    "retained_rejected_state_is_not_reported_again": (
        Case(EXPIRED, last_rejected=EXPIRED.envelope_sha256),
        Expect(Ignored, message="rejected before"),
    ),
    "retained_unopened_envelope_is_not_reported_again": (
        Case(UNOPENED, last_rejected=UNOPENED.envelope_sha256),
        Expect(Ignored, message="rejected before"),
    ),
    "rejected_state_that_became_valid_is_taken": (
        # Rejected as expired while the device's clock ran ahead; the clock is right now.
        Case(EXPIRED, last_rejected=EXPIRED.envelope_sha256, now=NOW - timedelta(hours=1)),
        Expect(Accepted),
    ),
    "another_rejection_than_the_last_one_is_reported": (
        Case(EXPIRED, last_rejected="f" * 64),
        Expect(Rejected, Expired),
    ),
}


def _check(verdict: Verdict | None, expect: Expect) -> None:
    assert isinstance(verdict, expect.verdict), verdict
    if isinstance(verdict, Rejected):
        assert verdict.cause is expect.cause
        assert expect.message in verdict.reason
    elif isinstance(verdict, Ignored):
        assert expect.message in verdict.why


@pytest.mark.parametrize("rule", list(RULES))
def test_desired_state_rule(rule: str) -> None:
    case, expect = RULES[rule]
    verdict = judge(
        case.offer,
        last_seq=case.last_seq,
        held=case.held,
        last_rejected=case.last_rejected,
        now=case.now,
    )
    _check(verdict, expect)
    if isinstance(verdict, Accepted):
        assert isinstance(case.offer, DesiredReceived)
        assert verdict.target == case.offer.target
    if isinstance(verdict, Rejected):
        assert verdict.desired_seq == (
            case.offer.target.desired_seq
            if isinstance(case.offer, DesiredReceived)
            else case.offer.desired_seq
        )


INSTALL_RULES: dict[str, tuple[UpdateTarget, InstalledModel | None, Expect | None]] = {
    "upgrade_is_installed": (target(6, version="1.6.0"), ACTIVE, None),
    "reinstall_of_the_same_version_is_installed": (target(6, version="1.5.2"), ACTIVE, None),
    "first_model_of_an_empty_device_is_installed": (target(6, version="0.1.0"), None, None),
    "unsigned_downgrade_is_rejected": (
        target(6, version="1.4.0"),
        ACTIVE,
        Expect(
            Rejected,
            Downgrade,
            "model 1.4.0 is older than the active 1.5.2 and the desired state is not a "
            "signed rollback",
        ),
    ),
    "signed_rollback_to_an_older_model_is_installed": (
        target(6, version="1.4.0", rollback=True),
        ACTIVE,
        None,
    ),
    "version_that_is_not_semver_is_rejected": (
        target(6, version="v1.7"),
        ACTIVE,
        Expect(Rejected, Malformed, "not a semantic version"),
    ),
}


@pytest.mark.parametrize("rule", list(INSTALL_RULES))
def test_install_rule(rule: str) -> None:
    candidate, active, expect = INSTALL_RULES[rule]
    verdict = judge_install(candidate, active=active)
    if expect is None:
        assert verdict is None
    else:
        _check(verdict, expect)
        assert verdict is not None
        assert verdict.desired_seq == candidate.desired_seq


@given(
    seq=st.integers(0, 10),
    last_seq=st.integers(-1, 10),
    expires_in_s=st.integers(-100, 100),
    held=st.lists(st.builds(target, st.integers(0, 10), st.sampled_from("bc")), max_size=2),
)
def test_what_is_accepted_is_newer_and_unexpired(
    seq: int, last_seq: int, expires_in_s: int, held: list[UpdateTarget]
) -> None:
    received = offer(seq, "b", expires_at=NOW + timedelta(seconds=expires_in_s))
    verdict = judge(received, last_seq=last_seq, held=held, last_rejected=None, now=NOW)
    if isinstance(verdict, Accepted):
        assert seq > last_seq
        assert expires_in_s > 0
    elif isinstance(verdict, Ignored):
        assert seq == last_seq
    else:
        assert seq <= last_seq or expires_in_s <= 0
