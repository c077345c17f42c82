"""Held-out data for the committed test models (see simulators/tflite_models), and a
native thread counter for the runtimes' thread options."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from edgefleet.simulators.tflite_models.datasets import Split, digits_split, wine_split


@pytest.fixture(scope="session")
def wine_data() -> Split:
    """The wine rows the committed wine models were trained and scored on."""
    return wine_split()


@pytest.fixture(scope="session")
def digits_data() -> Split:
    """The digits rows the committed CNNs were trained and scored on."""
    return digits_split()


T = TypeVar("T")


def _thread_ids() -> set[str]:
    return set(os.listdir("/proc/self/task"))


@pytest.fixture
def threads_started_by() -> Callable[[Callable[[], T]], tuple[T, int]]:
    """Run a function; return its result and how many OS threads it started and left running.

    Counts native threads too (a runtime's pool), which `threading` does not see. New
    thread ids, not a count difference, so a thread ending meanwhile does not hide one.
    """
    if not Path("/proc/self/task").is_dir():
        pytest.skip("counting native threads needs Linux /proc")

    def run(fn: Callable[[], T]) -> tuple[T, int]:
        before = _thread_ids()
        result = fn()
        return result, len(_thread_ids() - before)

    return run
