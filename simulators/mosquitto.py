"""A Mosquitto process on the configuration `edgefleet fleet broker-config` writes.

For the demo with identities on and for the benchmarks and tests of the closed broker:
the broker-config directory's ``mosquitto.conf`` runs unchanged but for a prelude (a log
file in ``workdir``, no persistence, and ``user root`` when run as root, so a broker
started from a root shell can read files in the caller's directories instead of
dropping to a ``mosquitto`` user that cannot). `reload` sends SIGHUP and waits until the
broker has re-read its files, which is what the fleet's reload command does.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from edgefleet.fleet.identity.broker_files import BrokerSetup

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def wait_for_port(port: int, timeout_s: float = 10.0, host: str = "127.0.0.1") -> None:
    """Wait until something listens on ``host:port``; raises TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s}s") from None
            time.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; reaps it."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class ClosedMosquitto:
    """mosquitto on a `BrokerSetup`'s config; `stop` and `start` keep its ports."""

    def __init__(self, workdir: Path, setup: BrokerSetup, *, host: str = "127.0.0.1") -> None:
        self.setup = setup
        self.host = host
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "mosquitto-run.conf"
        self.log_path = workdir / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def device_url(self) -> str:
        """Where devices connect: the device listener, over TLS."""
        return f"mqtts://{self.host}:{self.setup.device.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def reload_command(self) -> str:
        """What the fleet runs after rewriting the CRL or password file."""
        assert self._process is not None, "the broker is not running"
        return f"kill -HUP {self._process.pid}"

    def start(self) -> None:
        """Start mosquitto and wait for both listeners.

        Raises RuntimeError when mosquitto is missing or does not come up (with its log).
        """
        if not Path(MOSQUITTO).exists():
            raise RuntimeError(
                f"{MOSQUITTO} not found: install the Debian package 'mosquitto'"
                " (packaging/dev/bootstrap.sh with NEED_MOSQUITTO=1 does)"
            )
        prelude = [
            "persistence false",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if os.geteuid() == 0:
            prelude.append("user root")
        self.config_path.write_text("\n".join(prelude) + "\n" + self.setup.layout.conf.read_text())
        self._process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(self.setup.device.port)
            wait_for_port(self.setup.fleet.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start:\n{self.log()}") from None

    def reloads(self) -> int:
        """How many times the broker has re-read its configuration."""
        return self.log().count("Reloading config")

    def reload(self, timeout_s: float = 10.0) -> None:
        """SIGHUP, then wait until the log shows the reload; raises TimeoutError."""
        assert self._process is not None, "the broker is not running"
        before = self.reloads()
        os.kill(self._process.pid, signal.SIGHUP)
        self.wait_reloaded(before, timeout_s)

    def wait_reloaded(self, before: int, timeout_s: float = 10.0) -> None:
        """Wait until the broker has reloaded more often than ``before``; raises
        TimeoutError."""
        deadline = time.monotonic() + timeout_s
        while self.reloads() <= before:
            if time.monotonic() > deadline:
                raise TimeoutError(f"mosquitto did not reload:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)
        self._process = None
