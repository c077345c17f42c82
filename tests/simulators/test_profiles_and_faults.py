"""Device profiles (CLI strings, expansion) and model faults through the real runtime."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.shared.manifest import MANIFEST_FILE, ModelManifest
from edgefleet.shared.package.golden import check_golden
from edgefleet.shared.package.read import extract_package
from edgefleet.shared.runtime import RuntimeLoadError
from edgefleet.simulators.faults import Fault, FaultKind, FaultyLoader
from edgefleet.simulators.fleet import DeviceProfile, expand_profiles
from edgefleet.simulators.profiles import ProfileError, parse_profile


def test_profile_string_sets_hardware_tags_count_and_faults() -> None:
    p = parse_profile(
        "hardware=rpi3,tags=a;b,count=5,fault=golden_fail@1.1.0,fault=flaky,period_s=2"
    )
    assert (p.hardware, p.tags, p.count) == ("rpi3", ("a", "b"), 5)
    assert [f.kind for f in p.faults] == [FaultKind.GOLDEN_FAIL, FaultKind.FLAKY]
    assert p.faults[0].versions == ("1.1.0",)
    assert p.faults[1].period_s == 2.0


@pytest.mark.parametrize("bad", ["count=x", "fault=melt", "colour=red", "hardware", "count=0"])
def test_bad_profile_strings_are_refused_by_name(bad: str) -> None:
    with pytest.raises(ProfileError, match="profile"):
        parse_profile(bad)


def test_counted_profiles_come_first_and_the_rest_share_the_remainder() -> None:
    a, b = DeviceProfile(hardware="a", count=2), DeviceProfile(hardware="b")
    assert [p.hardware for p in expand_profiles([a, b], 4)] == ["a", "a", "b", "b"]
    with pytest.raises(ValueError, match="more than 1"):
        expand_profiles([a], 1)


@pytest.fixture
def extracted(sim_packages: dict[str, Path], tmp_path: Path) -> tuple[Path, ModelManifest]:
    out = tmp_path / "m"
    extract_package(sim_packages["1.1.0"], out)
    return out, ModelManifest.model_validate_json((out / MANIFEST_FILE).read_bytes())


def test_golden_fail_fault_makes_the_real_golden_check_fail(extracted) -> None:
    model_dir, manifest = extracted
    assert manifest.golden is not None
    golden = model_dir / manifest.golden.file
    healthy = FaultyLoader((), factory_version="1.0.0")(model_dir / manifest.model_file)
    assert check_golden(healthy, golden, manifest.golden.tolerance).passed
    broken = FaultyLoader((Fault(FaultKind.GOLDEN_FAIL),), factory_version="1.0.0")
    assert not check_golden(
        broken(model_dir / manifest.model_file), golden, manifest.golden.tolerance
    ).passed
    spared = FaultyLoader((Fault(FaultKind.GOLDEN_FAIL),), factory_version="1.1.0")
    assert check_golden(
        spared(model_dir / manifest.model_file), golden, manifest.golden.tolerance
    ).passed


def test_crash_fault_raises_runtime_load_error(extracted) -> None:
    model_dir, manifest = extracted
    loader = FaultyLoader((Fault(FaultKind.CRASH, versions=("1.1.0",)),), factory_version="1.0.0")
    with pytest.raises(RuntimeLoadError, match="injected crash"):
        loader(model_dir / manifest.model_file)
