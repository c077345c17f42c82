"""The edgefleet-agent .deb, built once per session by packaging/deb/build.py.

One staged tree, written as two versions (the upgrade test installs one over the other):
the first gzip-compressed, as a development build is, the second uncompressed (a few
seconds instead of seven; only installed). The target wheels are cached in
``~/.cache/edgefleet-deb`` between runs, as the script does. lintian (~70 s) starts on
the first package right after the build and runs in the background while the install
tests use the machine (tests/packaging/deb/test_lintian.py waits for it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.agent import REPO

BUILD_SCRIPT = REPO / "packaging" / "deb" / "build.py"
DATE = "Fri, 04 Dec 2026 12:00:00 +0000"


def load_build() -> ModuleType:
    """packaging/deb/build.py as a module (``packaging`` is taken by the PyPI library)."""
    name = "edgefleet_deb_build"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BUILD_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def build() -> ModuleType:
    return load_build()


@dataclass(frozen=True)
class Debs:
    """The amd64 package in two versions, and lintian's run over the first."""

    old: Path
    new: Path
    wheel: Path
    old_version: str
    new_version: str
    root: Path
    lintian: subprocess.Popen[str] | None


def wheel_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgefleet-deb"


@pytest.fixture(scope="session")
def debs(
    build: ModuleType, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Debs]:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed (Debian package 'dpkg')")
    work = tmp_path_factory.mktemp("deb")
    wheel = build.build_wheel(work / "wheel")
    wheels = build.download_wheels(wheel, "amd64", wheel_cache())
    root = build.stage(wheel, wheels, "amd64", work / "root")
    # "~test" sorts below the release, so a real package of this version always wins,
    # and the install tests know a leftover of theirs by it.
    old_version = f"{build.project_version()}~test1"
    new_version = f"{build.project_version()}~test2"
    old = build.write_deb(
        root, version=old_version, arch="amd64", out=work / "out", date=DATE, compression="gzip"
    )
    lintian = None
    # Only when the lintian test is selected: it takes more CPU than everything else here.
    wanted = any(item.path.name == "test_lintian.py" for item in request.session.items)
    if wanted and shutil.which("lintian"):
        # --allow-root: CI runs as root (lintian only unpacks the package in a temp dir).
        command = ["lintian", "--allow-root", "--fail-on", "error,warning", "--info", str(old)]
        lintian = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    new = build.write_deb(
        root, version=new_version, arch="amd64", out=work / "out", date=DATE, compression="none"
    )
    yield Debs(old, new, wheel, old_version, new_version, root, lintian)
    if lintian is not None and lintian.poll() is None:
        lintian.kill()
        lintian.wait()
