from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from edgefleet.agent.config import (
    AgentConfig,
    ConfigError,
    DriftConfig,
    env_overrides,
    load_config,
    redacted,
)
from edgefleet.agent.update.machine import UpdatePolicy
from tests.support.agent import REPO

EXAMPLE = REPO / "packaging" / "agent" / "agent.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_shipped_example_config_loads() -> None:
    config = load_config(EXAMPLE, {})
    assert config.device_id == "pi-greenhouse-01"
    assert config.broker.tls
    assert config.broker.port == 8883
    assert config.api.port == 8470
    assert config.api.host == "127.0.0.1"
    assert config.outbox.max_messages == 100_000


def test_shipped_example_names_every_setting() -> None:
    """The example is the operator's reference: it had no [drift] or [update] section."""
    named: dict[str, set[str]] = {"": set()}  # section -> settings set or shown commented
    section = ""
    for line in EXAMPLE.read_text().splitlines():
        if header := re.fullmatch(r"\[([a-z_.]+)\]", line.strip()):
            section = header.group(1)
            named.setdefault(section, set())
        elif setting := re.match(r"#?\s*([a-z_]+)\s*=", line):
            named[section].add(setting.group(1))

    def missing(model: type[BaseModel], section: str) -> list[str]:
        gone = []
        for name, field in model.model_fields.items():
            inner = field.annotation
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                inner_section = f"{section}.{name}".lstrip(".")
                gone += [] if inner_section in named else [f"[{inner_section}]"]
                gone += missing(inner, inner_section)
            elif name not in named.get(section, set()):
                gone.append(f"{section}.{name}".lstrip("."))
        return gone

    assert missing(AgentConfig, "") == []
    config = load_config(EXAMPLE, {})
    assert config.drift == DriftConfig()
    assert config.update.policy == UpdatePolicy()


def test_defaults_fill_everything_but_the_device_id(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'device_id = "d-1"\n'), {})
    assert config.telemetry_interval_s == 10
    assert config.api.port == 8470
    assert config.api.enabled
    assert config.broker.port == 1883
    assert not config.broker.tls
    assert config.model.path is None


def test_environment_overrides_nested_fields_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'device_id = "d-1"\n[broker]\nurl = "mqtt://a:1883"\n')
    env = {
        "EDGEFLEET_AGENT_BROKER__URL": "mqtts://b.example:9999",
        "EDGEFLEET_AGENT_BROKER__KEEPALIVE_S": "45",
        "EDGEFLEET_AGENT_MODEL__RUNTIME__INTRA_OP_THREADS": "2",
        "EDGEFLEET_AGENT_TAGS": "north, roof",
        "EDGEFLEET_AGENT_API__ENABLED": "false",
        "UNRELATED": "x",
    }
    config = load_config(path, env)
    assert config.broker.url == "mqtts://b.example:9999"
    assert config.broker.port == 9999
    assert config.broker.tls
    assert config.broker.keepalive_s == 45
    assert config.model.runtime.intra_op_threads == 2
    assert config.tags == ["north", "roof"]
    assert config.api.enabled is False


def test_config_from_environment_alone() -> None:
    config = load_config(
        None, {"EDGEFLEET_AGENT_DEVICE_ID": "env-only", "EDGEFLEET_AGENT_TAGS": '["a","b"]'}
    )
    assert config.device_id == "env-only"
    assert config.tags == ["a", "b"]


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'device_id = "d-1"\ndata_dir = "state"\n[model]\npath = "m/wine.onnx"\n'
        '[broker]\nurl = "mqtts://h"\nca_file = "ca.pem"\n',
    )
    config = load_config(path, {})
    assert config.data_dir == tmp_path / "state"
    assert config.model.path == tmp_path / "m" / "wine.onnx"
    assert config.broker.ca_file == tmp_path / "ca.pem"


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ('device_id = "bad id!"\n', {}, "device_id"),
        ('device_id = "d"\n[broker]\nurl = "http://x"\n', {}, "broker.url"),
        ('device_id = "d"\n[broker]\nprotocol = "4"\n', {}, "broker.protocol"),
        ('device_id = "d"\n[api]\nport = 70000\n', {}, "api.port"),
        ('device_id = "d"\nunknown_knob = 1\n', {}, "unknown_knob"),
        (
            'device_id = "d"\n',
            {"EDGEFLEET_AGENT_TELEMETRY_INTERVAL_S": "soon"},
            "telemetry_interval_s",
        ),
        ("", {}, "device_id"),
    ],
)
def test_bad_config_names_the_file_and_the_field(
    tmp_path: Path, text: str, env: dict[str, str], expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env)
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_bad_toml_and_missing_file_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "device_id = \n"), {})
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"{missing}: config file not found"):
        load_config(missing, {})


def test_env_variable_that_is_both_value_and_section_is_rejected() -> None:
    with pytest.raises(ConfigError, match="both as a value and as a section"):
        env_overrides({"EDGEFLEET_AGENT_BROKER": "x", "EDGEFLEET_AGENT_BROKER__URL": "y"})


def test_config_is_frozen_and_the_password_is_masked_when_printed(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, 'device_id = "d"\n[broker]\nusername = "u"\npassword = "hunter2"\n'), {}
    )
    with pytest.raises(ValueError, match="frozen"):
        config.device_id = "other"  # type: ignore[misc]
    assert config.broker.password is not None
    assert config.broker.password.get_secret_value() == "hunter2"
    assert "hunter2" not in str(redacted(config))
    assert isinstance(config, AgentConfig)


@pytest.mark.parametrize(
    ("tags", "problem"),
    [
        ([f"t{i}" for i in range(65)], "at most 64 items"),
        (["x" * 101], "at most 100 characters"),
        ([""], "at least 1 character"),
    ],
)
def test_tags_the_fleet_would_dead_letter_are_refused_at_start(
    tmp_path: Path, tags: list[str], problem: str
) -> None:
    path = write(tmp_path, f'device_id = "d-1"\ntags = {tags!r}\n'.replace("'", '"'))
    with pytest.raises(ConfigError, match=problem):
        load_config(path, {})
