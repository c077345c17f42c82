"""The reconciliation rules, as tables: when a stored desired state is published again."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from edgefleet.fleet.reconcile.policy import (
    EMPTY,
    INVALID,
    DeviceView,
    GiveUp,
    Hold,
    InSync,
    Memory,
    Reason,
    ReconcileRules,
    Republish,
    Retained,
    Wait,
    backoff,
    classify_retained,
    decide,
    publish_failed,
    reason_for,
)
from edgefleet.shared.signing.director import DesiredBody, DesiredTarget

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TARGET = "a" * 64
OLD = "b" * 64
RULES = ReconcileRules(after_s=300, in_flight_s=10, backoff_s=60, backoff_max_s=600, max_attempts=3)


def body(*, seq: int = 7, expires_in_s: float = 86_400) -> DesiredBody:
    return DesiredBody(
        device_id="cam-1",
        seq=seq,
        target=DesiredTarget(name="wine-1.1.0.efpkg", sha256=TARGET, length=10, version="1.1.0"),
        expires_at=T0 + timedelta(seconds=expires_in_s),
        issued_at=T0,
    )


def view(**changes: object) -> DeviceView:
    base = DeviceView(
        desired=body(),
        retained=Retained.CURRENT,
        online=True,
        active_sha256=OLD,
        online_since=T0,
        acted=False,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("observed", "stored", "settled", "expected"),
    [
        (None, 7, False, Retained.UNKNOWN),  # the broker may still be sending it
        (None, 7, True, Retained.MISSING),  # a broker restarted without persistence
        (EMPTY, 7, False, Retained.CLEARED),  # cleared by an empty retained publish
        (INVALID, 7, True, Retained.CLEARED),  # overwritten with something else
        (6, 7, True, Retained.STALE),  # an older envelope (a replayed one)
        (7, 7, True, Retained.CURRENT),
        (8, 7, True, Retained.NEWER),  # another director's: not ours to replace
    ],
)
def test_retained_message_is_classified_against_the_stored_seq(
    observed: int | None, stored: int, settled: bool, expected: Retained
) -> None:
    assert classify_retained(observed, stored, settled=settled) is expected


@pytest.mark.parametrize(
    ("changes", "now_s", "expected"),
    [
        # The retained message was cleared: republish at once, online or offline.
        ({"retained": Retained.CLEARED, "online": False}, 0, Reason.RETAINED_LOST),
        ({"retained": Retained.CLEARED, "acted": True}, 0, Reason.RETAINED_LOST),
        # Absent or older: only once the director's own publish cannot be in flight.
        ({"retained": Retained.MISSING, "online": False}, 9, None),
        ({"retained": Retained.MISSING, "online": False}, 10, Reason.RETAINED_LOST),
        ({"retained": Retained.STALE}, 9, None),
        ({"retained": Retained.STALE}, 10, Reason.RETAINED_LOST),
        ({"retained": Retained.MISSING, "acted": True}, 10, Reason.RETAINED_LOST),
        # Not judged yet, or someone else's newer state: no reason from the retained side.
        ({"retained": Retained.UNKNOWN, "online": False}, 10_000, None),
        ({"retained": Retained.NEWER, "online": False}, 10_000, None),
        # Online, on the old model, silent about this seq: stuck only after after_s.
        ({}, 299, None),
        ({}, 300, Reason.STUCK),
        # ... counted from when it came online, if that is later than the issue.
        ({"online_since": at(200)}, 400, None),
        ({"online_since": at(200)}, 500, Reason.STUCK),
        # Never stuck: offline, already on the target, or it reported about this seq
        # (downloading, rejected, rolled back: the device has it and decided).
        ({"online": False}, 10_000, None),
        ({"active_sha256": TARGET}, 10_000, None),
        ({"acted": True}, 10_000, None),
        ({"online_since": None}, 300, Reason.STUCK),
        ({"active_sha256": None}, 300, Reason.STUCK),  # a factory model without a package
    ],
)
def test_reason_for_republishing(
    changes: dict[str, object], now_s: float, expected: Reason | None
) -> None:
    assert reason_for(view(**changes), at(now_s), RULES) == expected


def test_an_in_sync_device_is_forgotten() -> None:
    decision, memory = decide(view(active_sha256=TARGET), Memory(7, attempts=2), at(0), RULES)
    assert decision == InSync()
    assert memory is None


def test_a_lost_retained_state_is_republished_at_once() -> None:
    decision, memory = decide(view(retained=Retained.CLEARED, online=False), None, at(0), RULES)
    assert decision == Republish(Reason.RETAINED_LOST, attempt=1)
    assert memory == Memory(7, attempts=1, last_attempt_at=at(0))


def test_republishes_back_off_exponentially_up_to_the_cap() -> None:
    assert [backoff(n, RULES).total_seconds() for n in range(1, 7)] == [
        60,
        120,
        240,
        480,
        600,
        600,
    ]
    assert backoff(10**9, RULES).total_seconds() == 600  # no overflow however many


@pytest.mark.parametrize(
    ("attempts", "last_s", "now_s", "expected"),
    [
        (1, 400, 459, Wait(Reason.STUCK, at(460))),
        (1, 400, 460, Republish(Reason.STUCK, attempt=2)),
        (2, 500, 619, Wait(Reason.STUCK, at(620))),
        (2, 500, 620, Republish(Reason.STUCK, attempt=3)),
    ],
)
def test_a_stuck_device_is_not_spammed(
    attempts: int, last_s: float, now_s: float, expected: object
) -> None:
    memory = Memory(7, attempts=attempts, last_attempt_at=at(last_s))
    decision, _ = decide(view(), memory, at(now_s), RULES)
    assert decision == expected


def test_after_max_attempts_it_gives_up_once_then_holds() -> None:
    memory = Memory(7, attempts=3, last_attempt_at=at(0))
    decision, memory_after = decide(view(), memory, at(10_000), RULES)
    assert decision == GiveUp(Reason.STUCK, "attempts", 3)
    assert memory_after is not None
    assert memory_after.held
    decision, again = decide(view(), memory_after, at(20_000), RULES)
    assert decision == Hold(Reason.STUCK)
    assert again == memory_after


def test_a_new_desired_seq_starts_afresh() -> None:
    held = Memory(6, attempts=3, last_attempt_at=at(0), held=True)
    decision, memory = decide(view(retained=Retained.CLEARED), held, at(10), RULES)
    assert decision == Republish(Reason.RETAINED_LOST, attempt=1)
    assert memory == Memory(7, attempts=1, last_attempt_at=at(10))


def test_an_expired_desired_state_is_never_republished() -> None:
    expired = view(retained=Retained.CLEARED, desired=body(expires_in_s=60))
    decision, memory = decide(expired, None, at(60), RULES)
    assert decision == GiveUp(Reason.RETAINED_LOST, "expired", 0)
    assert memory is not None
    assert memory.held


def test_a_device_that_rejected_or_rolled_back_is_not_fought() -> None:
    # It reported about the seq: whatever model it runs, the fleet leaves it alone,
    # and whatever memory there was is dropped.
    decision, memory = decide(view(acted=True), Memory(7, attempts=1), at(10_000), RULES)
    assert decision == InSync()
    assert memory is None


def test_a_publish_the_broker_refused_does_not_spend_an_attempt() -> None:
    _, memory = decide(view(retained=Retained.CLEARED), None, at(0), RULES)
    assert memory is not None
    failed = publish_failed(memory)
    assert failed == Memory(7, attempts=0, last_attempt_at=at(0))
    # ... but still waits before trying again.
    decision, _ = decide(view(retained=Retained.CLEARED), failed, at(30), RULES)
    assert decision == Wait(Reason.RETAINED_LOST, at(60))
