"""The update section of the config and the factory model a fresh device installs."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.agent.config import AgentConfig, ConfigError, load_config
from edgefleet.agent.store import ModelStore
from edgefleet.agent.update.wiring import FACTORY_VERSION, install_factory_model
from edgefleet.simulators.models import TrainedModel
from tests.e2e.updates.conftest import Packages


def test_enabled_updates_without_a_repository_or_trust_dir_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('device_id = "d1"\n[update]\nenabled = true\n')
    with pytest.raises(ConfigError, match="repository_url, trust_dir is not set"):
        load_config(path, {})


def test_repository_url_must_be_http(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected an http:// or https:// URL"):
        load_config(
            None,
            {
                "EDGEFLEET_AGENT_DEVICE_ID": "d1",
                "EDGEFLEET_AGENT_UPDATE__REPOSITORY_URL": "ftp://repo",
            },
        )


def test_trust_dir_is_relative_to_the_config_file_and_the_token_is_masked(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "agent.toml"
    path.parent.mkdir()
    path.write_text(
        'device_id = "d1"\n[update]\nenabled = true\nrepository_url = "https://repo/"\n'
        'trust_dir = "trust"\ndevice_token = "s3cret"\n[update.policy]\nmax_download_attempts = 9\n'
    )
    config = load_config(path, {"EDGEFLEET_AGENT_UPDATE__MAX_DOWNLOAD_BYTES": "1000"})
    assert config.update.trust_dir == tmp_path / "etc" / "trust"
    assert config.update.max_download_bytes == 1000
    assert config.update.policy.max_download_attempts == 9
    assert "s3cret" not in config.model_dump_json()


def test_factory_package_is_installed_under_its_own_hash(
    tmp_path: Path, packages: Packages
) -> None:
    config = AgentConfig.model_validate(
        {"device_id": "d1", "model": {"path": str(packages.factory.path)}}
    )
    store = ModelStore(tmp_path / "store")
    assert install_factory_model(store, config) == packages.factory.sha256
    assert store.active() == packages.factory.sha256
    assert store.verify(packages.factory.sha256).version == "1.0.0"


def test_bare_factory_model_gets_a_manifest_and_a_semver_version(
    tmp_path: Path, wine_model: TrainedModel
) -> None:
    config = AgentConfig.model_validate(
        {"device_id": "d1", "model": {"path": str(wine_model.path), "name": "wine", "version": "0"}}
    )
    store = ModelStore(tmp_path / "store")
    sha = install_factory_model(store, config)
    assert sha is not None
    manifest = store.verify(sha)
    assert (manifest.name, manifest.version, manifest.runtime) == ("wine", FACTORY_VERSION, "onnx")
    assert [s.name for s in manifest.inputs] == ["input"]


def test_unloadable_factory_model_leaves_the_store_empty(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    config = AgentConfig.model_validate({"device_id": "d1", "model": {"path": str(broken)}})
    store = ModelStore(tmp_path / "store")
    assert install_factory_model(store, config) is None
    assert store.active() is None
    assert store.models() == []
