"""packaging/container: the image's Containerfile and the compose file.

No container engine runs on the machines these tests run on, so nothing is built or
started: hadolint lints the Containerfile, the compose file is checked against the
compose-spec JSON schema (vendored by check-jsonschema) and for the properties the
README promises (two replicas after a completed migration, read-only, non-root,
health-checked, secrets by reference), and every command and variable in it is checked
against the real CLI and settings.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from edgefleet.fleet.settings import FleetSettings
from edgefleet.shared.cli import build_parser
from edgefleet.simulators.mosquitto import MOSQUITTO, wait_for_port
from tests.packaging.manifests import (
    CONTAINER_DIR,
    CONTAINERFILE,
    FLEET_UID,
    run_tool,
    tool,
    unknown_env_names,
)
from tests.support.compose import (
    COMPOSE_FILE,
    FLEET_SERVICE,
    MIGRATION_SERVICE,
    fleet_replica_run,
    interpolate,
    load_compose,
    service_run,
)
from tests.support.mosquitto import free_port

FLEET_CONTAINERS = (FLEET_SERVICE, MIGRATION_SERVICE, "broker-config")
SECRET_NAMES = re.compile(r"PASSPHRASE|PASSWORD|TOKEN|DATABASE_URL")
REFERENCE = re.compile(r"\$\{[A-Z_]+:\?[^}]+\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def _instructions(name: str) -> list[str]:
    """The Containerfile's instructions ``name``, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", CONTAINERFILE.read_text())
    return [
        line.split(None, 1)[1]
        for line in text.splitlines()
        if line.split(None, 1)[:1] == [name] and len(line.split(None, 1)) == 2
    ]


def test_the_containerfile_passes_hadolint() -> None:
    result = run_tool(tool("hadolint"), "--no-color", str(CONTAINERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_really_lints_a_containerfile_running_as_root(tmp_path: Path) -> None:
    bad = tmp_path / "Containerfile"
    bad.write_text("FROM python:latest\nRUN pip install edgefleet\nUSER root\n")
    result = run_tool(tool("hadolint"), "--no-color", str(bad))
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3002"):  # :latest, unpinned pip, last user root
        assert rule in result.stdout


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    users = _instructions("USER")
    assert users, "the Containerfile sets no USER: the image would run as root"
    # ARG FLEET_UID=10001, USER ${FLEET_UID}:${FLEET_UID}: numeric, for runAsNonRoot.
    assert users[-1] == "${FLEET_UID}:${FLEET_UID}"
    assert f"FLEET_UID={FLEET_UID}" in _instructions("ARG")


def test_the_image_checks_healthz_and_runs_the_compose_fleet_command(
    compose: dict[str, Any],
) -> None:
    (healthcheck,) = _instructions("HEALTHCHECK")
    assert "/healthz" in healthcheck
    (cmd,) = _instructions("CMD")
    assert json.loads(cmd) == compose["services"][FLEET_SERVICE]["command"]


def test_the_compose_file_matches_the_compose_spec_schema() -> None:
    result = run_tool(
        tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_spec_check_rejects_a_misspelt_key(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  fleet:\n    image: edgefleet\n    read_onyl: true\n")
    result = run_tool(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad))
    assert result.returncode != 0
    assert "read_onyl" in result.stdout


def test_two_replicas_start_only_after_the_migration_completed(compose: dict[str, Any]) -> None:
    services = compose["services"]
    fleet, migrate = services[FLEET_SERVICE], services[MIGRATION_SERVICE]
    assert fleet["deploy"]["replicas"] == 2
    assert fleet["depends_on"][MIGRATION_SERVICE]["condition"] == "service_completed_successfully"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["restart"] == "no"
    assert migrate["command"] == ["edgefleet", "fleet", "migrate", "upgrade"]
    # The broker's files are written from the migrated database, before the broker runs.
    broker_config = services["broker-config"]
    assert broker_config["depends_on"][MIGRATION_SERVICE]["condition"] == (
        "service_completed_successfully"
    )
    assert services["mosquitto"]["depends_on"]["broker-config"]["condition"] == (
        "service_completed_successfully"
    )


@pytest.mark.parametrize("service", FLEET_CONTAINERS)
def test_fleet_containers_are_read_only_non_root_and_unprivileged(
    compose: dict[str, Any], service: str
) -> None:
    spec = compose["services"][service]
    assert spec["read_only"] is True
    assert spec["user"] == f"{FLEET_UID}:{FLEET_UID}"
    assert spec["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in spec["security_opt"]
    assert "/tmp" in spec["tmpfs"]


def test_the_replicas_are_health_checked_on_healthz(compose: dict[str, Any]) -> None:
    check = compose["services"][FLEET_SERVICE]["healthcheck"]
    assert check["test"][0] == "CMD"
    assert "/healthz" in " ".join(check["test"])
    assert compose["services"]["postgres"]["healthcheck"]["test"][1] == "pg_isready"


def test_the_broker_runs_on_the_files_broker_config_writes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    argv = services["broker-config"]["command"]
    out = argv[argv.index("--out") + 1]
    assert f"{out}/mosquitto.conf" in " ".join(services["mosquitto"]["command"])
    assert services["mosquitto"]["user"] == f"{FLEET_UID}:{FLEET_UID}"
    assert services["mosquitto"]["read_only"] is True
    for name in ("broker-config", "mosquitto", FLEET_SERVICE):
        assert any(v.split(":")[1] == out for v in services[name]["volumes"]), name
    # The fleet connects as the identity broker-config made, to the fleet listener.
    env = services[FLEET_SERVICE]["environment"]
    assert env["EDGEFLEET_FLEET_BROKER_CERT_FILE"] == f"{out}/fleet.pem"
    assert env["EDGEFLEET_FLEET_BROKER_URL"] == "mqtts://mosquitto:8884"
    assert "mosquitto" in argv[argv.index("--server-name") + 1 :]


def test_secrets_are_passed_by_reference_never_written_in(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        for key, value in (spec.get("environment") or {}).items():
            if SECRET_NAMES.search(key) and key != "POSTGRES_DB":
                assert REFERENCE.search(str(value)), f"{name}: {key} holds a literal value"


def test_every_fleet_command_parses_with_the_real_cli(compose: dict[str, Any]) -> None:
    parser = build_parser()
    for service in FLEET_CONTAINERS:
        argv = compose["services"][service]["command"]
        assert argv[0] == "edgefleet"
        args = parser.parse_args([interpolate(a, {}) for a in argv[1:]])
        assert callable(args.handler), service


def test_every_fleet_variable_is_a_setting_the_fleet_reads(compose: dict[str, Any]) -> None:
    for service in FLEET_CONTAINERS:
        names = set(compose["services"][service]["environment"])
        assert not unknown_env_names(names), service


def test_the_replica_environment_is_valid_fleet_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = fleet_replica_run(
        database_url="postgresql://edgefleet@127.0.0.1:5432/edgefleet",
        broker_url="mqtts://127.0.0.1:8884",
        mounts={
            "/var/lib/edgefleet": tmp_path / "data",
            "/var/lib/edgefleet-keys": tmp_path / "keys",
            "/etc/edgefleet/broker": tmp_path / "broker",
        },
        variables={
            "EDGEFLEET_KEY_PASSPHRASE": "a-passphrase-for-tests",
            "EDGEFLEET_ADMIN_TOKEN": "admin-token-for-tests-0123456789",
        },
        api_port=0,
    )
    for key in [k for k in os.environ if k.startswith("EDGEFLEET_")]:
        monkeypatch.delenv(key)
    for key, value in run.env.items():
        monkeypatch.setenv(key, value)
    settings = FleetSettings()
    assert settings.shared_subscription is True
    assert settings.subscription_group == "edgefleet"
    assert settings.require_device_identity is True
    assert settings.data_dir == tmp_path / "data"
    assert settings.broker_cert_file == tmp_path / "broker" / "fleet.pem"
    assert settings.api_host == "127.0.0.1"


def test_the_build_context_keeps_everything_the_image_copies() -> None:
    ignore = (CONTAINER_DIR / "Containerfile.dockerignore").read_text().splitlines()
    kept = {line[1:] for line in ignore if line.startswith("!")}
    assert "**" in ignore  # everything else stays out of the context
    sources = {src for line in _instructions("COPY") for src in line.split()[:-1]}
    assert sources == kept


def test_the_broker_container_reloads_its_files_and_stops_at_once_on_sigterm(
    tmp_path: Path,
) -> None:
    """The compose file's own Mosquitto command, run here on a real Mosquitto (its config
    is broker-config's in compose; a plain loopback one here): it sends the broker a
    SIGHUP at every interval, and on SIGTERM the broker and the loop end at once."""
    port, log = free_port(), tmp_path / "mosquitto.log"
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    (broker_dir / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest stderr\nlog_type all\n"
    )
    run = service_run(
        "mosquitto",
        mounts={"/etc/edgefleet/broker": broker_dir},
        variables={"EDGEFLEET_BROKER_RELOAD_S": "0.2"},
    )
    env = run.process_env() | {"PATH": f"{Path(MOSQUITTO).parent}:{os.environ['PATH']}"}
    with log.open("wb") as stderr:
        process = subprocess.Popen(run.argv, env=env, stderr=stderr, start_new_session=True)
    try:
        wait_for_port(port)
        deadline = time.monotonic() + 10
        while log.read_text().count("Reloading config") < 2:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        assert time.monotonic() - started < 2
        assert "terminating" in log.read_text()  # the broker itself got the SIGTERM
    finally:
        # The loop's last sleep, and anything left if an assertion failed.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
