"""A real agent serving a profiled model publishes its drift windows over a real broker."""

from __future__ import annotations

import json

from edgefleet.agent.config import DriftConfig
from edgefleet.shared.drift import evaluate
from edgefleet.shared.drift.compact import quantize
from edgefleet.simulators.models import SensorFeed
from tests.agent.drift.conftest import Packages, drift_messages, profiled_config, wait_drift
from tests.e2e.updates.support import Rig


def test_windows_close_by_count_and_their_counts_equal_the_inferences(
    tmp_path, mosquitto, packages: Packages, start_agent, drift_of, unique_id, wine_model
) -> None:
    device = f"count-{unique_id}"
    sub = drift_of(device)
    config = profiled_config(
        tmp_path, mosquitto, device, packages.profiled, window_count=20, window_s=3600
    )
    agent = start_agent(config)
    rows = wine_model.x_test
    for i in range(50):
        agent.infer({"input": rows[i % len(rows)][None, :]})
    windows = wait_drift(sub, device, 40)
    assert [w.count for w in windows] == [20, 20], "two full windows, closed by count"
    agent.stop(5.0)  # the open window (10 rows) closes and goes out with the shutdown
    windows = wait_drift(sub, device, 50)
    assert [w.count for w in windows] == [20, 20, 10]
    for w in windows:
        assert w.sketch is not None
        assert w.sketch.count == w.count
        assert w.model is not None
        assert (w.model.name, w.model.version) == ("wine", "1.0.0")
        assert w.model.sha256 == packages.profiled.sha256
        assert w.window_start <= w.window_end
    assert [w.seq for w in windows] == sorted(w.seq for w in windows)
    # Compact on the wire, and rounded before it was sent (so rounding again changes nothing).
    sent = [json.loads(r.payload)["sketch"] for r in sub.on("drift")]
    assert all(s["v"] == 2 for s in sent)
    # Bin counts packed into strings (base64 of varints), the profile named by its digest.
    assert all(
        isinstance(f[0] if isinstance(f, list) else f["k"], str)
        for s in sent
        for f in s["i"].values()
    )
    assert all(len(s["h"]) == 43 for s in sent)
    profile = packages.profile(packages.profiled)
    assert all(w.sketch is not None and quantize(w.sketch, profile) == w.sketch for w in windows)


def test_window_closes_by_time_with_every_inference_of_a_batch(
    tmp_path, mosquitto, packages: Packages, start_agent, drift_of, unique_id, wine_model
) -> None:
    device = f"time-{unique_id}"
    sub = drift_of(device)
    config = profiled_config(
        tmp_path, mosquitto, device, packages.profiled, window_count=10**6, window_s=0.3
    )
    agent = start_agent(config)
    agent.infer({"input": wine_model.x_test[:7]})
    agent.infer({"input": wine_model.x_test[7:9]})
    [window] = wait_drift(sub, device, 9, timeout_s=5)
    assert window.count == 9
    age_s = (window.window_end - window.window_start).total_seconds()
    assert 0.25 <= age_s < 3.0


def test_shifted_inputs_flag_data_drift_and_unshifted_inputs_do_not(
    tmp_path, mosquitto, packages: Packages, start_agent, drift_of, unique_id, wine_model
) -> None:
    device = f"shift-{unique_id}"
    sub = drift_of(device)
    config = profiled_config(
        tmp_path, mosquitto, device, packages.profiled, window_count=400, window_s=3600
    )
    agent = start_agent(config)
    feed = SensorFeed(wine_model.x_train, seed=3)
    for _ in range(4):
        agent.infer({"input": feed.sample(100)})
    feed.shift = 2.0  # two standard deviations on every feature
    for _ in range(4):
        agent.infer({"input": feed.sample(100)})
    calm, shifted = wait_drift(sub, device, 800)
    profile = packages.profile(packages.profiled)
    assert calm.sketch is not None
    assert shifted.sketch is not None
    calm_report = evaluate(profile, calm.sketch)
    shifted_report = evaluate(profile, shifted.sketch)
    assert calm_report.judged
    assert shifted_report.judged
    assert not calm_report.data_drift, calm_report.drifted_inputs
    assert shifted_report.data_drift
    assert len(shifted_report.drifted_inputs) > len(wine_model.feature_names) // 2


def test_model_swap_publishes_the_old_models_window_and_monitors_the_new_one(
    tmp_path, mosquitto, packages: Packages, start_agent, drift_of, unique_id, wine_model
) -> None:
    device = f"swap-{unique_id}"
    rig = Rig(tmp_path / "fleet", mosquitto)
    try:
        rig.add(packages.profiled)
        rig.add(packages.profiled_upgrade)
        sub = drift_of(device)
        config = rig.config(tmp_path, device, packages.profiled).model_copy(
            update={"drift": DriftConfig(tick_s=0.05, window_count=10**6, window_s=3600)}
        )
        agent = start_agent(config)
        old_monitor = agent.model_host.drift_monitor
        assert old_monitor is not None
        agent.infer({"input": wine_model.x_test[:12]})
        assert drift_messages(sub, device) == [], "the window is neither full nor old"
        rig.publish(device, rig.sign(device, packages.profiled_upgrade, 1))
        [old_window] = wait_drift(sub, device, 12, timeout_s=20)
        assert old_window.count == 12
        assert old_window.model is not None
        assert old_window.model.version == "1.0.0"
        new_monitor = agent.model_host.drift_monitor
        assert new_monitor is not None
        assert new_monitor is not old_monitor
        assert (
            new_monitor.profile.profile_id == packages.profile(packages.profiled_upgrade).profile_id
        )
        ref, _ = agent.infer({"input": wine_model.x_test[:5]})
        assert ref.version == "1.1.0"
        agent.stop(5.0)
        # Golden-sample checks run the runtime directly, not `infer`: they are not counted.
        windows = wait_drift(sub, device, 17)
        last = windows[-1]
        assert last.model is not None
        assert last.model.version == "1.1.0"
        assert sum(w.count for w in windows if w.model and w.model.version == "1.0.0") == 12
    finally:
        rig.close()


def test_model_without_a_profile_is_not_monitored(
    tmp_path, mosquitto, packages: Packages, start_agent, unique_id, wine_model
) -> None:
    config = profiled_config(tmp_path, mosquitto, f"bare-{unique_id}", packages.bare)
    agent = start_agent(config)
    ref, outputs = agent.infer({"input": wine_model.x_test[:3]})
    assert ref.version == "1.0.0"
    assert outputs["label"].shape == (3,)
    assert agent.model_host.drift_monitor is None


def test_drift_can_be_turned_off_for_a_profiled_model(
    tmp_path, mosquitto, packages: Packages, start_agent, unique_id
) -> None:
    config = profiled_config(
        tmp_path, mosquitto, f"off-{unique_id}", packages.profiled, enabled=False
    )
    agent = start_agent(config)
    assert agent.model_host.active is not None
    assert agent.model_host.drift_monitor is None
