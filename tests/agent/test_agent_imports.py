"""What a running agent process has imported: only what its config needs (issue 15).

Each test starts ``edgefleet agent run`` (through `edgefleet.shared.cli.main`, as the
console script does) in a subprocess, waits for its birth on a real Mosquitto, then asks
the process for its ``sys.modules``. A TFLite device must never load onnxruntime; no
device loads the model tooling (scikit-learn, skl2onnx, SciPy, onnx), the update path
(python-tuf, securesystemslib, urllib3) without updates, cryptography without an
identity, or another command's modules (SQLAlchemy, the fleet); a device with updates
enabled loads python-tuf and the director keys' cryptography with its first update, not
at start. Each of these costs MiB of RSS an idle device does not use
(tests/benchmarks/agent_footprint.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edgefleet.fleet.repository import ImageRepository
from edgefleet.shared.signing import keys
from edgefleet.shared.signing.bundle import write_bundle
from edgefleet.simulators.tflite_models.catalog import model_path
from tests.support.agent import REPO, Subscriber, toml_config
from tests.support.mosquitto import MosquittoBroker

# Run the CLI as the console script does; a daemon thread writes sys.modules to OUT once
# the test creates ASK (after the birth), so the list is the idle agent's.
_WRAPPER = """
import json, sys, threading, time
from pathlib import Path
ask, out = Path(sys.argv[1]), Path(sys.argv[2])
def answer():
    while not ask.exists():
        time.sleep(0.02)
    out.write_text(json.dumps(sorted(sys.modules)))
threading.Thread(target=answer, daemon=True).start()
from edgefleet.shared.cli import main
sys.exit(main(["--log-level", "WARNING", "agent", "run", "--config", sys.argv[3]]))
"""

# Never imported by an agent at idle, whatever its config.
NEVER = ("sklearn", "skl2onnx", "scipy", "onnx", "sqlalchemy", "alembic", "edgefleet.fleet")
# Not imported at idle, updates enabled or not, without an identity.
UPDATE_AND_IDENTITY = ("tuf", "securesystemslib", "urllib3", "cryptography")
# Not imported on Linux, where /proc and os give the telemetry's figures
# (edgefleet.agent.process_stats); elsewhere psutil still does.
PROC_READABLE = ("psutil",) if sys.platform == "linux" else ()
# The update machine, its acceptance rules and event models: only with updates enabled
# (the config and the metrics need only edgefleet.agent.update.policy).
UPDATE_MACHINE = (
    "edgefleet.agent.update.machine",
    "edgefleet.agent.update.acceptance",
    "edgefleet.agent.update.types",
)
# The local API's modules: only with [api] enabled.
LOCAL_API = (
    "http.server",
    "edgefleet.agent.inference_api",
    "edgefleet.agent.feedback",
    "edgefleet.agent.exposition",
)
# The fleet's drift statistics and verdicts and the tooling's profile builder: never on a
# device at idle (edgefleet.shared.drift loads its submodules at first use).
FLEET_DRIFT = (
    "edgefleet.shared.drift.thresholds",
    "edgefleet.shared.drift.stats",
    "edgefleet.shared.drift.builder",
)


def idle_modules(
    tmp_path: Path,
    broker: MosquittoBroker,
    device: str,
    model: Path,
    watch: list[Subscriber],
    update: dict[str, Any] | None = None,
    api_enabled: bool = True,
) -> set[str]:
    """Start an agent serving ``model``, wait for its birth, return its ``sys.modules``."""
    config = toml_config(
        tmp_path / "agent.toml", broker, device, model=model, update=update, api_enabled=api_enabled
    )
    ask, out = tmp_path / "ask", tmp_path / "modules.json"
    watcher = Subscriber(broker.port, [f"edgefleet/v1/devices/{device}/state"])
    watch.append(watcher)
    process = subprocess.Popen(
        [sys.executable, "-c", _WRAPPER, str(ask), str(out), str(config)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        watcher.wait_for(lambda r: len(r) >= 1, timeout_s=30)
        ask.touch()
        deadline = time.monotonic() + 10
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert out.exists(), "the agent process never listed its modules"
        modules: list[str] = json.loads(out.read_text())
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=15)
    assert process.returncode == 0, output.decode(errors="replace")
    return set(modules)


def loaded(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


def test_a_tflite_device_never_imports_onnxruntime_nor_tooling(
    tmp_path: Path,
    shared_mosquitto: MosquittoBroker,
    unique_id: str,
    subscribers: list[Subscriber],
) -> None:
    modules = idle_modules(
        tmp_path,
        shared_mosquitto,
        f"imports-tflite-{unique_id}",
        model_path("wine_float.tflite"),
        subscribers,
    )
    assert "edgefleet.shared.runtime.tflite" in modules  # it does serve the model
    assert loaded(modules, ("onnxruntime",)) == []
    assert loaded(modules, NEVER) == []
    assert loaded(modules, UPDATE_AND_IDENTITY) == []
    assert loaded(modules, PROC_READABLE) == []
    assert loaded(modules, FLEET_DRIFT) == []


def test_an_onnx_device_without_updates_loads_no_update_path_nor_tooling(
    tmp_path: Path,
    shared_mosquitto: MosquittoBroker,
    unique_id: str,
    subscribers: list[Subscriber],
) -> None:
    modules = idle_modules(
        tmp_path,
        shared_mosquitto,
        f"imports-onnx-{unique_id}",
        model_path("wine_float.onnx"),
        subscribers,
    )
    assert "onnxruntime" in modules
    assert loaded(modules, NEVER) == []
    assert loaded(modules, UPDATE_AND_IDENTITY) == []
    assert loaded(modules, PROC_READABLE) == []
    assert loaded(modules, FLEET_DRIFT) == []
    assert loaded(modules, UPDATE_MACHINE) == []


def test_an_updating_device_loads_tuf_and_the_director_keys_only_with_an_update(
    tmp_path: Path,
    shared_mosquitto: MosquittoBroker,
    unique_id: str,
    subscribers: list[Subscriber],
) -> None:
    signers = {name: keys.generate_signer() for name in keys.ALL_KEYS}
    repo = ImageRepository.create(tmp_path / "repo", signers)
    trust = tmp_path / "trust"
    write_bundle(trust, repo.metadata_bytes("root", 1), [signers["director"].public_key])
    update = {"enabled": True, "repository_url": "http://127.0.0.1:9/", "trust_dir": str(trust)}
    modules = idle_modules(
        tmp_path,
        shared_mosquitto,
        f"imports-update-{unique_id}",
        model_path("wine_float.onnx"),
        subscribers,
        update,
    )
    assert "edgefleet.agent.update.runner" in modules  # updates are on
    assert loaded(modules, NEVER) == []
    assert loaded(modules, UPDATE_AND_IDENTITY) == []


@pytest.mark.parametrize(
    "packages", [NEVER, UPDATE_AND_IDENTITY, PROC_READABLE, UPDATE_MACHINE, FLEET_DRIFT, LOCAL_API]
)
def test_the_lists_name_importable_packages(packages: tuple[str, ...]) -> None:
    """A typo in a list would make the tests above pass vacuously."""
    import importlib.util

    for name in packages:
        assert importlib.util.find_spec(name) is not None, name
