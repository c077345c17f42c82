"""After an update commits or rolls back, the agent re-publishes its retained birth state
(the fleet's registry shows the new active model without a reconnect), and the
``runtime_loader`` seam reaches every model load of the update path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgefleet.agent.daemon import Agent
from edgefleet.shared.runtime import ModelRuntime, RuntimeLoadError, RuntimeOptions, load_runtime
from edgefleet.simulators.models import TrainedModel
from tests.e2e.updates.conftest import Packages
from tests.e2e.updates.support import Rig
from tests.e2e.updates.test_updates import Traffic, wait_event
from tests.support.agent import Subscriber
from tests.support.mosquitto import MosquittoBroker


def _states(sub: Subscriber) -> list[dict[str, Any]]:
    return [json.loads(r.payload) for r in sub.on("state")]


def _active_version(state: dict[str, Any]) -> str | None:
    model = state.get("active_model")
    return model["version"] if model else None


def _retained_state(broker: MosquittoBroker, device: str) -> dict[str, Any]:
    late = Subscriber(broker.port, [f"edgefleet/v1/devices/{device}/state"])
    try:
        received = late.wait_for(lambda r: any(m.retain for m in r), timeout_s=5)
        return json.loads(next(m for m in received if m.retain).payload)  # type: ignore[no-any-return]
    finally:
        late.close()


def test_commit_publishes_a_fresh_retained_birth_with_the_new_model(
    tmp_path: Path,
    rig: Rig,
    packages: Packages,
    mosquitto: MosquittoBroker,
    events_of,
    unique_id: str,
    wine_model: TrainedModel,
) -> None:
    device = f"birth-{unique_id}"
    rig.add(packages.upgrade)
    events = events_of(device)
    states = Subscriber(mosquitto.port, [f"edgefleet/v1/devices/{device}/state"])
    agent = Agent(rig.config(tmp_path, device, packages.factory))
    agent.start()
    traffic = Traffic(agent, wine_model.x_test[:2])
    try:
        states.wait_for(lambda r: any(m.topic.endswith("/state") for m in r))
        rig.publish(device, rig.sign(device, packages.upgrade, 1))
        wait_event(events, "committed", 1)
        states.wait_for(lambda r: any(_active_version(s) == "1.1.0" for s in _states(states)))
        fresh = next(s for s in _states(states) if _active_version(s) == "1.1.0")
        assert fresh["online"] is True
        first = _states(states)[0]
        assert _active_version(first) == "1.0.0"
        assert fresh["seq"] > first["seq"]
        committed = next(
            json.loads(r.payload)
            for r in events.on("events")
            if json.loads(r.payload)["kind"] == "committed"
        )
        assert fresh["seq"] > committed["seq"], "the state follows the event it reflects"
        assert agent._link is not None
        assert agent._link.connects_total == 1, "no reconnect was needed"
        assert _active_version(_retained_state(mosquitto, device)) == "1.1.0"
    finally:
        traffic.stop()
        agent.stop(2.0)
        states.close()


def test_rollback_publishes_a_fresh_birth_with_the_model_it_went_back_to(
    tmp_path: Path,
    rig: Rig,
    packages: Packages,
    mosquitto: MosquittoBroker,
    events_of,
    unique_id: str,
) -> None:
    device = f"birth-rb-{unique_id}"
    rig.add(packages.wrong_golden)
    events = events_of(device)
    states = Subscriber(mosquitto.port, [f"edgefleet/v1/devices/{device}/state"])
    agent = Agent(rig.config(tmp_path, device, packages.factory))
    agent.start()
    try:
        states.wait_for(lambda r: len(r) >= 1)
        rig.publish(device, rig.sign(device, packages.wrong_golden, 1))
        wait_event(events, "rolled_back", 1)
        states.wait_for(lambda r: len(r) >= 2)
        births = _states(states)
        assert [_active_version(s) for s in births] == ["1.0.0", "1.0.0"]
        assert births[1]["seq"] > births[0]["seq"]
    finally:
        agent.stop(2.0)
        states.close()


def test_a_runtime_loader_that_refuses_the_update_makes_the_agent_roll_back(
    tmp_path: Path, rig: Rig, packages: Packages, events_of, unique_id: str
) -> None:
    device = f"seam-{unique_id}"
    rig.add(packages.upgrade)
    events = events_of(device)
    loads: list[str] = []

    def refuse_upgrade(
        path: Path, *, runtime: str | None = None, options: RuntimeOptions | None = None
    ) -> ModelRuntime:
        loads.append(path.parent.name)
        if path.parent.name == packages.upgrade.sha256:
            raise RuntimeLoadError(f"{path}: injected activation crash")
        return load_runtime(path, runtime=runtime, options=options)

    agent = Agent(rig.config(tmp_path, device, packages.factory), runtime_loader=refuse_upgrade)
    agent.start()
    try:
        rig.publish(device, rig.sign(device, packages.upgrade, 1))
        failed = wait_event(events, "rolled_back", 1)
        assert agent.updates is not None
        assert agent.updates.store.active() == packages.factory.sha256
        assert packages.upgrade.sha256 in loads, "the activation went through the seam"
        assert packages.factory.sha256 in loads, "so did the factory model at start"
        assert failed["model"]["version"] == "1.1.0"
    finally:
        agent.stop(2.0)
