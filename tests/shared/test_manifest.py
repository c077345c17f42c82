"""The manifest schema: safe names, validated versions, readers that ignore new fields."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from edgefleet.shared.manifest import ModelManifest

GOOD: dict[str, Any] = {
    "name": "wine",
    "version": "1.4.0-rc.1",
    "runtime": "onnx",
    "model_file": "model.onnx",
    "inputs": [{"name": "input", "dtype": "float32", "shape": [None, 13]}],
    "outputs": [{"name": "label", "dtype": "int64", "shape": [None]}],
    "sha256": "a" * 64,
    "size_bytes": 858,
    "created_at": datetime(2024, 5, 1, tzinfo=UTC).isoformat(),
}


def test_manifest_round_trips_through_json() -> None:
    manifest = ModelManifest.model_validate(GOOD)
    again = ModelManifest.model_validate_json(manifest.model_dump_json())
    assert again == manifest
    assert str(again.semver) == "1.4.0-rc.1"
    assert again.probation.max_error_rate == 0.01
    assert again.member_names == ["manifest.json", "model.onnx"]


def test_unknown_fields_from_a_newer_packager_are_ignored() -> None:
    manifest = ModelManifest.model_validate(GOOD | {"signed_by": "someone", "future": [1, 2]})
    assert manifest.name == "wine"


@pytest.mark.parametrize(
    ("field", "value", "complaint"),
    [
        ("name", "../wine", "name"),
        ("name", "wine/evil", "name"),
        ("version", "1.4", "not a semantic version"),
        ("runtime", "tensorflow", "runtime"),
        ("model_file", "../model.onnx", "plain name"),
        ("model_file", "manifest.json", "member names must differ"),
        ("sha256", "XYZ", "sha256"),
        ("min_agent_version", "latest", "not a semantic version"),
        ("feature_names", ["a", "a"], "unique"),
    ],
)
def test_invalid_manifest_fields_are_rejected(field: str, value: object, complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        ModelManifest.model_validate(GOOD | {field: value})


def test_manifest_is_frozen() -> None:
    manifest = ModelManifest.model_validate(GOOD)
    with pytest.raises(ValidationError):
        manifest.version = "9.9.9"  # type: ignore[misc]
