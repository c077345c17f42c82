"""The distribution as a user gets it: the wheel and the sdist, and a device's install.

The source folders (`agent/`, `fleet/`, `shared/`, `simulators/`) reach the wheel only
through the links in ``packaging/python/edgefleet``, so these tests check what the built
artifacts hold rather than trusting the editable install: one import root, `edgefleet`;
every package and data file of the folders; an sdist that builds the same wheel; and a
fresh virtualenv with only ``edgefleet[agent]`` that runs a real agent against a real
Mosquitto, without any of the fleet's or the tools' dependencies.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import Subscriber, toml_config
from tests.support.mosquitto import MosquittoBroker, free_port

REPO = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = ("agent", "fleet", "shared", "simulators")
ROOT = "edgefleet"
# The data files pyproject.toml declares for `edgefleet.simulators.tflite_models`.
MODEL_DATA = ("*.tflite", "*.onnx", "manifest.json")
# What a device must not get from `edgefleet[agent]`: the fleet's and the tools' stacks.
SERVER_SIDE_MODULES = ("fastapi", "sqlmodel", "sklearn", "scipy", "mlflow", "jwt")
# One sample of the wine data's 13 features, for the packaged wine model.
WINE_ROW = [13.0, 2.0, 2.4, 19.0, 100.0, 2.3, 2.0, 0.36, 1.6, 5.0, 0.96, 2.6, 750.0]
# Where setuptools writes when it builds in a source tree.
SETUPTOOLS_LITTER = (
    "build",
    "dist",
    "*.egg-info",
    "packaging/python/build",
    "packaging/python/dist",
    "packaging/python/*.egg-info",
)


# ---------------------------------------------------------------------------- helpers


def wheel_files(wheel: Path) -> dict[str, str]:
    """Every file of the wheel outside its .dist-info directory, with its sha256."""
    with zipfile.ZipFile(wheel) as zf:
        return {
            info.filename: hashlib.sha256(zf.read(info)).hexdigest()
            for info in zf.infolist()
            if not info.is_dir() and not info.filename.split("/")[0].endswith(".dist-info")
        }


def top_level_names(wheel: Path) -> set[str]:
    """The names a wheel puts at the top of site-packages (a ``.data`` dir counts too)."""
    names = set()
    for path in wheel_files(wheel):
        first = path.split("/")[0]
        names.add(first.split(".")[0] if "/" not in path else first)
    return names


def declared_top_level(wheel: Path) -> set[str] | None:
    """The lines of the wheel's top_level.txt, or None if it has none."""
    with zipfile.ZipFile(wheel) as zf:
        found = [n for n in zf.namelist() if n.endswith(".dist-info/top_level.txt")]
        if not found:
            return None
        return {line.strip() for line in zf.read(found[0]).decode().splitlines() if line.strip()}


def wheel_packages(wheel: Path) -> set[str]:
    """Packages of the wheel below the root, as paths: ``agent``, ``agent/update``..."""
    prefix = ROOT + "/"
    return {
        path.removeprefix(prefix).removesuffix("/__init__.py").removesuffix("__init__.py")
        for path in wheel_files(wheel)
        if path.startswith(prefix) and path.endswith("__init__.py")
    }


def source_files(pattern: str) -> set[Path]:
    """Files matching ``pattern`` under the source folders, relative to the repository."""
    return {
        path.relative_to(REPO)
        for folder in SOURCE_FOLDERS
        for path in (REPO / folder).rglob(pattern)
        if "__pycache__" not in path.parts
    }


def source_packages() -> set[str]:
    """Every directory under the source folders that has an ``__init__.py``."""
    return {path.parent.as_posix() for path in source_files("__init__.py")}


def in_wheel(source: Path) -> str:
    """Where the source file ``agent/x.py`` lands in the wheel: ``edgefleet/agent/x.py``."""
    return f"{ROOT}/{source.as_posix()}"


def litter_snapshot() -> dict[str, int]:
    """Build outputs of setuptools in the repository, with each file's mtime."""
    found: dict[str, int] = {}
    for pattern in SETUPTOOLS_LITTER:
        for top in REPO.glob(pattern):
            for path in [top, *top.rglob("*")]:
                found[str(path.relative_to(REPO))] = path.stat().st_mtime_ns
    return found


def run(
    command: list[str], *, timeout_s: float, cwd: Path, env: dict[str, str] | None = None
) -> str:
    """Run a command; on failure raise with its output, on success return it."""
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout_s, check=False, cwd=cwd, env=env
    )
    assert result.returncode == 0, (
        f"{command} exited {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result.stdout


# --------------------------------------------------------------------- helper self-test


def _fake_wheel(path: Path, files: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in files:
            zf.writestr(name, "")
    return path


def test_the_helpers_see_a_wheel_that_ships_more_than_edgefleet(tmp_path: Path) -> None:
    """The wheel assertions below would catch a stray root, a .data dir or a lost package."""
    good = _fake_wheel(
        tmp_path / "good.whl",
        [
            "edgefleet/__init__.py",
            "edgefleet/agent/__init__.py",
            "edgefleet/agent/update/__init__.py",
            "edgefleet-0.1.0.dist-info/top_level.txt",
        ],
    )
    assert top_level_names(good) == {"edgefleet"}
    assert wheel_packages(good) == {"", "agent", "agent/update"}
    bad = _fake_wheel(
        tmp_path / "bad.whl",
        [
            "edgefleet/__init__.py",
            "agent/__init__.py",
            "six.py",
            "edgefleet-0.1.0.data/purelib/x.py",
            "edgefleet-0.1.0.dist-info/RECORD",
        ],
    )
    assert top_level_names(bad) == {"edgefleet", "agent", "six", "edgefleet-0.1.0.data"}
    assert declared_top_level(bad) is None


# ------------------------------------------------------------------------------ builds


@dataclass(frozen=True)
class Dists:
    wheel: Path
    sdist: Path
    litter_before: dict[str, int]
    litter_after: dict[str, int]


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """The wheel and the sdist, built from the repository with `python -m build`.

    setuptools writes ``build/`` and ``*.egg-info`` into the source tree; the distutils
    config in DIST_EXTRA_CONFIG moves both into the test's own directory.
    """
    assert importlib.util.find_spec("build"), (
        "the `build` package is missing: pip install -e .[dev]"
    )
    work = tmp_path_factory.mktemp("build")
    (work / "egg").mkdir()
    extra = work / "setuptools.cfg"
    extra.write_text(
        f"[build]\nbuild_base = {work / 'build'}\n[egg_info]\negg_base = {work / 'egg'}\n"
    )
    out = work / "dist"
    before = litter_snapshot()
    run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(REPO)],
        timeout_s=240,
        cwd=work,
        env={**os.environ, "DIST_EXTRA_CONFIG": str(extra)},
    )
    after = litter_snapshot()
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return Dists(wheel, sdist, before, after)


@pytest.mark.slow
def test_building_leaves_no_files_in_the_repository(dists: Dists) -> None:
    before, after = dists.litter_before, dists.litter_after
    touched = sorted(
        path for path in before.keys() | after.keys() if before.get(path) != after.get(path)
    )
    assert not touched, f"the build wrote into the repository: {touched[:10]}"


@pytest.mark.slow
def test_the_wheel_installs_only_the_edgefleet_import_root(dists: Dists) -> None:
    assert top_level_names(dists.wheel) == {ROOT}
    assert declared_top_level(dists.wheel) in (None, {ROOT})


@pytest.mark.slow
def test_the_wheel_has_every_package_and_module_of_the_source_folders(dists: Dists) -> None:
    packages = source_packages()
    assert set(SOURCE_FOLDERS) <= packages
    assert wheel_packages(dists.wheel) == packages | {""}
    files = wheel_files(dists.wheel)
    missing = sorted(in_wheel(p) for p in source_files("*.py") if in_wheel(p) not in files)
    assert not missing, f"modules left out of the wheel: {missing}"


@pytest.mark.slow
def test_the_wheel_has_the_package_data(dists: Dists) -> None:
    files = wheel_files(dists.wheel)
    models = REPO / "simulators" / "tflite_models"
    data = {p.relative_to(REPO) for pattern in MODEL_DATA for p in models.glob(pattern)}
    assert {p.suffix for p in data} == {".tflite", ".onnx", ".json"}
    typed = source_files("py.typed")
    assert {p.parts[0] for p in typed} == set(SOURCE_FOLDERS)
    # Alembic renders new revisions from it; an installed fleet migrates without it, but
    # `edgefleet fleet migrate revision` needs it.
    data.add(Path("fleet/store/migrations/script.py.mako"))
    for source in sorted(data | typed):
        digest = hashlib.sha256((REPO / source).read_bytes()).hexdigest()
        assert files.get(in_wheel(source)) == digest, f"{in_wheel(source)} missing or stale"
    assert f"{ROOT}/py.typed" in files


@pytest.mark.slow
def test_the_sdist_builds_the_same_wheel(dists: Dists, tmp_path: Path) -> None:
    with tarfile.open(dists.sdist) as tar:
        tar.extractall(tmp_path / "sdist", filter="data")
    (unpacked,) = (tmp_path / "sdist").iterdir()
    assert not (unpacked / "agent").exists(), "the sdist ships the top-level folders"
    out = tmp_path / "wheel"
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(unpacked)],
        timeout_s=240,
        cwd=tmp_path,
    )
    (rebuilt,) = out.glob("*.whl")
    assert rebuilt.name == dists.wheel.name
    original, again = wheel_files(dists.wheel), wheel_files(rebuilt)
    assert set(again) == set(original)
    assert again == original, "same files, different contents"


# -------------------------------------------------------------- a device's fresh install


@dataclass(frozen=True)
class Device:
    """A virtualenv holding only ``edgefleet[agent]`` and what it pulls in."""

    venv: Path
    workdir: Path  # an empty cwd, so nothing of the repository is importable by accident

    @property
    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"}
            and not k.startswith("EDGEFLEET_")
        }
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.venv)
        return env

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / "python"), "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=self.workdir,
            env=self.env,
        )

    def package_dir(self) -> Path:
        """Where this venv imports `edgefleet` from."""
        probe = self.python("import edgefleet, pathlib; print(pathlib.Path(edgefleet.__file__))")
        assert probe.returncode == 0, probe.stderr
        return Path(probe.stdout.strip()).parent


@pytest.fixture(scope="module")
def device(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Device:
    root = tmp_path_factory.mktemp("device")
    venv, workdir = root / "venv", root / "cwd"
    workdir.mkdir()
    run([sys.executable, "-m", "venv", str(venv)], timeout_s=120, cwd=workdir)
    config = (venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in config
    python = str(venv / "bin" / "python")
    run(
        [python, "-m", "pip", "install", "-q", "--no-input", f"{dists.wheel}[agent]"],
        timeout_s=240,
        cwd=workdir,
        env={k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}},
    )
    device = Device(venv, workdir)
    package_dir = device.package_dir()
    assert package_dir.is_relative_to(venv), f"edgefleet imported from {package_dir}"
    return device


@pytest.mark.slow
def test_the_device_install_has_the_agent_command(device: Device) -> None:
    result = subprocess.run(
        [str(device.venv / "bin" / "edgefleet"), "agent", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=device.workdir,
        env=device.env,
    )
    assert result.returncode == 0, result.stderr
    assert "run" in result.stdout
    assert "check-config" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("module", [*SERVER_SIDE_MODULES, "agent", "shared"])
def test_the_device_install_lacks_server_side_and_old_top_level_modules(
    device: Device, module: str
) -> None:
    result = device.python(f"import {module}")
    assert result.returncode != 0, f"{module} is importable on a device"
    assert f"ModuleNotFoundError: No module named '{module}'" in result.stderr, result.stderr


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts are killed after it if they still run."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_a_real_agent_runs_from_the_device_install(
    device: Device,
    mosquitto: MosquittoBroker,
    unique_id: str,
    subscribers: list[Subscriber],
    processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """`edgefleet agent run` from the wheel: births retained, serves its model, stops on TERM."""
    device_id = f"wheel-{unique_id}"
    topic = f"edgefleet/v1/devices/{device_id}/state"
    # The model is the package data the wheel installed, so onnxruntime loads it there.
    model = device.package_dir() / "simulators" / "tflite_models" / "wine_float.onnx"
    assert model.is_file(), f"the wheel did not install {model.name}"
    api_port = free_port()
    config = toml_config(
        tmp_path / "agent.toml", mosquitto, device_id, model=model, api_port=api_port
    )
    log = tmp_path / "agent.log"
    watcher = Subscriber(mosquitto.port, [topic])
    subscribers.append(watcher)
    with log.open("wb") as out:
        agent = subprocess.Popen(
            [str(device.venv / "bin" / "edgefleet"), "agent", "run", "--config", str(config)],
            cwd=device.workdir,
            env=device.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    processes.append(agent)

    try:
        first = watcher.wait_for(lambda r: len(r) >= 1, timeout_s=30)[0]
    except AssertionError as e:
        raise AssertionError(f"no birth from the agent: {e}\n{log.read_text()}") from None
    birth = first.doc
    assert birth["online"] is True, birth
    assert birth["device_id"] == device_id
    assert birth["runtimes"] == ["onnx"], birth  # onnxruntime from the extra, no TFLite
    assert (birth["active_model"] or {}).get("name") == "wine", log.read_text()

    late = Subscriber(mosquitto.port, [topic])
    subscribers.append(late)
    retained = late.wait_for(lambda r: len(r) >= 1)[0]
    assert retained.retain
    assert retained.doc["seq"] == birth["seq"]

    status, answer = _predict(api_port, [WINE_ROW])
    assert status == 200, answer
    (probabilities,) = answer["outputs"]["probabilities"]
    assert len(probabilities) == 3
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)

    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=20) == 0, log.read_text()
    offline = watcher.wait_for(lambda r: not r[-1].doc["online"])[-1].doc
    assert offline["reason"] == "shutdown"
    assert "Traceback" not in log.read_text()


def _predict(port: int, rows: list[list[float]]) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"inputs": {"input": rows}}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()
