"""packaging/deb/build.py: what goes into the package, and refusals of bad input.

The arm64 package's wheels are resolved for aarch64 from the configured index, as a
release build does; it is not staged or installed here (this machine cannot run it).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from tests.packaging.deb.conftest import Debs, wheel_cache
from tests.support.agent import REPO

UNIT = REPO / "packaging" / "systemd" / "edgefleet-agent.service"
VENV = "usr/lib/edgefleet-agent"
SITE = f"{VENV}/lib/python3.11/site-packages"
# ELF e_machine values.
MACHINES = {"amd64": 62, "arm64": 183}


def elf_machines(build: ModuleType, root: Path) -> dict[Path, int]:
    """Every ELF file under ``root`` with its e_machine."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            machine = build.elf_machine(path)
            if machine is not None:
                found[path] = machine
    return found


def field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), name], capture_output=True, text=True, check=True
    ).stdout.strip()


# ------------------------------------------------------------------------- pure parts


def test_platform_tags_reach_bookworms_glibc_and_no_further(build: ModuleType) -> None:
    tags = build.platform_tags("arm64")
    assert "manylinux2014_aarch64" in tags
    assert "manylinux_2_28_aarch64" in tags  # onnxruntime's and numpy's wheels
    assert "manylinux_2_36_aarch64" in tags
    assert "manylinux_2_37_aarch64" not in tags
    assert all(tag.endswith("_aarch64") for tag in tags)


def test_an_unknown_architecture_is_a_clear_error(build: ModuleType) -> None:
    with pytest.raises(build.BuildError, match=r"architecture 'armhf' is not one of"):
        build.platform_tags("armhf")


@pytest.mark.parametrize("bad", ["", "v1.0", "1.0 beta", "1.0-", "1.0_2", "a:1.0"])
def test_a_version_that_is_not_a_debian_version_is_refused(build: ModuleType, bad: str) -> None:
    with pytest.raises(build.BuildError, match="is not a Debian version"):
        build.check_version(bad)


@pytest.mark.parametrize("good", ["0.1.0", "0.1.0~test1", "1:0.2.0+git3-1"])
def test_debian_versions_are_taken(build: ModuleType, good: str) -> None:
    assert build.check_version(good) == good


def test_the_packaged_unit_is_the_repos_unit_run_by_a_system_user(build: ModuleType) -> None:
    unit = UNIT.read_text()
    packaged = build.packaged_unit(unit)
    assert "DynamicUser" not in packaged
    assert "User=edgefleet-agent\nGroup=edgefleet-agent\n" in packaged
    assert "Documentation=man:edgefleet(1)\n" in packaged
    added = set(packaged.splitlines()) - set(unit.splitlines())
    assert added == {
        "User=edgefleet-agent",
        "Group=edgefleet-agent",
        "Documentation=man:edgefleet(1)",
    }
    assert set(unit.splitlines()) - set(packaged.splitlines()) == {"DynamicUser=yes"}


def test_a_unit_without_the_line_to_replace_is_refused(build: ModuleType) -> None:
    with pytest.raises(build.BuildError, match="no single line 'DynamicUser=yes'"):
        build.packaged_unit("[Service]\nExecStart=/usr/bin/edgefleet agent run\n")


# The first requirement download_wheels names when the index lacks aarch64 wheels.
NO_WHEEL = (
    r"wheels for arm64: the package index has no wheel for CPython 3\.11 on aarch64"
    r" \(manylinux, glibc <= 2\.36\) of: ([a-z_-]+)"
)
PIP_NO_WHEEL = """\
ERROR: Could not find a version that satisfies the requirement numpy>=1.26 (from edgefleet)
ERROR: No matching distribution found for numpy>=1.26
"""


def test_pips_missing_requirements_are_picked_out_of_its_output(build: ModuleType) -> None:
    assert build.missing_wheels(PIP_NO_WHEEL) == ["numpy>=1.26"]
    assert build.missing_wheels("ERROR: HTTP error 503 while getting https://...") == []


# --------------------------------------------------------------------- the built .deb


@pytest.mark.slow
def test_the_deb_is_amd64_needs_python_3_11_and_keeps_the_config(debs: Debs) -> None:
    assert debs.old.name == f"edgefleet-agent_{debs.old_version}_amd64.deb"
    assert field(debs.old, "Architecture") == "amd64"
    assert field(debs.old, "Version") == debs.old_version
    depends = field(debs.old, "Depends")
    assert "python3 (>= 3.11~), python3 (<< 3.12)" in depends
    conffiles = subprocess.run(
        ["dpkg-deb", "--info", str(debs.old), "conffiles"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert conffiles.split() == ["/etc/edgefleet/agent.toml"]


@pytest.mark.slow
def test_the_venv_runs_on_the_devices_python_with_only_amd64_binaries(
    build: ModuleType, debs: Debs
) -> None:
    root = debs.root
    venv = root / VENV
    assert (venv / "pyvenv.cfg").read_text().startswith("home = /usr/bin\n")
    python = venv / "bin" / "python3"
    assert python.is_symlink()
    on_device = os.path.normpath(f"/{VENV}/bin/{python.readlink()}")
    assert on_device == "/usr/bin/python3", "a relative link to the device's python3"
    assert (root / "usr/bin/edgefleet").readlink() == Path("../lib/edgefleet-agent/bin/edgefleet")
    machines = elf_machines(build, root)
    assert len(machines) > 10, "onnxruntime, numpy, cryptography... ship shared libraries"
    assert set(machines.values()) == {MACHINES["amd64"]}
    assert all(path.stat().st_mode & 0o111 == 0 for path in machines if ".so" in path.name)
    assert (root / SITE / "onnxruntime").is_dir()
    assert not list((root / SITE).glob("*/tests")), "bundled test suites are pruned"


@pytest.mark.slow
def test_every_module_has_hash_checked_bytecode(debs: Debs) -> None:
    """A system user cannot write __pycache__: every module must be compiled already."""
    site = debs.root / SITE
    sources = [p for p in site.rglob("*.py") if p.is_file()]
    assert len(sources) > 500
    for source in sources[::25]:
        (cached,) = (source.parent / "__pycache__").glob(f"{source.stem}.cpython-311*.pyc")
        flags = int.from_bytes(cached.read_bytes()[4:8], "little")
        assert flags == 0b11, f"{cached} is not checked-hash bytecode"  # PEP 552


@pytest.mark.slow
def test_a_binary_for_another_machine_is_refused(
    build: ModuleType, debs: Debs, tmp_path: Path
) -> None:
    """An amd64 library in an arm64 tree (a wheel of the wrong platform) stops the build."""
    library = next(p for p in (debs.root / SITE).rglob("*.so") if build.elf_machine(p) == 62)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / library.name).write_bytes(library.read_bytes())
    assert build.foreign_binaries(tmp_path, "amd64") == []
    assert build.foreign_binaries(tmp_path, "arm64") == [tmp_path / "lib" / library.name]


@pytest.mark.slow
def test_the_arm64_set_resolves_to_aarch64_wheels(build: ModuleType, debs: Debs) -> None:
    """The wheels an arm64 build installs exist for aarch64 on the configured index.

    Staging them (~40 s here) is the amd64 code path plus `foreign_binaries`, tested above.
    An index without them (an offline x86_64-only mirror) must fail the way the next
    test pins down; the test then skips, saying what is missing.
    """
    refused: str | None = None
    try:
        wheels = build.download_wheels(debs.wheel, "arm64", wheel_cache())
    except build.BuildError as e:
        refused = str(e)
    if refused is not None:
        assert re.match(NO_WHEEL, refused), refused
        pytest.skip(f"the arm64 package cannot be built from this index: {refused}")
    names = {path.name.split("-")[0].lower(): path.name for path in wheels.glob("*.whl")}
    for compiled in ("numpy", "onnxruntime", "cryptography", "pydantic_core", "psutil"):
        assert compiled in names, f"no {compiled} wheel for arm64 in {sorted(names)}"
        assert names[compiled].endswith("aarch64.whl"), names[compiled]
    assert all(name.endswith(("aarch64.whl", "-none-any.whl")) for name in names.values()), names


@pytest.mark.slow
def test_a_target_without_wheels_fails_naming_the_missing_requirement(
    build: ModuleType, debs: Debs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An index that has only x86_64 builds: the arm64 build says what it lacks."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheel_cache() / "amd64"))
    with pytest.raises(build.BuildError) as refused:
        build.download_wheels(debs.wheel, "arm64", tmp_path)
    message = str(refused.value)
    named = re.match(NO_WHEEL, message)
    assert named is not None, message
    assert named[1] in {"numpy", "onnxruntime", "cryptography", "pydantic-core", "psutil", "orjson"}
