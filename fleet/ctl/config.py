"""Where the fleet is and which token to use, like ``kubectl``'s kubeconfig.

Each setting comes from the first of: the command line (``--url``, ``--profile``), the
environment (``EDGEFLEET_URL``, ``EDGEFLEET_TOKEN``, ``EDGEFLEET_CA_FILE``,
``EDGEFLEET_PROFILE``), then the config file: ``$EDGEFLEET_CONFIG``, else
``~/.config/edgefleet/ctl.toml``. The file holds a default profile at its top level and
named ones under ``[profiles.NAME]``; ``profile = "NAME"`` at the top picks the default::

    profile = "lab"
    [profiles.lab]
    url = "http://127.0.0.1:8080"
    token = "ef_..."
    [profiles.prod]
    url = "https://fleet.example.com"
    token = "ef_..."
    ca_file = "/etc/edgefleet/fleet-ca.pem"

There is no ``--token`` flag: a token on the command line is visible to every user of
the machine (``ps``) and ends up in shell history. `resolve` is pure; `load` reads the
file. Both raise `edgefleet.fleet.ctl.errors.UsageError` naming the file and the key.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefleet.fleet.ctl.errors import UsageError

DEFAULT_PATH = Path("~/.config/edgefleet/ctl.toml")
URL_PATTERN = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"
MAX_FILE_BYTES = 1024 * 1024


class Profile(BaseModel):
    """One fleet as the file (or the environment) describes it; all optional here."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, max_length=2000)
    token: str | None = Field(default=None, min_length=1, max_length=4096)
    ca_file: Path | None = None
    timeout_s: float | None = Field(default=None, gt=0, le=3600)


class ConfigFile(BaseModel):
    """The config file: a default profile at the top, named ones under ``profiles``."""

    model_config = ConfigDict(extra="forbid")

    profile: str | None = Field(default=None, max_length=100)
    url: str | None = Field(default=None, max_length=2000)
    token: str | None = Field(default=None, min_length=1, max_length=4096)
    ca_file: Path | None = None
    timeout_s: float | None = Field(default=None, gt=0, le=3600)
    profiles: dict[str, Profile] = Field(default_factory=dict, max_length=1000)


class CtlConfig(BaseModel):
    """What a command runs with: a fleet URL, a token (or none) and TLS/timeout settings."""

    model_config = ConfigDict(frozen=True)

    url: str = Field(pattern=URL_PATTERN, max_length=2000)
    token: str | None = Field(default=None, min_length=1, max_length=4096)
    ca_file: Path | None = None
    timeout_s: float = Field(default=30.0, gt=0, le=3600)
    source: str = Field(default="", max_length=4200, description="where the URL came from")


def config_path(env: Mapping[str, str], flag: Path | None = None) -> Path:
    """The config file's path: ``flag``, else ``$EDGEFLEET_CONFIG``, else the default."""
    if flag is not None:
        return flag
    return Path(env.get("EDGEFLEET_CONFIG") or DEFAULT_PATH).expanduser()


def parse_file(text: str, path: Path) -> ConfigFile:
    """The config file's content; raises `UsageError` naming ``path`` and the problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config file {path}: not valid TOML: {e}") from e
    try:
        return ConfigFile.model_validate(data)
    except ValidationError as e:
        raise UsageError(f"config file {path}: {_first_problem(e)}") from e


def resolve(
    env: Mapping[str, str],
    file: ConfigFile | None,
    *,
    path: Path,
    url: str | None = None,
    profile: str | None = None,
    timeout_s: float | None = None,
) -> CtlConfig:
    """The settings to run with, from flags, then ``env``, then ``file`` (read from
    ``path``). Raises `UsageError` for an unknown profile, no URL, or a bad value."""
    chosen = profile or env.get("EDGEFLEET_PROFILE") or (file.profile if file else None)
    layer = _profile(file, chosen, path)
    where = f"profile {chosen!r} of {path}" if chosen else str(path)
    sources: list[tuple[str | None, str]] = [
        (url, "--url"),
        (env.get("EDGEFLEET_URL"), "EDGEFLEET_URL"),
        (layer.url, where),
    ]
    found_url, source = next(((v, s) for v, s in sources if v), (None, ""))
    if not found_url:
        raise UsageError(
            'no fleet URL: pass --url, set EDGEFLEET_URL, or put url = "http://..."'
            f" in {path}" + (f" under [profiles.{chosen}]" if chosen else "")
        )
    if not re.match(URL_PATTERN, found_url):
        raise UsageError(
            f"fleet URL {found_url!r} (from {source}) is not http(s)://HOST[:PORT][/PATH]"
        )
    values: dict[str, Any] = {
        "url": found_url.rstrip("/"),
        "token": env.get("EDGEFLEET_TOKEN") or layer.token,
        "ca_file": env.get("EDGEFLEET_CA_FILE") or layer.ca_file,
        "timeout_s": timeout_s or layer.timeout_s or 30.0,
        "source": source,
    }
    try:
        return CtlConfig.model_validate(values)
    except ValidationError as e:
        raise UsageError(f"fleet settings ({source}): {_first_problem(e)}") from e


def load(
    env: Mapping[str, str] | None = None,
    *,
    config_file: Path | None = None,
    url: str | None = None,
    profile: str | None = None,
    timeout_s: float | None = None,
) -> CtlConfig:
    """Read the config file (if there is one) and `resolve`. A missing default file is
    no error; a missing file named by ``--config`` or ``$EDGEFLEET_CONFIG`` is. Warns
    on stderr when a file holding a token can be read by others. Raises `UsageError`."""
    env = os.environ if env is None else env
    path = config_path(env, config_file)
    named = config_file is not None or bool(env.get("EDGEFLEET_CONFIG"))
    file: ConfigFile | None = None
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
            mode = os.fstat(handle.fileno()).st_mode
    except FileNotFoundError as e:
        if named:
            raise UsageError(f"config file {path} does not exist") from e
    except OSError as e:
        raise UsageError(f"config file {path}: {e.strerror or e}") from e
    else:
        if len(raw) > MAX_FILE_BYTES:
            raise UsageError(f"config file {path} is larger than {MAX_FILE_BYTES} bytes")
        try:
            text = raw.decode()
        except UnicodeDecodeError as e:
            raise UsageError(f"config file {path} is not UTF-8") from e
        file = parse_file(text, path)
        if _holds_token(file) and mode & (stat.S_IRWXG | stat.S_IRWXO):
            print(
                f"edgefleet ctl: warning: {path} holds a token and others may read it"
                f" (chmod 600 {path})",
                file=sys.stderr,
            )
    return resolve(env, file, path=path, url=url, profile=profile, timeout_s=timeout_s)


def _profile(file: ConfigFile | None, name: str | None, path: Path) -> Profile:
    if file is None:
        if name:
            raise UsageError(f"profile {name!r}: there is no config file {path}")
        return Profile()
    if name is None:
        return Profile(
            url=file.url, token=file.token, ca_file=file.ca_file, timeout_s=file.timeout_s
        )
    if name not in file.profiles:
        known = ", ".join(sorted(file.profiles)) or "none"
        raise UsageError(f"config file {path} has no profile {name!r} (profiles: {known})")
    return file.profiles[name]


def _holds_token(file: ConfigFile) -> bool:
    return file.token is not None or any(p.token for p in file.profiles.values())


def _first_problem(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "value"
    return f"{where}: {first['msg']}"
