"""When a message may leave the outbox and when the agent sends again what the fleet lacks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.agent.delivery import Awaiting, DeliveryMode, DeliveryPolicy, keeps_after_puback
from edgefleet.shared.seqranges import to_ranges

POLICY = DeliveryPolicy(grace_s=5.0, timeout_s=30.0, timeout_max_s=100.0)


@pytest.mark.parametrize(
    ("mode", "seen", "keeps"),
    [
        ("auto", False, False),  # an old fleet that never acknowledges: PUBACK deletes
        ("auto", True, True),  # this fleet acknowledges: only its word deletes
        ("fleet", False, True),
        ("fleet", True, True),
        ("broker", False, False),
        ("broker", True, False),
    ],
)
def test_a_puback_deletes_only_while_the_fleet_never_acknowledged(
    mode: DeliveryMode, seen: bool, keeps: bool
) -> None:
    assert keeps_after_puback(mode, seen) is keeps


def sent(at: dict[int, float]) -> Awaiting:
    awaiting = Awaiting(POLICY)
    for seq, t in at.items():
        awaiting.sent(seq, t)
    return awaiting


@pytest.mark.parametrize(
    ("sends", "acked", "rewind"),
    [
        # The fleet stores a message sent 6 s after one it skipped: that one was lost.
        ({1: 0.0, 2: 6.0}, [2], True),
        # Sent close together: the older may still be on its way through another replica.
        ({1: 0.0, 2: 4.0}, [2], False),
        # In order: nothing older waits.
        ({1: 0.0, 2: 6.0}, [1], False),
        ({1: 0.0, 2: 6.0}, [1, 2], False),
        # An acknowledgement of nothing this connection sent (the retained copy) proves
        # nothing about the fleet.
        ({1: 0.0}, [99], False),
    ],
)
def test_the_replay_rewinds_when_the_fleet_stored_newer_messages_and_skipped_older_ones(
    sends: dict[int, float], acked: list[int], rewind: bool
) -> None:
    assert sent(sends).stored(to_ranges(acked), now=7.0) is rewind


def test_after_a_rewind_only_a_message_sent_well_after_it_rewinds_again() -> None:
    awaiting = sent({1: 0.0, 2: 6.0, 3: 6.5})
    assert awaiting.stored(to_ranges([2]), now=7.0)
    # Seq 1 is not resent yet (the in-flight window), 3 was sent before the rewind.
    assert not awaiting.stored(to_ranges([3]), now=7.5)
    awaiting.sent(4, 13.0)
    assert awaiting.stored(to_ranges([4]), now=13.5)


def test_the_timeout_doubles_while_nothing_comes_back_and_resets_on_an_acknowledgement() -> None:
    awaiting = sent({1: 0.0, 2: 1.0})
    assert awaiting.deadline() == 30.0
    assert not awaiting.timed_out(29.9)
    assert awaiting.timed_out(30.0)
    assert awaiting.deadline() == 30.0 + 60.0  # measured from the rewind
    assert not awaiting.timed_out(89.0)
    assert awaiting.timed_out(90.0)
    assert awaiting.deadline() == 90.0 + 100.0  # capped at timeout_max_s
    awaiting.sent(1, 91.0)
    awaiting.sent(2, 91.0)
    awaiting.sent(3, 92.0)
    awaiting.stored(to_ranges([1, 2]), now=92.5)
    assert awaiting.deadline() == 92.0 + 30.0  # back to timeout_s, from the oldest left


def test_nothing_waiting_means_no_deadline() -> None:
    awaiting = sent({1: 0.0})
    awaiting.forget(1)
    assert awaiting.deadline() is None
    assert not awaiting.timed_out(1e9)
    assert len(awaiting) == 0


@given(
    st.sets(st.integers(0, 500), max_size=60),
    st.sets(st.integers(0, 500), max_size=60),
    st.booleans(),
)
def test_exactly_the_acknowledged_seqs_stop_waiting(
    sends: set[int], acked: set[int], wide: bool
) -> None:
    awaiting = sent({seq: float(i) for i, seq in enumerate(sorted(sends))})
    ranges = to_ranges(acked)
    if wide:  # a range far larger than what waits: membership, not enumeration
        ranges = [(0, 10**12)] if acked else []
        acked = set(range(501)) if acked else set()
    awaiting.stored(ranges, now=1000.0)
    assert len(awaiting) == len(sends - acked)
