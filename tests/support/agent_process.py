"""The agent as a real process (``python -m edgefleet.agent run``), for tests that signal
or kill it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import REPO


class AgentProcess:
    """One agent process on ``config``, its output appended to ``log``."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        self._out = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.agent", "run", "--config", str(config)],
            cwd=REPO,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout_s: float = 10) -> int:
        try:
            return self.process.wait(timeout_s)
        finally:
            self._out.close()

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
def processes() -> Iterator[list[AgentProcess]]:
    """Agent processes a test starts are killed after it, if still running."""
    started: list[AgentProcess] = []
    yield started
    for p in started:
        if p.process.poll() is None:
            p.process.kill()
            p.wait()
