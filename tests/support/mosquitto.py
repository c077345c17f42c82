"""A real Mosquitto broker per test (or per session), on a free port with its own config.

Tests can stop and start it to simulate an outage, and pass extra config lines (ACL,
TLS listeners, auth) to test those paths.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from edgefleet.simulators.mosquitto import MOSQUITTO, stop_process, wait_for_port

__all__ = ["MOSQUITTO", "MosquittoBroker", "free_port", "wait_for_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MosquittoBroker:
    """One mosquitto process with a config of its own; `stop` and `start` keep the port."""

    def __init__(self, workdir: Path, *, extra_config: str = "", port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.extra_config = extra_config
        self._process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        self.config_path.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 0\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"{self.extra_config}\n"
        )

    def start(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        if not Path(MOSQUITTO).exists():
            raise RuntimeError(
                f"{MOSQUITTO} not found: install the Debian package 'mosquitto' (tests/run.sh does)"
            )
        self._write_config()
        self._process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            log = self.log_path.read_text() if self.log_path.exists() else ""
            raise RuntimeError(f"mosquitto did not start on port {self.port}:\n{log}") from None

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)
        self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs (benchmarks meter its CPU)."""
        return self._process.pid if self.running and self._process is not None else None
