"""Power loss during updates: the agent PROCESS is SIGKILLed at random instants and restarted.

Across a series of updates (alternating between two large models, so a download takes a
moment over loopback), the agent is killed several times per update, at random instants
after it came up, which spreads the kills over download, verify, staging, activation and
probation. After every kill the store's active model must be complete and verify, and
every update must end committed or rolled back with the store holding no half install.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.store import ModelStore, StoreError
from edgefleet.agent.update.machine import Phase
from edgefleet.agent.update.wiring import STATE_FILE, STORE_DIR
from edgefleet.shared.manifest import ProbationBudget
from edgefleet.simulators.models import TrainedModel
from tests.e2e.updates.support import Rig, build, padded_model
from tests.support.agent import REPO, Subscriber, toml_config
from tests.support.mosquitto import MosquittoBroker

pytestmark = pytest.mark.slow

# Large enough that verifying, staging and activating (hashing, copying, loading the
# model) last long enough for random kills to land in them.
PAD_BYTES = 64 * 1024 * 1024
UPDATES = 10
KILLS_PER_UPDATE = 5
MAX_KILL_DELAY_S = 1.2


class Births:
    """Counts the agent's retained births (online state messages)."""

    def __init__(self, broker: MosquittoBroker, device: str) -> None:
        self.sub = Subscriber(broker.port, [f"edgefleet/v1/devices/{device}/state"])

    def count(self) -> int:
        return sum(1 for r in self.sub.on("state") if json.loads(r.payload)["online"])

    def wait_beyond(self, n: int, timeout_s: float = 20) -> None:
        self.sub.wait_for(lambda _: self.count() > n, timeout_s)


def read_state(data: Path, *, fresh_ok: bool = False) -> dict[str, Any]:
    """The persisted update state.

    A fresh device writes none until it accepts its first desired state, so one killed
    before that has none; ``fresh_ok`` (first update only) reads that as idle, with no
    seq. Once written, the state file is only ever replaced, never removed.
    """
    path = data / STATE_FILE
    if fresh_ok and not path.exists():
        return {"phase": "idle", "last_desired_seq": None}
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def check_store(store_root: Path) -> str:
    """The store as a crash left it: its active model is complete and verifies."""
    store = ModelStore(store_root)
    active = store.active()
    assert active is not None, "no active model after a kill"
    store.verify(active)
    return active


def wait_for_settled_store(
    store_root: Path, expected: str, what: str, timeout_s: float = 10.0
) -> None:
    """Wait until a live agent's store shows the outcome its persisted phase announces.

    The runner persists a phase *before* it performs that phase's effects (restore the
    previous model, remove the failed one, collect garbage), so right after "committed"
    or "rolled_back" appears on disk the store may still hold the old arrangement, or be
    mid-change under the reader. The property is that it converges: retry until the
    active model is ``expected``, verifies, and no half install is left beside it.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        problem = None
        try:
            active = check_store(store_root)
            store = ModelStore(store_root)
            if active != expected:
                problem = f"active model is {active[:12]}, expected {expected[:12]}"
            elif not set(store.models()) <= {store.active(), store.previous()}:
                problem = f"half install left: {sorted(store.models())}"
        except (FileNotFoundError, StoreError) as e:
            problem = f"store unreadable: {e}"
        if problem is None:
            return
        assert time.monotonic() < deadline, f"{what}: {problem}"
        time.sleep(0.1)


def test_agent_killed_at_random_instants_converges_every_update(
    tmp_path: Path, mosquitto: MosquittoBroker, wine_model: TrainedModel, unique_id: str
) -> None:
    rng = random.Random(int(unique_id, 16))
    big = padded_model(wine_model.path, tmp_path / "big.onnx", PAD_BYTES)
    probation = ProbationBudget(min_inferences=5, duration_s=0.5)
    model_a = build(big, "1.0.0", tmp_path / "pkgs", probation)
    model_b = build(big, "2.0.0", tmp_path / "pkgs", probation)
    rig = Rig(tmp_path / "fleet", mosquitto)
    rig.add(model_a)
    rig.add(model_b)
    device = f"pl-{unique_id}"
    (tmp_path / "agent").mkdir()
    data = tmp_path / "agent" / "data"
    config = toml_config(
        tmp_path / "agent" / "agent.toml",
        mosquitto,
        device,
        model=model_a.path,
        model_version=model_a.version,
        data_dir=data,
        update=rig.update_config(max_download_attempts=100, retry_base_s=0.05, retry_max_s=0.2),
    )
    log = (tmp_path / "agent.log").open("ab")
    births = Births(mosquitto, device)
    by_sha = {model_a.sha256: model_a, model_b.sha256: model_b}
    process: subprocess.Popen[bytes] | None = None

    def start() -> subprocess.Popen[bytes]:
        seen = births.count()
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.agent", "run", "--config", str(config)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        births.wait_beyond(seen)
        return proc

    phases_at_kill: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    try:
        process = start()
        for seq in range(1, UPDATES + 1):
            active = check_store(data / STORE_DIR)
            current = by_sha[active]
            target = model_b if current is model_a else model_a
            rollback = target is model_a
            rig.publish(device, rig.sign(device, target, seq, rollback=rollback))
            for _ in range(KILLS_PER_UPDATE):
                # A resumed update settles within a second or two, so long delays mostly
                # hit the committed state, and short ones keep interrupting probation
                # until the agent rolls back. Even updates get short delays (the kills
                # spread over the phases), odd ones long (some get through to commit).
                cap = MAX_KILL_DELAY_S if seq % 2 else MAX_KILL_DELAY_S / 2
                time.sleep(cap * rng.random() ** 1.5)
                process.send_signal(signal.SIGKILL)
                process.wait(10)
                check_store(data / STORE_DIR)
                state = read_state(data, fresh_ok=seq == 1)
                phases_at_kill[state["phase"] if state["last_desired_seq"] == seq else "idle"] += 1
                process = start()
            deadline = time.monotonic() + 30
            while True:
                state = read_state(data)
                settled = state["phase"] in ("committed", "rolled_back", "failed")
                if state["last_desired_seq"] == seq and settled:
                    break
                assert time.monotonic() < deadline, f"update {seq} stuck in {state['phase']}"
                time.sleep(0.1)
            phase = Phase(state["phase"])
            outcomes[phase.value] += 1
            assert phase in (Phase.COMMITTED, Phase.ROLLED_BACK), state.get("last_error")
            expected = target if phase is Phase.COMMITTED else current
            wait_for_settled_store(data / STORE_DIR, expected.sha256, f"update {seq} {phase}")
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        births.sub.close()
        rig.close()
        log.close()
    print(f"kills by persisted phase: {dict(phases_at_kill)}; outcomes: {dict(outcomes)}")
    assert sum(phases_at_kill.values()) >= 50
    assert outcomes[Phase.COMMITTED.value] >= 1
    spread = {
        p
        for p in phases_at_kill
        if p in ("downloading", "verifying", "staged", "activating", "probation")
    }
    assert len(spread) >= 3, f"kills did not spread over the update: {dict(phases_at_kill)}"
