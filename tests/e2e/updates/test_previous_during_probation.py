"""A real agent asked for its previous model during probation keeps a model to fall back to.

Factory 1.0.0, then 1.1.0 committed, then 1.4.0 activated; while 1.4.0 is on probation
the director asks for 1.1.0 again. The agent rolls back at once, and its store then
names 1.1.0 active and 1.0.0 previous (a *different* model), and holds nothing else.
"""

from __future__ import annotations

import time

from edgefleet.agent.store import ModelStore
from edgefleet.simulators.models import TrainedModel
from tests.e2e.updates.conftest import Packages
from tests.e2e.updates.support import Rig
from tests.e2e.updates.test_updates import Traffic, assert_serves, wait_event


def _settled(store: ModelStore, timeout_s: float = 10.0) -> list[str]:
    # The runner persists ROLLED_BACK before it restores and cleans up: wait for those.
    deadline = time.monotonic() + timeout_s
    while (problems := store.problems()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return problems


def test_desired_for_the_previous_model_during_probation_leaves_a_different_fallback(
    tmp_path,
    rig: Rig,
    packages: Packages,
    start_agent,
    events_of,
    unique_id,
    wine_model: TrainedModel,
) -> None:
    device = f"pp-{unique_id}"
    for pkg in (packages.factory, packages.upgrade, packages.slow):
        rig.add(pkg)
    events = events_of(device)
    agent = start_agent(rig.config(tmp_path, device, packages.factory))
    updates = agent.updates
    assert updates is not None
    traffic = Traffic(agent, wine_model.x_test[:2])
    try:
        rig.publish(device, rig.sign(device, packages.upgrade, 1))
        wait_event(events, "committed", 1, timeout_s=60)
    finally:
        traffic.stop()
    # 1.4.0's probation lasts 30 s without inferences: time enough to change our mind.
    rig.publish(device, rig.sign(device, packages.slow, 2))
    wait_event(events, "activated", 2, timeout_s=60)
    rig.publish(device, rig.sign(device, packages.upgrade, 3, rollback=True))
    rolled_back = wait_event(events, "rolled_back", 2, timeout_s=30)
    assert "asks for the previous model" in rolled_back["reason"]

    store = updates.store
    assert _settled(store) == []
    assert (store.active(), store.previous()) == (packages.upgrade.sha256, packages.factory.sha256)
    assert store.models() == sorted([packages.upgrade.sha256, packages.factory.sha256])
    assert_serves(agent, packages.upgrade.sha256, "1.1.0", wine_model)
