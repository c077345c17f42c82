"""``edgefleet fleet token|user|role|whoami`` against a real running fleet (uvicorn, a real
broker, SQLite and PostgreSQL): tokens shown once and revoked at once, users disabled,
and refusals printed as one line with the server's message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from edgefleet.fleet.api.auth import prefix_of
from edgefleet.fleet.service import FleetService
from edgefleet.shared.cli import main
from tests.support.fleet_fixtures import ADMIN_TOKEN, MakeFleet

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def running(make_service: MakeFleet) -> FleetService:
    return make_service(admin_token=ADMIN_TOKEN)


@pytest.fixture
def run(running: FleetService, capsys: pytest.CaptureFixture[str]) -> Run:
    """``edgefleet fleet ARGS`` in this process; returns (exit code, stdout, stderr)."""

    def run(*args: str, token: str = ADMIN_TOKEN) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["fleet", *args, "--url", running.base_url, "--token", token])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_a_token_made_by_the_cli_works_once_shown_and_stops_when_revoked(run: Run) -> None:
    code, out, err = run("token", "create", "--label", "laptop", "--expires-in-days", "7")
    assert code == 0, err
    token, note = out.splitlines()
    assert token.startswith("eft_")
    assert "shown only now" in note
    prefix = prefix_of(token)
    code, out, _ = run("whoami", token=token)
    assert code == 0
    assert out.startswith(f"user admin (token {prefix})")
    code, out, _ = run("token", "list")
    assert prefix in out
    assert "laptop" in out
    assert token not in out
    code, out, _ = run("token", "list", "--json")
    listed = json.loads(out)["items"]
    assert {t["prefix"] for t in listed} >= {prefix}
    assert token not in out
    code, out, err = run("token", "revoke", prefix)
    assert code == 0, err
    assert f"revoked {prefix}" in out
    code, _, err = run("whoami", token=token)
    assert code == 2
    assert err.strip() == f"edgefleet: error: 401: token {prefix} was revoked (unauthenticated)"


def test_users_are_created_granted_disabled_and_enabled(run: Run) -> None:
    code, out, err = run(
        "user", "create", "ci", "--service", "--grant", "operator;device_tags=site-a"
    )
    assert code == 0, err
    assert "ci (service" in out
    assert "operator;device_tags=site-a" in out
    code, out, err = run("token", "create", "--label", "pipeline", "--owner", "ci")
    assert code == 0, err
    ci_token = out.splitlines()[0]
    code, out, _ = run("whoami", token=ci_token)
    assert out.startswith("service ci")
    assert "rollout:create" in out
    code, out, _ = run("user", "grant", "ci", "--grant", "viewer")
    assert "ci (service" in out
    assert ": viewer" in out
    code, out, _ = run("user", "disable", "ci")
    assert "disabled" in out
    code, _, err = run("whoami", token=ci_token)
    assert code == 2
    assert "disabled" in err
    run("user", "enable", "ci")
    assert run("whoami", token=ci_token)[0] == 0
    code, out, _ = run("user", "list")
    assert out.splitlines()[0].split() == ["NAME", "KIND", "GRANTS", "STATE"]
    assert {line.split()[0] for line in out.splitlines()[1:]} == {"admin", "ci"}


def test_refusals_are_one_line_with_the_servers_message(run: Run) -> None:
    code, _, err = run("user", "create", "p", "--grant", "pilot")
    assert code == 2
    assert err.startswith("edgefleet: error: 422: unknown role 'pilot'")
    assert len(err.strip().splitlines()) == 1
    run("user", "create", "vera", "--grant", "viewer")
    code, out, _ = run("token", "create", "--label", "v", "--owner", "vera")
    viewer = out.splitlines()[0]
    code, _, err = run("user", "list", token=viewer)
    assert code == 2
    assert "403: " in err
    assert "lacks permission user:manage" in err
    code, _, err = run(
        "token", "create", "--label", "x", "--permission", "rollout:create", token=viewer
    )
    assert "does not hold rollout:create" in err
    code, _, err = run("user", "disable", "admin")
    assert "409: " in err
    assert "user:manage" in err
    code, _, err = run("user", "create", "x", "--grant", "viewer;sites=a")
    assert "cannot read 'sites=a'" in err


def test_roles_round_trip(run: Run) -> None:
    code, out, err = run(
        "role", "create", "ci", "--permission", "model:upload", "--permission", "model:read"
    )
    assert code == 0, err
    assert out.strip() == "ci: model:read, model:upload"
    code, out, _ = run("role", "list")
    assert "ci" in out.split()
    assert "built-in" in out
    run("role", "update", "ci", "--permission", "model:read")
    code, out, _ = run("role", "list", "--json")
    (ci,) = [r for r in json.loads(out)["items"] if r["name"] == "ci"]
    assert ci["permissions"] == ["model:read"]
    assert run("role", "delete", "ci")[1].strip() == "deleted role ci"


def test_the_console_script_reads_url_and_token_from_the_environment(running: FleetService) -> None:
    env = {**os.environ, "EDGEFLEET_URL": running.base_url, "EDGEFLEET_TOKEN": ADMIN_TOKEN}
    done = subprocess.run(
        [sys.executable, "-m", "edgefleet.shared.cli", "fleet", "whoami", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == "admin"
    env.pop("EDGEFLEET_TOKEN")
    done = subprocess.run(
        [sys.executable, "-m", "edgefleet.shared.cli", "fleet", "whoami"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "no API token" in done.stderr
