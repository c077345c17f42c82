"""Fleet replicas and the simulated fleet as real processes, for tests that kill them.

`ReplicaProcess` runs a `tests.support.compose.ServiceRun` (the compose file's
``fleet serve`` command and environment) as a child process with its log in a file, so
a test can SIGKILL it mid-rollout the way a node dies, and start it again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import httpx

from tests.support.compose import ServiceRun

BIN_DIR = Path(sys.executable).parent


def process_env(run: ServiceRun, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The service's environment, with this interpreter's scripts first on PATH (the
    image's ``edgefleet`` is this checkout's)."""
    env = run.process_env() | dict(extra or {})
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
    return env


class ReplicaProcess:
    """One ``fleet serve`` process; `start` again after `kill` runs a new one."""

    def __init__(self, name: str, run: ServiceRun, log_path: Path) -> None:
        self.name = name
        self.run = run
        self.log_path = log_path
        port = run.env.get("EDGEFLEET_FLEET_API_PORT")
        assert port, "give each replica its own API port"
        assert port != "0", "give each replica its own API port"
        self.port = int(port)
        self.base_url = f"http://127.0.0.1:{port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None, f"replica {self.name} is not running"
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            list(self.run.argv),
            env=process_env(self.run),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def ready(self) -> bool:
        """Whether /healthz says ok (database reachable, ingester connected)."""
        try:
            response = httpx.get(f"{self.base_url}/healthz", timeout=2)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.json().get("status") == "ok"

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        """Seconds until /healthz said ok; raises RuntimeError (with the log's tail) if the
        process exits or does not get there in ``timeout_s``."""
        started = time.monotonic()
        while not self.ready():
            if not self.running or time.monotonic() - started > timeout_s:
                raise RuntimeError(f"replica {self.name} did not come up:\n{self.log_tail()}")
            time.sleep(0.2)
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL: no lease release, no goodbye to the broker, nothing flushed."""
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        self._process.wait(10)
        self._close_log()

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM and wait (as compose stops a container); SIGKILL after ``timeout_s``."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        self._close_log()

    def log_tail(self, chars: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-chars:]

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class SimProcess:
    """``edgefleet sim`` as a child process; `stop` is Ctrl-C (its agents flush and go)."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self._process = subprocess.Popen(
            [str(BIN_DIR / "edgefleet"), "sim", *args],
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGINT, then wait; returns the exit code (SIGKILL after ``timeout_s``)."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        self._log.close()
        return int(self._process.returncode)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]
