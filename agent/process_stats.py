"""This process's CPU use and RSS, and the machine's memory, without psutil on Linux.

psutil costs ~1.5 MiB of RSS in an idle agent (issue 15) for three numbers the standard
library and ``/proc`` give: CPU time from `os.times`, the resident set from
``/proc/self/statm``, physical memory from `os.sysconf`. Where those are not available
(macOS has no ``/proc``) psutil is imported at the first call, as before.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

STATM = Path("/proc/self/statm")


def _cpu_s() -> float:
    times = os.times()
    return times.user + times.system  # every thread of this process, not its children


def rss_bytes() -> int:
    """This process's resident set size in bytes (psutil's ``memory_info().rss``).

    Raises OSError only if neither ``/proc`` nor psutil can tell.
    """
    try:
        resident_pages = int(STATM.read_text().split()[1])
    except (OSError, IndexError, ValueError):
        import psutil  # no /proc: macOS, or a sandbox without it

        return int(psutil.Process().memory_info().rss)
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def memory_total_bytes() -> int:
    """The machine's physical memory in bytes (psutil's ``virtual_memory().total``)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # a platform without these names
        total = 0
    if total > 0:
        return total
    import psutil

    return int(psutil.virtual_memory().total)


class CpuMeter:
    """CPU use of this process between calls, in percent of one core (psutil's scale:
    100 per busy core, so up to 100 x cores)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cpu, self._wall = _cpu_s(), clock()

    def percent(self) -> float:
        """CPU percent since the previous call (or since construction); 0.0 if no time
        has passed."""
        cpu, wall = _cpu_s(), self._clock()
        used, elapsed = cpu - self._cpu, wall - self._wall
        self._cpu, self._wall = cpu, wall
        if elapsed <= 0:
            return 0.0
        return max(0.0, used / elapsed * 100.0)
