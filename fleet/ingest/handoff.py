"""A bounded hand-off from the MQTT network thread to the writer, one batch at a time.

Why not `queue.Queue`: a writer that takes one item at a time wakes up for every
message, and each wake-up passes the GIL between the two threads. Profiling the
ingester showed that ping-pong, not the writer's own work, was what slowed paho's
network thread the most. Here the producer appends under a lock and wakes the consumer
only twice a batch (at its first item and when it is full); the consumer takes up to a
whole batch per call, so both threads run in long stretches.

Invariants:
- `put` blocks while ``maxsize`` items wait (back-pressure on the broker, no unbounded
  memory) and never otherwise;
- `take` returns a batch when ``batch_size`` items wait, or ``linger_s`` after the
  oldest waiting item arrived, whichever comes first; items keep their order;
- after `close`, `put` refuses, and `take` returns what is left, then None.
"""

from __future__ import annotations

import threading
import time
from typing import Generic, TypeVar

T = TypeVar("T")


class ClosedError(Exception):
    """`BatchHandoff.put` after `BatchHandoff.close`."""


class BatchHandoff(Generic[T]):
    """One producer thread, one consumer thread; see the module docstring."""

    def __init__(self, *, maxsize: int, batch_size: int, linger_s: float) -> None:
        if maxsize < 1 or batch_size < 1 or linger_s <= 0:
            raise ValueError(
                "maxsize and batch_size must be at least 1 and linger_s positive, found "
                f"maxsize={maxsize}, batch_size={batch_size}, linger_s={linger_s}"
            )
        self._maxsize = maxsize
        self._batch_size = batch_size
        self._linger_s = linger_s
        self._items: list[T] = []
        self._oldest_at = 0.0  # monotonic time the oldest waiting item arrived
        self._closed = False
        lock = threading.Lock()
        self._ready = threading.Condition(lock)
        self._not_full = threading.Condition(lock)

    def qsize(self) -> int:
        """How many items wait (approximate: no lock, for a gauge)."""
        return len(self._items)

    def put(self, item: T) -> None:
        """Append ``item``; blocks while the hand-off is full. Raises `ClosedError`."""
        with self._ready:
            while len(self._items) >= self._maxsize and not self._closed:
                self._not_full.wait()
            if self._closed:
                raise ClosedError("the ingest hand-off is closed")
            items = self._items
            items.append(item)
            n = len(items)
            if n == 1:
                self._oldest_at = time.monotonic()
                self._ready.notify()
            elif n == self._batch_size:
                self._ready.notify()

    def take(self, idle_timeout_s: float) -> list[T] | None:
        """The next batch; [] if nothing arrived within ``idle_timeout_s``; None once closed
        and drained."""
        with self._ready:
            idle_until = time.monotonic() + idle_timeout_s
            while True:
                n = len(self._items)
                if n >= self._batch_size or (n and self._closed):
                    break
                if self._closed:
                    return None
                now = time.monotonic()
                deadline = self._oldest_at + self._linger_s if n else idle_until
                if deadline <= now:
                    if n:
                        break
                    return []
                self._ready.wait(deadline - now)
            was_full = len(self._items) >= self._maxsize
            batch = self._items[: self._batch_size]
            del self._items[: self._batch_size]
            if self._items:
                # The rest arrived after the batch's oldest; timing them from now only
                # delays them by at most one linger, never drops them.
                self._oldest_at = time.monotonic()
            if was_full:
                self._not_full.notify()
            return batch

    def close(self) -> None:
        """Refuse further items and wake both sides; the consumer drains what is left."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
            self._not_full.notify_all()
