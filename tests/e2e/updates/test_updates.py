"""The signed-update path of a real agent, end to end: TUF repo over HTTP, director, MQTT.

Each test runs a real `Agent` in-process against a real Mosquitto and a real TUF image
repository, with real model packages; nothing between them is faked.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from edgefleet.agent.daemon import Agent
from edgefleet.agent.update.machine import Phase
from edgefleet.simulators.models import TrainedModel
from tests.e2e.updates.conftest import Packages
from tests.e2e.updates.support import Rig, event_docs
from tests.support.agent import Subscriber

EXPECTED_PROGRESS = ["downloading", "verified", "staged", "activated", "healthy", "committed"]


def wait_event(sub: Subscriber, kind: str, seq: int, timeout_s: float = 20) -> dict[str, Any]:
    def found(received: list[Any]) -> bool:
        return any(d["kind"] == kind and d["desired_seq"] == seq for d in event_docs(received))

    sub.wait_for(found, timeout_s)
    return next(
        d for d in event_docs(sub.received) if d["kind"] == kind and d["desired_seq"] == seq
    )


def kinds_for(sub: Subscriber, seq: int) -> list[str]:
    return [
        d["kind"]
        for d in event_docs(sub.received)
        if d["desired_seq"] == seq and d["kind"] != "info"
    ]


class Traffic:
    """Inference requests in a loop, in-process and over HTTP, until stopped."""

    def __init__(self, agent: Agent, x: Any) -> None:
        self.agent = agent
        self.x = x
        self.served: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._in_process, daemon=True),
            threading.Thread(target=self._http, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _in_process(self) -> None:
        while not self._stop.is_set():
            try:
                ref, _ = self.agent.infer({"input": self.x})
                self.served.append(ref.version)
            except Exception as e:
                self.failures.append(f"infer: {e!r}")

    def _http(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.agent.api_port or 0, timeout=5)
        body = json.dumps({"inputs": {"input": self.x.tolist()}})
        while not self._stop.is_set():
            try:
                conn.request("POST", "/v1/predict", body=body)
                response = conn.getresponse()
                document = json.loads(response.read())
                if response.status != 200:
                    self.failures.append(f"HTTP {response.status}: {document}")
                else:
                    self.served.append(document["model"]["version"])
            except Exception as e:
                self.failures.append(f"http: {e!r}")
        conn.close()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)


def assert_serves(agent: Agent, sha256: str, version: str, wine_model: TrainedModel) -> None:
    updates = agent.updates
    assert updates is not None
    assert updates.store.active() == sha256
    updates.store.verify(sha256)
    ref, outputs = agent.infer({"input": wine_model.x_test[:3]})
    assert (ref.sha256, ref.version) == (sha256, version)
    assert outputs["label"].shape == (3,)


def test_signed_update_is_downloaded_verified_activated_and_committed(
    tmp_path, rig: Rig, packages: Packages, start_agent, events_of, unique_id, wine_model
) -> None:
    device = f"up-{unique_id}"
    rig.add(packages.factory)
    rig.add(packages.upgrade)
    events = events_of(device)
    agent = start_agent(rig.config(tmp_path, device, packages.factory))
    assert_serves(agent, packages.factory.sha256, "1.0.0", wine_model)
    traffic = Traffic(agent, wine_model.x_test[:2])
    try:
        rig.publish(device, rig.sign(device, packages.upgrade, 1))
        committed = wait_event(events, "committed", 1)
    finally:
        traffic.stop()
    assert kinds_for(events, 1) == EXPECTED_PROGRESS
    assert committed["model"]["sha256"] == packages.upgrade.sha256
    assert committed["rollout_id"] == "rollout-1"
    assert traffic.failures == []
    assert {"1.0.0", "1.1.0"} <= set(traffic.served), "requests ran on both sides of the swap"
    assert agent.updates is not None
    assert agent.updates.state.phase is Phase.COMMITTED
    assert agent.updates.store.previous() == packages.factory.sha256
    assert_serves(agent, packages.upgrade.sha256, "1.1.0", wine_model)


def test_restarted_agent_serves_the_committed_model_from_its_store(
    tmp_path, rig: Rig, packages: Packages, start_agent, events_of, unique_id, wine_model
) -> None:
    device = f"re-{unique_id}"
    rig.add(packages.upgrade)
    events = events_of(device)
    config = rig.config(tmp_path, device, packages.factory)
    first = start_agent(config)
    rig.publish(device, rig.sign(device, packages.upgrade, 1))
    wait_event(events, "committed", 1)
    first.stop(2.0)
    before = len(event_docs(events.received))
    again = start_agent(config)
    # The store wins over model.path, and the retained desired state changes nothing.
    assert_serves(again, packages.upgrade.sha256, "1.1.0", wine_model)
    assert again.updates is not None
    deadline = time.monotonic() + 10
    while not again.connected:
        assert time.monotonic() < deadline, "the restarted agent never connected"
        time.sleep(0.05)
    time.sleep(0.5)  # the retained desired state arrives right after the subscription
    assert again.updates.state.last_desired_seq == 1
    assert again.updates.state.phase is Phase.COMMITTED
    after = event_docs(events.received)[before:]
    assert [d for d in after if d["kind"] == "rejected"] == [], "a redelivery is no attack"


def test_interrupted_download_resumes_instead_of_starting_over(
    tmp_path, rig: Rig, packages: Packages, start_agent, events_of, unique_id, wine_model
) -> None:
    device = f"resume-{unique_id}"
    rig.add(packages.upgrade)
    size = packages.upgrade.length
    rig.server.faults.cut_after[packages.upgrade.url_path] = size // 2
    events = events_of(device)
    agent = start_agent(rig.config(tmp_path, device, packages.factory))
    rig.publish(device, rig.sign(device, packages.upgrade, 1))
    wait_event(events, "committed", 1)
    ranges = [
        headers.get("Range")
        for path, headers in rig.server.requests
        if path == packages.upgrade.url_path
    ]
    assert ranges == [None, f"bytes={size // 2}-"]
    assert rig.server.bytes_sent[packages.upgrade.url_path] < 1.5 * size
    assert_serves(agent, packages.upgrade.sha256, "1.1.0", wine_model)


def _rolled_back(
    tmp_path,
    rig: Rig,
    packages: Packages,
    start_agent: Callable[..., Agent],
    events_of: Callable[[str], Subscriber],
    device: str,
    bad_name: str,
    wine_model: TrainedModel,
    drive_inferences: bool = False,
) -> dict[str, Any]:
    bad = getattr(packages, bad_name)
    rig.add(bad)
    events = events_of(device)
    agent = start_agent(rig.config(tmp_path, device, packages.factory))
    rig.publish(device, rig.sign(device, bad, 1))
    traffic = Traffic(agent, wine_model.x_test[:2]) if drive_inferences else None
    try:
        rolled = wait_event(events, "rolled_back", 1)
    finally:
        if traffic:
            traffic.stop()
    assert "committed" not in kinds_for(events, 1)
    assert agent.updates is not None
    assert agent.updates.state.phase is Phase.ROLLED_BACK
    assert_serves(agent, packages.factory.sha256, "1.0.0", wine_model)
    assert not agent.updates.store.has(bad.sha256), "the failed model is cleaned up"
    return rolled


def test_model_failing_its_golden_samples_is_rolled_back(
    tmp_path, rig, packages, start_agent, events_of, unique_id, wine_model
) -> None:
    rolled = _rolled_back(
        tmp_path,
        rig,
        packages,
        start_agent,
        events_of,
        f"gold-{unique_id}",
        "wrong_golden",
        wine_model,
    )
    assert "golden samples failed" in rolled["reason"]


def test_model_the_runtime_cannot_load_is_rolled_back(
    tmp_path, rig, packages, start_agent, events_of, unique_id, wine_model
) -> None:
    rolled = _rolled_back(
        tmp_path,
        rig,
        packages,
        start_agent,
        events_of,
        f"crash-{unique_id}",
        "unloadable",
        wine_model,
    )
    assert "activation failed" in rolled["reason"]
    assert "onnxruntime cannot load" in rolled["reason"]


def test_model_too_slow_for_its_latency_budget_is_rolled_back(
    tmp_path, rig, packages, start_agent, events_of, unique_id, wine_model
) -> None:
    rolled = _rolled_back(
        tmp_path,
        rig,
        packages,
        start_agent,
        events_of,
        f"slow-{unique_id}",
        "slow",
        wine_model,
        drive_inferences=True,
    )
    assert "latency p95" in rolled["reason"]
    assert "above the budget 0.0 ms" in rolled["reason"]
