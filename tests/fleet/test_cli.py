"""``edgefleet fleet serve``'s options become settings; a bad one is one clear error."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from edgefleet.fleet.cli import register, serve_settings
from edgefleet.shared.cli import CLIError


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edgefleet")
    register(parser.add_subparsers())
    return parser.parse_args(["fleet", "serve", *argv])


def test_drift_evaluation_is_set_from_the_command_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``fleet serve`` had no options for them: only undocumented environment variables."""
    monkeypatch.setenv("EDGEFLEET_FLEET_DRIFT_COOLDOWN_S", "120")
    argv = ["--data-dir", str(tmp_path), "--drift-interval-s", "5", "--drift-lookback-s", "900"]
    settings = serve_settings(_parse(argv))
    assert (settings.drift_interval_s, settings.drift_lookback_s) == (5.0, 900.0)
    assert settings.drift_cooldown_s == 120.0  # what the options leave, the environment gives
    defaults = serve_settings(_parse(["--data-dir", str(tmp_path)]))
    assert defaults.drift_lookback_s == 3600.0


def test_an_out_of_bounds_drift_setting_names_itself(tmp_path: Path) -> None:
    with pytest.raises(CLIError, match="drift_lookback_s"):
        serve_settings(_parse(["--data-dir", str(tmp_path), "--drift-lookback-s", "0"]))
