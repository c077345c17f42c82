"""The compose file's fleet commands, for tests that run them on this machine.

No container engine runs where the tests do, so the two-replica test runs the very
``command`` and ``environment`` that ``packaging/container/compose.yaml`` gives its
``fleet`` replicas (and the ``migrate`` step first) as plain processes, against a real
PostgreSQL and Mosquitto. What differs on a test machine is only where things are:

- the database and broker URLs replace ``EDGEFLEET_FLEET_DATABASE_URL`` and
  ``EDGEFLEET_FLEET_BROKER_URL`` whole (so the compose file's password reference is
  not needed);
- ``mounts`` maps each container path the service's ``volumes`` mount (the data dir,
  the keys dir, the broker dir) to a host directory, and every argument or value under
  one is rewritten; a container path used but not mapped is an error, not a silent
  path that only exists in a container;
- ``api_host``/``api_port``, since two replicas on one host cannot share a port;
- ``variables`` stands for the shell that compose interpolates ``${...}`` from (the
  passphrase, the admin token): a required one that is missing is an error naming it.

Everything else is taken as it is, so a setting added to the compose file reaches the
test without an edit here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "packaging" / "container" / "compose.yaml"
FLEET_SERVICE = "fleet"
MIGRATION_SERVICE = "migrate"
DATABASE_URL_ENV = "EDGEFLEET_FLEET_DATABASE_URL"
BROKER_URL_ENV = "EDGEFLEET_FLEET_BROKER_URL"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, $NAME, $$.
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<invalid>))"
)


class ComposeError(ValueError):
    """The compose file, or what a test asked of it, does not add up (names what)."""


@dataclass(frozen=True)
class ServiceRun:
    """One compose service as a process: its argv and the environment compose gives it."""

    service: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    def process_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) without any ``EDGEFLEET_*``
        variable of its own, plus the service's: what the container would see of them."""
        source = os.environ if base is None else base
        kept = {k: v for k, v in source.items() if not k.startswith("EDGEFLEET_")}
        return kept | self.env


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The compose file as data, YAML anchors and merge keys resolved, not interpolated.

    Raises `ComposeError` for a file that is not a YAML mapping with ``services``.
    """
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ComposeError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise ComposeError(f"{path} is not a compose file: no services mapping")
    return data


def interpolate(value: str, variables: Mapping[str, str], *, where: str = "value") -> str:
    """``value`` with compose's ``${...}`` references replaced from ``variables``.

    Raises `ComposeError` for a required variable (``:?``/``?``) that is missing (empty
    too for ``:?``) and for a ``$`` that starts no reference compose knows.
    """

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        if match.group("invalid") is not None:
            raise ComposeError(
                f"{where}: a '$' in {value!r} starts no reference this loader reads"
                " (${NAME}, ${NAME:-default}, ${NAME:?error}; $$ for a dollar)"
            )
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        current = variables.get(name)
        unset = current is None or (current == "" and op is not None and op.startswith(":"))
        if op in (":?", "?") and unset:
            raise ComposeError(f"{where}: {name} is required ({arg or 'not set'})")
        if op in (":-", "-") and unset:
            return arg
        return current or ""

    return _VARIABLE.sub(replace, value)


def _environment(raw: Any, service: str) -> dict[str, str]:
    if raw is None:
        return {}
    if isinstance(raw, list):  # ["NAME=value", ...]
        pairs = (item.split("=", 1) for item in raw)
        return {name: value for name, value in pairs}
    if isinstance(raw, dict):
        return {str(k): "" if v is None else str(v) for k, v in raw.items()}
    raise ComposeError(f"service {service}: environment is neither a list nor a mapping")


def _volume_targets(raw: Any, service: str) -> list[str]:
    targets = []
    for volume in raw or []:
        if isinstance(volume, str):
            # SOURCE:TARGET[:MODE]; a ${...} reference in the source may hold colons.
            parts = re.sub(r"\$\{[^}]*\}", "source", volume).split(":")
            if len(parts) < 2:
                raise ComposeError(f"service {service}: volume {volume!r} has no target")
            targets.append(parts[1])
        elif isinstance(volume, dict) and "target" in volume:
            targets.append(str(volume["target"]))
        else:
            raise ComposeError(f"service {service}: cannot read volume {volume!r}")
    return targets


def service_run(
    service: str,
    *,
    database_url: str | None = None,
    broker_url: str | None = None,
    mounts: Mapping[str, Path] | None = None,
    variables: Mapping[str, str] | None = None,
    api_host: str | None = None,
    api_port: int | None = None,
    compose: Mapping[str, Any] | None = None,
) -> ServiceRun:
    """The argv and environment of ``service`` with this machine's URLs and paths.

    Raises `ComposeError` for an unknown service, one without a ``command`` list, a
    database or broker URL for a service without one, a mount that is not one of the
    service's volume targets, a container path the service uses that ``mounts`` does not
    map, and what `interpolate` raises.
    """
    data = load_compose() if compose is None else compose
    spec = data["services"].get(service)
    if not isinstance(spec, dict):
        raise ComposeError(f"compose.yaml has no service {service!r}")
    command = spec.get("command")
    if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
        raise ComposeError(f"service {service}: command must be an argv list of strings")

    env = _environment(spec.get("environment"), service)
    overrides: dict[str, str] = {}
    if database_url is not None:
        overrides[DATABASE_URL_ENV] = database_url
    if broker_url is not None:
        if BROKER_URL_ENV not in env:
            raise ComposeError(f"service {service} has no {BROKER_URL_ENV} to replace")
        overrides[BROKER_URL_ENV] = broker_url
    if api_host is not None:
        overrides["EDGEFLEET_FLEET_API_HOST"] = api_host
    if api_port is not None:
        overrides["EDGEFLEET_FLEET_API_PORT"] = str(api_port)
    for name in overrides:
        if name not in env:
            raise ComposeError(f"service {service} does not set {name}")
    env |= overrides
    given = dict(variables or {})
    env = {
        k: v if k in overrides else interpolate(v, given, where=f"service {service}: {k}")
        for k, v in env.items()
    }
    argv = [interpolate(a, given, where=f"service {service}: command") for a in command]

    targets = _volume_targets(spec.get("volumes"), service)
    mapping = dict(mounts or {})
    for target in mapping:
        if target not in targets:
            raise ComposeError(
                f"service {service} mounts nothing at {target} (its volumes: {targets})"
            )

    def rewrite(value: str, what: str) -> str:
        # A container path anywhere in the value: a whole argument, or inside a script
        # (`sh -c "mosquitto -c /etc/..."`); only where it starts a path of its own.
        for target in targets:
            path = re.escape(target.rstrip("/"))
            pattern = re.compile(r"(?<![\w./-])" + path + r"(?![\w.-])")
            if not pattern.search(value):
                continue
            if target not in mapping:
                raise ComposeError(
                    f"service {service}: {what} {value!r} uses the volume {target}:"
                    " pass mounts for it"
                )
            host = str(mapping[target]).rstrip("/")
            value = pattern.sub(lambda _, host=host: host, value)
        return value

    return ServiceRun(
        service=service,
        argv=tuple(rewrite(a, "argument") for a in argv),
        env={k: v if k in overrides else rewrite(v, k) for k, v in env.items()},
    )


def fleet_replica_run(
    *,
    database_url: str,
    broker_url: str,
    mounts: Mapping[str, Path],
    variables: Mapping[str, str],
    api_host: str | None = "127.0.0.1",
    api_port: int | None = None,
) -> ServiceRun:
    """One fleet replica as compose starts it (``fleet serve``); see `service_run`.

    ``api_host`` defaults to 127.0.0.1 (a test listens on loopback only); give each
    replica its own ``api_port`` (0 picks a free one).
    """
    return service_run(
        FLEET_SERVICE,
        database_url=database_url,
        broker_url=broker_url,
        mounts=mounts,
        variables=variables,
        api_host=api_host,
        api_port=api_port,
    )


def migration_run(*, database_url: str, variables: Mapping[str, str] | None = None) -> ServiceRun:
    """The migration step as compose runs it before the replicas; see `service_run`."""
    return service_run(MIGRATION_SERVICE, database_url=database_url, variables=variables)
