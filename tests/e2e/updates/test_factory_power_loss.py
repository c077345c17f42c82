"""Power loss during a device's FIRST start: the agent process is SIGKILLed while it installs
its factory package, then started cleanly.

A fresh device (empty data dir) ships with a factory package (``model.path``). Its first
start verifies, extracts and activates it in the content-addressed model store
(`edgefleet.agent.store`), with updates enabled or disabled alike. Each kill lands at a
random instant after the agent created its store, so kills spread over extraction,
indexing, the rename into place and the slot switch. After every kill the store holds
either no active model or a verified one; after the clean start the factory model is
active, verifies and answers inferences.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.store import ModelStore
from edgefleet.agent.update.wiring import STORE_DIR
from edgefleet.simulators.models import TrainedModel
from tests.e2e.updates.support import Rig, build, padded_model
from tests.support.agent import REPO, Subscriber, toml_config
from tests.support.mosquitto import MosquittoBroker, free_port

pytestmark = pytest.mark.slow

# Large enough that hashing, extracting and indexing the package take a noticeable part
# of a second, so random kills land inside the install and not only around it.
PAD_BYTES = 48 * 1024 * 1024
KILLS = 6
# Kills spread over this multiple of a measured first install: most land inside it, the
# last ones around its end (the install's length depends on the machine and its load, so
# fixed delays let every kill miss it on a fast, quiet one).
KILL_SPAN = 1.5


@pytest.fixture(params=[False, True], ids=["updates-off", "updates-on"])
def rig(
    request: pytest.FixtureRequest, tmp_path: Path, mosquitto: MosquittoBroker
) -> Iterator[Rig | None]:
    if not request.param:
        yield None
        return
    fleet = Rig(tmp_path / "fleet", mosquitto)
    yield fleet
    fleet.close()


def check_store(root: Path) -> str | None:
    """The store as a kill left it (no agent running): recovered as the next start will
    recover it, its active model, if any, verifies."""
    store = ModelStore(root)
    store.recover()
    active = store.active()
    if active is not None:
        store.verify(active)
    return active


def online_births(births: Subscriber) -> list[dict[str, Any]]:
    docs = [json.loads(r.payload) for r in births.on("state")]
    return [d for d in docs if d["online"]]


def predict(port: int, rows: list[list[float]]) -> dict[str, object]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/predict",
        data=json.dumps({"inputs": {"input": rows}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, object] = json.loads(response.read())
    return answer


def test_first_start_killed_at_random_instants_ends_with_the_factory_model_serving(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    wine_model: TrainedModel,
    unique_id: str,
    rig: Rig | None,
) -> None:
    rng = random.Random(int(unique_id, 16))
    big = padded_model(wine_model.path, tmp_path / "big.onnx", PAD_BYTES)
    factory = build(big, "1.0.0", tmp_path / "pkgs")
    device = f"fpl-{unique_id}"
    (tmp_path / "agent").mkdir()
    api_port = free_port()
    config = toml_config(
        tmp_path / "agent" / "agent.toml",
        mosquitto,
        device,
        model=factory.path,
        model_version=factory.version,
        api_port=api_port,
        data_dir=tmp_path / "agent" / "data",
        update=rig.update_config() if rig else {"enabled": False},
    )
    store_root = tmp_path / "agent" / "data" / STORE_DIR
    log = (tmp_path / "agent.log").open("ab")

    def spawn(agent_config: Path = config) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "edgefleet.agent", "run", "--config", str(agent_config)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def wait_for_store(process: subprocess.Popen[bytes], root: Path) -> None:
        # Count from the moment the agent starts on its store (interpreter start-up
        # and imports take longer than the install itself on a busy machine).
        deadline = time.monotonic() + 60
        while not root.is_dir():
            assert process.poll() is None, f"the agent exited: {process.returncode}"
            assert time.monotonic() < deadline, "the agent never created its store"
            time.sleep(0.005)

    # How long a first install takes here, on another device's data dir.
    (tmp_path / "calibration").mkdir()
    calibration = toml_config(
        tmp_path / "calibration" / "agent.toml",
        mosquitto,
        f"{device}-cal",
        model=factory.path,
        model_version=factory.version,
        api_port=free_port(),
        data_dir=tmp_path / "calibration" / "data",
        update=rig.update_config() if rig else {"enabled": False},
    )
    calibration_root = tmp_path / "calibration" / "data" / STORE_DIR
    timing = spawn(calibration)
    try:
        wait_for_store(timing, calibration_root)
        started = time.monotonic()
        while ModelStore(calibration_root).active() is None:  # live: read, do not recover
            assert time.monotonic() - started < 60, "the calibration install never finished"
            time.sleep(0.002)
        install_s = time.monotonic() - started
    finally:
        timing.send_signal(signal.SIGKILL)
        timing.wait(10)

    process: subprocess.Popen[bytes] | None = None
    before_activation = 0
    births = Subscriber(mosquitto.port, [f"edgefleet/v1/devices/{device}/state"])
    try:
        for kill in range(KILLS):
            process = spawn()
            wait_for_store(process, store_root)
            # Short delays first, longer ones later: early kills hit the install, late
            # ones may find the factory model active already.
            time.sleep(KILL_SPAN * install_s * (kill + rng.random()) / KILLS)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            active = check_store(store_root)
            assert active in (None, factory.sha256)
            before_activation += active is None
        seen = len(online_births(births))
        process = spawn()
        births.wait_for(lambda _: len(online_births(births)) > seen, timeout_s=60)
        store = ModelStore(store_root)  # live now: read, do not recover
        assert store.active() == factory.sha256
        assert store.verify(factory.sha256).version == "1.0.0"
        assert set(store.models()) == {factory.sha256}
        assert list(store.staging_dir.iterdir()) == []
        answer = predict(api_port, wine_model.x_test[:2].tolist())
        assert answer["model"] == {"name": "wine", "version": "1.0.0"}
        assert online_births(births)[-1]["active_model"]["sha256"] == factory.sha256
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        births.close()
        log.close()
    print(
        f"{before_activation} of {KILLS} kills landed before the factory model was active "
        f"(a first install took {install_s:.3f} s)"
    )
    assert before_activation >= 1, "no kill landed inside the install"
