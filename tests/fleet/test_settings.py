"""FleetSettings: defaults, environment, and refusing settings that would be unsafe."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.engine import normalise_url


def test_the_database_defaults_to_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    settings = FleetSettings(data_dir=tmp_path)
    assert settings.database_url == f"sqlite:///{tmp_path / 'fleet.db'}"


def test_settings_come_from_prefixed_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_FLEET_API_PORT", "9100")
    monkeypatch.setenv("EDGEFLEET_FLEET_BROKER_URL", "mqtts://broker.example:8884")
    monkeypatch.setenv("EDGEFLEET_FLEET_SHARED_SUBSCRIPTION", "false")
    settings = FleetSettings()
    assert (settings.api_port, settings.broker_host, settings.broker_port, settings.broker_tls) == (
        9100,
        "broker.example",
        8884,
        True,
    )
    assert settings.shared_subscription is False


@pytest.mark.parametrize("token", ["changeme", "CHANGEME", "secret", "short-token"])
def test_placeholder_or_short_admin_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValidationError, match="admin_token"):
        FleetSettings(admin_token=token)  # type: ignore[arg-type]


def test_a_broker_url_that_is_not_mqtt_is_refused() -> None:
    with pytest.raises(ValidationError, match="mqtt://host:port"):
        FleetSettings(broker_url="http://127.0.0.1:1883")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_postgres_urls_use_psycopg_3(url: str, expected: str) -> None:
    assert normalise_url(url) == expected


def test_an_unsupported_database_is_refused() -> None:
    with pytest.raises(ValueError, match="mysql"):
        normalise_url("mysql://u@h/db")
