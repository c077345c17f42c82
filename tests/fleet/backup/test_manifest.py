"""The backup manifest: a tampered one cannot point a restore outside its target."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from pydantic import ValidationError

from edgefleet.fleet.backup.manifest import (
    BackupManifest,
    FileEntry,
    Part,
    is_transient,
    nested_parts,
)

DIGEST = "a" * 64


def manifest(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schema": "edgefleet/v1/backup",
        "created_at": datetime(2026, 12, 4, tzinfo=UTC).isoformat(),
        "edgefleet_version": "0.1.0",
        "database": None,
        "parts": [
            {
                "part": "data",
                "source": "/var/lib/fleet",
                "files": [
                    {"path": "audit-keys/key.json", "size": 10, "sha256": DIGEST, "mode": 384}
                ],
            }
        ],
    }
    return body | changes


def test_a_valid_manifest_reads_back() -> None:
    read = BackupManifest.model_validate(manifest())
    assert read.part(Part.DATA) is not None
    assert read.part(Part.KEYS) is None


@pytest.mark.parametrize(
    "path",
    ["../etc/passwd", "/etc/passwd", "a/../../b", "a\\..\\b", "a/./b", "a//b", "", "a\0b"],
)
def test_a_file_path_leaving_its_part_is_refused(path: str) -> None:
    with pytest.raises(ValidationError):
        FileEntry(path=path, size=1, sha256=DIGEST, mode=0o600)


@pytest.mark.parametrize(
    "entry",
    [
        {"size": -1},
        {"size": 1 << 60},
        {"sha256": "not-a-digest"},
        {"mode": 0o17777},
        {"extra": 1},
    ],
)
def test_absurd_file_entries_are_refused(entry: dict[str, Any]) -> None:
    values = {"path": "a", "size": 1, "sha256": DIGEST, "mode": 0o600} | entry
    with pytest.raises(ValidationError):
        FileEntry.model_validate(values)


def test_a_part_twice_or_another_format_is_refused() -> None:
    twice = manifest()
    twice["parts"] = twice["parts"] * 2
    with pytest.raises(ValidationError, match="twice"):
        BackupManifest.model_validate(twice)
    with pytest.raises(ValidationError):
        BackupManifest.model_validate(manifest(schema="edgefleet/v2/backup"))


def test_nested_parts_are_copied_once_as_their_own_part() -> None:
    roots = {
        Part.DATA: Path("/srv/fleet"),
        Part.KEYS: Path("/srv/fleet/keys"),
        Part.REPOSITORY: Path("/srv/fleet/keys/repository"),
        Part.MODELS: Path("/srv/models"),
    }
    nested = nested_parts(roots)
    assert sorted(nested[Part.DATA]) == [
        Path("/srv/fleet/keys"),
        Path("/srv/fleet/keys/repository"),
    ]
    assert nested[Part.KEYS] == [Path("/srv/fleet/keys/repository")]
    assert nested[Part.REPOSITORY] == []
    assert nested[Part.MODELS] == []


@pytest.mark.parametrize(
    ("path", "transient"),
    [
        (".manifest.json.0a1b2c.tmp", True),
        ("models/.incoming/upload-1", True),
        ("models/abc.efpkg", False),
        ("audit-checkpoints.jsonl", False),
        ("device-ca/ca.pem", False),
    ],
)
def test_temp_files_and_spooled_uploads_are_not_state(path: str, transient: bool) -> None:
    assert is_transient(PurePosixPath(path)) is transient
