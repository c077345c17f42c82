"""``--log-format json`` on the real daemons: every stdout line of ``edgefleet agent run``
and ``edgefleet fleet serve`` (real processes, a real Mosquitto) is a JSON object, the
agent's carry its ``device_id``, and the fleet's carry the ``request_id`` of the request
and the ``device_id`` of the device they are about."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.publish as mqtt_publish
import pytest

from edgefleet.shared.messages import encode
from edgefleet.simulators.models import TrainedModel
from tests.fleet.factories import state
from tests.support.agent import REPO, toml_config
from tests.support.mosquitto import MosquittoBroker

Line = dict[str, Any]


class Daemon:
    """One process whose stdout is read line by line by a thread (so nothing sits in a
    buffer a later read would skip), each line parsed as JSON or kept as text."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[Line] = []
        self.not_json: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            with self._cond:
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    self.not_json.append(raw)
                else:
                    self.lines.append(parsed if isinstance(parsed, dict) else {"": parsed})
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[Line], bool], what: str, timeout_s: float = 20) -> Line:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                found = next((line for line in self.lines if predicate(line)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise AssertionError(f"no line {what}; got {self.lines} {self.not_json}")
                self._cond.wait(min(left, 0.2))

    def stop(self) -> tuple[list[Line], list[str], str]:
        """SIGTERM, wait; (JSON lines, other stdout lines, stderr)."""
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(20) == 0
        self._reader.join(5)
        assert self.process.stderr is not None
        return self.lines, self.not_json, self.process.stderr.read()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


# A line of a logger writing to stderr behind our back: uvicorn's own format
# ("INFO:     ..."), Python's last-resort handler or our text format. Runtime libraries
# may print other things there (onnxruntime's thread-affinity notes in containers).
_STDERR_LOG = re.compile(r"^(?:(?:INFO|WARNING|ERROR|CRITICAL|DEBUG):|\d{4}-\d\d-\d\d |Traceback)")


def _log_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if _STDERR_LOG.match(line)]


def _msg(*words: str) -> Callable[[Line], bool]:
    return lambda line: all(w in str(line.get("msg", "")) for w in words)


def test_every_line_of_the_agent_is_json_with_its_device_id(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    wine_model: TrainedModel,
    unique_id: str,
    daemons: list[Daemon],
) -> None:
    device = f"cam-{unique_id}"
    config = toml_config(tmp_path / "agent.toml", mosquitto, device, model=wine_model.path)
    agent = Daemon(
        ["-m", "edgefleet.agent", "run", "--config", str(config), "--log-format", "json"]
    )
    daemons.append(agent)
    agent.wait_for(_msg("connected to"), "saying the agent connected")
    lines, not_json, stderr = agent.stop()

    assert not not_json, not_json
    assert len(lines) >= 2  # connected, then the shutdown
    for line in lines:
        assert line["device_id"] == device, line
        assert {"ts", "level", "logger", "msg"} <= line.keys(), line
    assert not _log_lines(stderr), stderr


def test_fleet_lines_are_json_with_the_request_and_device_they_are_about(
    tmp_path: Path, mosquitto: MosquittoBroker, unique_id: str, daemons: list[Daemon]
) -> None:
    fleet = Daemon(
        [
            "-m",
            "edgefleet.shared.cli",
            "--log-format",
            "json",
            "fleet",
            "serve",
            "--database-url",
            f"sqlite:///{tmp_path / 'fleet.db'}",
            "--broker",
            mosquitto.url,
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "fleet"),
            "--migrate",
        ]
    )
    daemons.append(fleet)
    base_url = str(fleet.wait_for(lambda line: "url" in line, "with the console's address")["url"])

    # A device request with a bad signature: refused, and the refusal logged with its id.
    request_id = f"req-{unique_id}"
    refused = httpx.get(
        f"{base_url}/v1/repository/metadata/timestamp.json",
        headers={"Authorization": "EdgefleetDevice a.b.c", "X-Request-ID": request_id},
        timeout=10,
    )
    assert refused.status_code == 401
    assert refused.headers["X-Request-ID"] == request_id
    # Bytes that are no HTTP: the server's own warning is a JSON line on stdout too.
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        raw.recv(1024)
    server = fleet.wait_for(_msg("Invalid HTTP request"), "of uvicorn's about the bad request")
    assert server["logger"].startswith("uvicorn")
    # A device's birth, and a payload that is not JSON: each line names the device.
    device, broken = f"cam-{unique_id}", f"bad-{unique_id}"
    mqtt_publish.single(
        f"edgefleet/v1/devices/{device}/state",
        encode(state(device, 1)),
        qos=1,
        hostname="127.0.0.1",
        port=mosquitto.port,
    )
    mqtt_publish.single(
        f"edgefleet/v1/devices/{broken}/state",
        b"not json",
        qos=1,
        hostname="127.0.0.1",
        port=mosquitto.port,
    )
    fleet.wait_for(_msg(device, "online"), "saying the device is online")
    fleet.wait_for(_msg("dead-lettering"), "saying the broken message was dead-lettered")
    lines, not_json, stderr = fleet.stop()

    assert not not_json, not_json
    assert not _log_lines(stderr), stderr
    assert all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)
    [refusal] = [line for line in lines if line.get("request_id") == request_id]
    assert refusal["level"] == "WARNING"
    assert "refused" in refusal["msg"]
    online = next(line for line in lines if _msg(device, "online")(line))
    assert online["device_id"] == device
    dead = next(line for line in lines if _msg("dead-lettering")(line))
    assert dead["device_id"] == broken
    # What the operator must see whatever the level is a JSON line too.
    assert any(
        line["logger"] == "edgefleet.console" and line["msg"].startswith("admin token")
        for line in lines
    )
    # Lines logged outside any request carry no request id.
    assert "request_id" not in online
