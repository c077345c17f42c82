"""A real agent against a slow or incomplete repository: superseded, deadlined, rejected.

The repository is the rig's real HTTP server; a trickling artifact is served by a real
handler writing one byte at a time on its real socket.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from edgefleet.agent.update.machine import Phase
from tests.e2e.updates.conftest import Packages
from tests.e2e.updates.support import Pkg, Rig, event_docs
from tests.e2e.updates.test_updates import wait_event


class Trickle:
    """Makes the rig's server send ``pkg``'s artifact one byte every ``interval_s``."""

    def __init__(self, rig: Rig, pkg: Pkg, interval_s: float = 0.5) -> None:
        self.requests = 0
        self._stop = threading.Event()
        server = rig.server
        original = server._handle
        data = pkg.data

        def handle(h: BaseHTTPRequestHandler) -> None:
            if h.path != pkg.url_path:
                original(h)
                return
            self.requests += 1
            h.send_response(200)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            for i in range(len(data)):
                if self._stop.wait(interval_s):
                    return
                try:
                    h.wfile.write(data[i : i + 1])
                    h.wfile.flush()
                except OSError:
                    return

        server._handle = handle  # type: ignore[method-assign]

    def stop(self) -> None:
        self._stop.set()


@pytest.fixture
def trickle(rig: Rig, packages: Packages) -> Iterator[Trickle]:
    slow = Trickle(rig, packages.slow)
    yield slow
    slow.stop()


def test_newer_desired_state_supersedes_a_trickling_download_at_once(
    tmp_path, rig: Rig, packages: Packages, trickle: Trickle, start_agent, events_of, unique_id
) -> None:
    device = f"trickle-{unique_id}"
    rig.add(packages.slow)
    rig.add(packages.upgrade)
    events = events_of(device)
    # The per-read timeout is the default 30 s: each trickled byte comes well within it.
    start_agent(rig.config(tmp_path, device, packages.factory, download_timeout_s=30))
    rig.publish(device, rig.sign(device, packages.slow, 1))
    wait_event(events, "downloading", 1)
    deadline = time.monotonic() + 10
    while trickle.requests == 0:
        assert time.monotonic() < deadline, "the agent never asked for the trickling artifact"
        time.sleep(0.05)
    time.sleep(0.5)  # the agent is now inside the trickling read

    published = time.monotonic()
    rig.publish(device, rig.sign(device, packages.upgrade, 2))
    committed = wait_event(events, "committed", 2, timeout_s=15)

    assert time.monotonic() - published < 8, "seq 2 waited behind the stalled download"
    assert committed["model"]["sha256"] == packages.upgrade.sha256
    superseded = [
        d
        for d in event_docs(events.received)
        if d["desired_seq"] == 1 and "superseded by desired seq 2" in (d.get("reason") or "")
    ]
    assert superseded, "the superseded update is reported"


def test_trickling_download_ends_at_the_total_deadline_and_is_retried(
    tmp_path, rig: Rig, packages: Packages, trickle: Trickle, start_agent, unique_id
) -> None:
    device = f"deadline-{unique_id}"
    rig.add(packages.slow)
    config = rig.config(
        tmp_path, device, packages.factory, download_timeout_s=30, download_deadline_s=1
    )
    agent = start_agent(config)
    rig.publish(device, rig.sign(device, packages.slow, 1))

    deadline = time.monotonic() + 8
    while trickle.requests < 2:
        assert time.monotonic() < deadline, "the trickling download was never cut off"
        time.sleep(0.05)
    assert agent.updates is not None
    state = agent.updates.state
    assert state.phase is Phase.DOWNLOADING, "a deadline is transient: retried, not rejected"
    assert state.last_error is not None
    assert "total deadline of 1 s" in state.last_error


def test_target_the_repository_answers_404_for_is_rejected_not_retried(
    tmp_path, rig: Rig, packages: Packages, start_agent, events_of, unique_id
) -> None:
    device = f"gone-{unique_id}"
    rig.add(packages.upgrade)
    # Listed in the signed targets, but the server no longer has the file.
    (rig.server.root / packages.upgrade.url_path.lstrip("/")).unlink()
    events = events_of(device)
    agent = start_agent(rig.config(tmp_path, device, packages.factory))
    rig.publish(device, rig.sign(device, packages.upgrade, 1))

    rejected = wait_event(events, "rejected", 1)
    time.sleep(1.0)  # at retry_base_s = 0.05 a transient failure would be retried ~10 times

    assert "HTTP 404" in rejected["reason"]
    asked = [p for p, _ in rig.server.requests if p == packages.upgrade.url_path]
    assert len(asked) == 1
    assert agent.updates is not None
    assert agent.updates.state.phase is Phase.FAILED
