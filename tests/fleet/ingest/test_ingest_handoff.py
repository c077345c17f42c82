"""BatchHandoff: whole batches, linger, back-pressure, and a close that loses nothing."""

from __future__ import annotations

import threading
import time

import pytest

from edgefleet.fleet.ingest.handoff import BatchHandoff, ClosedError


def test_a_full_batch_is_taken_at_once_in_order() -> None:
    handoff: BatchHandoff[int] = BatchHandoff(maxsize=100, batch_size=5, linger_s=30)
    for i in range(12):
        handoff.put(i)
    started = time.monotonic()
    assert handoff.take(idle_timeout_s=30) == [0, 1, 2, 3, 4]
    assert handoff.take(idle_timeout_s=30) == [5, 6, 7, 8, 9]
    assert time.monotonic() - started < 1  # full batches do not wait for the linger
    assert handoff.qsize() == 2


def test_a_partial_batch_waits_out_the_linger_then_comes_alone() -> None:
    handoff: BatchHandoff[str] = BatchHandoff(maxsize=100, batch_size=50, linger_s=0.1)
    handoff.put("a")
    started = time.monotonic()
    assert handoff.take(idle_timeout_s=5) == ["a"]
    assert 0.05 <= time.monotonic() - started < 2


def test_nothing_to_take_returns_an_empty_batch_after_the_idle_timeout() -> None:
    handoff: BatchHandoff[int] = BatchHandoff(maxsize=10, batch_size=5, linger_s=0.05)
    assert handoff.take(idle_timeout_s=0.05) == []


def test_an_item_arriving_while_the_consumer_waits_is_delivered() -> None:
    handoff: BatchHandoff[int] = BatchHandoff(maxsize=10, batch_size=3, linger_s=0.05)

    def produce() -> None:
        for i in range(3):
            handoff.put(i)

    threading.Timer(0.05, produce).start()
    assert handoff.take(idle_timeout_s=5) == [0, 1, 2]


def test_a_full_handoff_blocks_the_producer_until_the_consumer_takes() -> None:
    handoff: BatchHandoff[int] = BatchHandoff(maxsize=4, batch_size=4, linger_s=0.05)
    for i in range(4):
        handoff.put(i)
    done = threading.Event()

    def produce() -> None:
        handoff.put(4)
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    assert not done.wait(0.1), "put returned although the hand-off was full"
    assert handoff.take(idle_timeout_s=1) == [0, 1, 2, 3]
    assert done.wait(2)
    producer.join()
    assert handoff.take(idle_timeout_s=1) == [4]


def test_close_wakes_the_consumer_drains_what_is_left_then_ends() -> None:
    handoff: BatchHandoff[int] = BatchHandoff(maxsize=100, batch_size=4, linger_s=30)
    for i in range(6):
        handoff.put(i)
    handoff.close()
    assert handoff.take(idle_timeout_s=30) == [0, 1, 2, 3]
    assert handoff.take(idle_timeout_s=30) == [4, 5]
    assert handoff.take(idle_timeout_s=30) is None
    with pytest.raises(ClosedError, match="closed"):
        handoff.put(6)


def test_close_releases_a_producer_blocked_on_a_full_handoff() -> None:
    handoff: BatchHandoff[int] = BatchHandoff(maxsize=1, batch_size=1, linger_s=0.05)
    handoff.put(0)
    errors: list[Exception] = []

    def produce() -> None:
        try:
            handoff.put(1)
        except ClosedError as e:
            errors.append(e)

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(0.05)
    handoff.close()
    producer.join(2)
    assert not producer.is_alive()
    assert len(errors) == 1
    assert handoff.take(idle_timeout_s=1) == [0]


@pytest.mark.parametrize(
    ("maxsize", "batch_size", "linger_s"), [(0, 1, 0.1), (1, 0, 0.1), (1, 1, 0.0)]
)
def test_nonsense_sizes_are_refused_with_the_values(
    maxsize: int, batch_size: int, linger_s: float
) -> None:
    with pytest.raises(ValueError, match=f"maxsize={maxsize}, batch_size={batch_size}"):
        BatchHandoff[int](maxsize=maxsize, batch_size=batch_size, linger_s=linger_s)
