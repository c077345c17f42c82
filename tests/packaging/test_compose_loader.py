"""tests/support/compose.py: the compose file's fleet commands as processes here.

The loader is what makes the two-replica test run the compose file's own commands and
environment; these tests prove it hands over exactly those, with only the URLs, the
mounted paths and the API address replaced, and that it refuses what would make a test
quietly run something else (a missing secret, an unmapped container path).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from edgefleet.fleet.store.engine import make_engine
from edgefleet.fleet.store.migrate import schema_status
from tests.support.compose import (
    BROKER_URL_ENV,
    DATABASE_URL_ENV,
    FLEET_SERVICE,
    ComposeError,
    ServiceRun,
    fleet_replica_run,
    interpolate,
    load_compose,
    migration_run,
    service_run,
)

VARIABLES = {
    "EDGEFLEET_KEY_PASSPHRASE": "a-passphrase-for-tests",
    "EDGEFLEET_ADMIN_TOKEN": "admin-token-for-tests-0123456789",
}


def _mounts(root: Path) -> dict[str, Path]:
    return {
        "/var/lib/edgefleet": root / "data",
        "/var/lib/edgefleet-keys": root / "keys",
        "/etc/edgefleet/broker": root / "broker",
    }


def _replica(root: Path, **overrides: Any) -> ServiceRun:
    values: dict[str, Any] = {
        "database_url": "postgresql://edgefleet@127.0.0.1:5432/t",
        "broker_url": "mqtts://127.0.0.1:18884",
        "mounts": _mounts(root),
        "variables": VARIABLES,
    } | overrides
    return fleet_replica_run(**values)


def test_a_replica_runs_the_compose_command_with_only_urls_paths_and_address_replaced(
    tmp_path: Path,
) -> None:
    compose_env = load_compose()["services"][FLEET_SERVICE]["environment"]
    run = _replica(tmp_path, api_port=18080)
    assert run.argv == ("edgefleet", "fleet", "serve")
    assert set(run.env) == set(compose_env)
    assert run.env[DATABASE_URL_ENV] == "postgresql://edgefleet@127.0.0.1:5432/t"
    assert run.env[BROKER_URL_ENV] == "mqtts://127.0.0.1:18884"
    assert run.env["EDGEFLEET_FLEET_API_HOST"] == "127.0.0.1"
    assert run.env["EDGEFLEET_FLEET_API_PORT"] == "18080"
    assert run.env["EDGEFLEET_FLEET_DATA_DIR"] == str(tmp_path / "data")
    # A mount's path is not taken for the start of a longer one (edgefleet-keys).
    assert run.env["EDGEFLEET_FLEET_KEYS_DIR"] == str(tmp_path / "keys")
    assert run.env["EDGEFLEET_FLEET_BROKER_KEY_FILE"] == str(tmp_path / "broker" / "fleet.key")
    assert run.env["EDGEFLEET_KEY_PASSPHRASE"] == VARIABLES["EDGEFLEET_KEY_PASSPHRASE"]
    replaced = {
        DATABASE_URL_ENV,
        BROKER_URL_ENV,
        "EDGEFLEET_FLEET_API_HOST",
        "EDGEFLEET_FLEET_API_PORT",
        "EDGEFLEET_KEY_PASSPHRASE",
        "EDGEFLEET_FLEET_ADMIN_TOKEN",
    }
    for key, value in compose_env.items():
        if key not in replaced:  # paths: rewritten under their mount, else verbatim
            assert run.env[key] == value or run.env[key].startswith(str(tmp_path)), key


def test_the_migration_needs_only_the_database_url() -> None:
    run = migration_run(database_url="sqlite:///x.db")
    assert run.argv == ("edgefleet", "fleet", "migrate", "upgrade")
    assert run.env == {DATABASE_URL_ENV: "sqlite:///x.db"}


def test_the_compose_migration_brings_a_fresh_database_to_head(database_url: str) -> None:
    run = migration_run(database_url=database_url)
    upgrade = subprocess.run(
        run.argv, env=run.process_env(), capture_output=True, text=True, timeout=120, check=False
    )
    assert upgrade.returncode == 0, upgrade.stderr
    engine = make_engine(database_url)
    try:
        assert schema_status(engine).is_current
    finally:
        engine.dispose()


def test_a_missing_secret_reference_is_named(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match="EDGEFLEET_ADMIN_TOKEN is required"):
        _replica(tmp_path, variables={"EDGEFLEET_KEY_PASSPHRASE": "p"})


def test_a_container_path_without_a_mount_is_refused(tmp_path: Path) -> None:
    mounts = _mounts(tmp_path)
    del mounts["/etc/edgefleet/broker"]
    with pytest.raises(ComposeError, match=r"uses the volume /etc/edgefleet/broker"):
        _replica(tmp_path, mounts=mounts)


def test_a_mount_the_service_does_not_have_is_refused(tmp_path: Path) -> None:
    mounts = _mounts(tmp_path) | {"/srv/elsewhere": tmp_path}
    with pytest.raises(ComposeError, match="mounts nothing at /srv/elsewhere"):
        _replica(tmp_path, mounts=mounts)


def test_an_unknown_service_or_a_broker_url_for_the_migration_is_refused() -> None:
    with pytest.raises(ComposeError, match="no service 'fleets'"):
        service_run("fleets", database_url="sqlite://")
    with pytest.raises(ComposeError, match="has no EDGEFLEET_FLEET_BROKER_URL"):
        service_run("migrate", database_url="sqlite://", broker_url="mqtt://127.0.0.1:1")


@pytest.mark.parametrize(
    ("value", "variables", "expected"),
    [
        ("${A}", {"A": "x"}, "x"),
        ("${A}", {}, ""),
        ("$A/b", {"A": "x"}, "x/b"),
        ("${A:-d}", {"A": ""}, "d"),
        ("${A-d}", {"A": ""}, ""),
        ("${A:-d}", {"A": "x"}, "x"),
        ("${A:?need it}", {"A": "x"}, "x"),
        ("a$$b", {}, "a$b"),
        ("u:${P:?p}@h", {"P": "s"}, "u:s@h"),
    ],
)
def test_interpolation_follows_compose(
    value: str, variables: dict[str, str], expected: str
) -> None:
    assert interpolate(value, variables) == expected


@pytest.mark.parametrize(
    ("value", "variables", "message"),
    [
        ("${A:?need it}", {}, "A is required"),
        ("${A:?need it}", {"A": ""}, "A is required"),
        ("${A?need it}", {}, "A is required"),
        ("${A:+x}", {"A": "y"}, "starts no reference"),
        ("cost $5", {}, "starts no reference"),
    ],
)
def test_interpolation_refuses_what_it_cannot_resolve(
    value: str, variables: dict[str, str], message: str
) -> None:
    with pytest.raises(ComposeError, match=message):
        interpolate(value, variables)


def test_the_process_environment_drops_the_hosts_own_fleet_variables(tmp_path: Path) -> None:
    run = _replica(tmp_path)
    env = run.process_env(
        {"PATH": "/bin", "EDGEFLEET_FLEET_LAB_MODE": "true", "EDGEFLEET_KEY_PASSPHRASE": "x"}
    )
    assert env["PATH"] == "/bin"
    assert "EDGEFLEET_FLEET_LAB_MODE" not in env
    assert env["EDGEFLEET_KEY_PASSPHRASE"] == VARIABLES["EDGEFLEET_KEY_PASSPHRASE"]


def test_a_file_that_is_not_a_compose_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "compose.yaml"
    path.write_text("- just a list\n")
    with pytest.raises(ComposeError, match="no services mapping"):
        load_compose(path)
