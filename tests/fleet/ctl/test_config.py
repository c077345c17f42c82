"""Where ``edgefleet ctl`` finds the fleet and its token: flags, environment, the
config file and its profiles, and clear errors for every way that goes wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgefleet.fleet.ctl.config import ConfigFile, config_path, load, parse_file, resolve
from edgefleet.fleet.ctl.errors import ExitCode, UsageError

PATH = Path("/home/op/.config/edgefleet/ctl.toml")

FILE = """
profile = "lab"
url = "http://top.example:8080"
token = "top-token"

[profiles.lab]
url = "http://127.0.0.1:8080/"
token = "lab-token"

[profiles.prod]
url = "https://fleet.example.com"
token = "prod-token"
ca_file = "/etc/edgefleet/ca.pem"
timeout_s = 5
"""


def _file(text: str = FILE) -> ConfigFile:
    return parse_file(text, PATH)


@pytest.mark.parametrize(
    ("env", "flags", "url", "token"),
    [
        # The file's own default profile.
        ({}, {}, "http://127.0.0.1:8080", "lab-token"),
        # A profile by flag, then by environment.
        ({}, {"profile": "prod"}, "https://fleet.example.com", "prod-token"),
        ({"EDGEFLEET_PROFILE": "prod"}, {}, "https://fleet.example.com", "prod-token"),
        ({"EDGEFLEET_PROFILE": "prod"}, {"profile": "lab"}, "http://127.0.0.1:8080", "lab-token"),
        # The environment wins over the file, setting by setting.
        ({"EDGEFLEET_TOKEN": "env-token"}, {}, "http://127.0.0.1:8080", "env-token"),
        ({"EDGEFLEET_URL": "http://env:1"}, {}, "http://env:1", "lab-token"),
        # And --url over the environment.
        ({"EDGEFLEET_URL": "http://env:1"}, {"url": "http://flag:2"}, "http://flag:2", "lab-token"),
    ],
)
def test_each_setting_comes_from_flag_then_env_then_file(
    env: dict[str, str], flags: dict[str, Any], url: str, token: str
) -> None:
    config = resolve(env, _file(), path=PATH, **flags)
    assert (config.url, config.token) == (url, token)


def test_without_profiles_the_top_level_is_the_default() -> None:
    config = resolve({}, _file('url = "http://a:1"\ntoken = "t"\ntimeout_s = 2.5'), path=PATH)
    assert (config.url, config.token, config.timeout_s) == ("http://a:1", "t", 2.5)


def test_a_profile_carries_its_ca_file_and_timeout() -> None:
    config = resolve({}, _file(), path=PATH, profile="prod")
    assert config.ca_file == Path("/etc/edgefleet/ca.pem")
    assert config.timeout_s == 5
    assert resolve({}, _file(), path=PATH, profile="prod", timeout_s=9).timeout_s == 9


def test_environment_alone_is_enough() -> None:
    env = {"EDGEFLEET_URL": "http://fleet:8080", "EDGEFLEET_TOKEN": "t"}
    config = resolve(env, None, path=PATH)
    assert (config.url, config.token, config.timeout_s) == ("http://fleet:8080", "t", 30.0)
    assert config.source == "EDGEFLEET_URL"


@pytest.mark.parametrize(
    ("env", "file", "flags", "message"),
    [
        ({}, None, {}, "no fleet URL: pass --url, set EDGEFLEET_URL"),
        ({}, 'token = "t"', {}, "no fleet URL: pass --url, set EDGEFLEET_URL, or put url"),
        ({}, FILE, {"profile": "staging"}, "has no profile 'staging' (profiles: lab, prod)"),
        ({}, None, {"profile": "lab"}, f"profile 'lab': there is no config file {PATH}"),
        ({"EDGEFLEET_URL": "ftp://fleet"}, None, {}, "'ftp://fleet' (from EDGEFLEET_URL) is not"),
        ({}, None, {"url": "fleet.example.com"}, "'fleet.example.com' (from --url) is not"),
        ({}, 'url = "http://a b"', {}, f"'http://a b' (from {PATH}) is not"),
    ],
)
def test_missing_or_bad_settings_say_what_and_where(
    env: dict[str, str], file: str | None, flags: dict[str, Any], message: str
) -> None:
    with pytest.raises(UsageError) as raised:
        resolve(env, _file(file) if file else None, path=PATH, **flags)
    assert message in str(raised.value)
    assert raised.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("url = ", "not valid TOML"),
        ('colour = "red"', "colour: Extra inputs are not permitted"),
        ("[profiles.lab]\nurl = 3", "profiles.lab.url: Input should be a valid string"),
        ("timeout_s = -1", "timeout_s: Input should be greater than 0"),
        ('token = ""', "token: String should have at least 1 character"),
    ],
)
def test_a_bad_config_file_names_the_file_and_the_key(text: str, message: str) -> None:
    with pytest.raises(UsageError) as raised:
        parse_file(text, PATH)
    assert str(raised.value).startswith(f"config file {PATH}: ")
    assert message in str(raised.value)


def test_config_path_is_flag_then_env_then_home(tmp_path: Path) -> None:
    assert config_path({}, tmp_path / "x.toml") == tmp_path / "x.toml"
    assert config_path({"EDGEFLEET_CONFIG": str(tmp_path / "y.toml")}) == tmp_path / "y.toml"
    assert config_path({}).name == "ctl.toml"


def test_load_reads_the_file_and_a_missing_default_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/edgefleet/ctl.toml
    config = load({"EDGEFLEET_URL": "http://fleet:1"})
    assert config.token is None

    path = tmp_path / "ctl.toml"
    path.write_text(FILE)
    path.chmod(0o600)
    assert load({"EDGEFLEET_CONFIG": str(path)}).token == "lab-token"
    assert capsys.readouterr().err == ""


def test_load_warns_when_others_can_read_a_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ctl.toml"
    path.write_text(FILE)
    path.chmod(0o644)
    load({}, config_file=path)
    assert f"{path} holds a token and others may read it (chmod 600" in capsys.readouterr().err


@pytest.mark.parametrize("named_by", ["flag", "env"])
def test_a_named_config_file_that_is_missing_is_an_error(tmp_path: Path, named_by: str) -> None:
    missing = tmp_path / "nope.toml"
    env, flag = ({}, missing) if named_by == "flag" else ({"EDGEFLEET_CONFIG": str(missing)}, None)
    with pytest.raises(UsageError, match=f"config file {missing} does not exist"):
        load(env, config_file=flag)


def test_a_config_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "ctl.toml"
    path.write_bytes(b"url = '\xff'")
    with pytest.raises(UsageError, match="is not UTF-8"):
        load({}, config_file=path)
