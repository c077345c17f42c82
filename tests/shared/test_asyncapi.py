"""The generated AsyncAPI document covers every topic with a resolvable schema."""

from __future__ import annotations

import json

from edgefleet.shared.asyncapi import asyncapi_document
from edgefleet.shared.cli import main
from edgefleet.shared.topics import Channel


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_channel_is_documented_with_its_qos_and_retain() -> None:
    doc = asyncapi_document()
    for channel in Channel:
        entry = doc["channels"][f"edgefleet/v1/devices/{{device_id}}/{channel.value}"]
        operation = entry.get("publish") or entry["subscribe"]
        assert operation["bindings"]["mqtt"]["qos"] == 1
    assert doc["channels"]["edgefleet/v1/devices/{device_id}/state"]["publish"]["bindings"]["mqtt"][
        "retain"
    ]
    assert "edgefleet/v1/fleet/alerts" in doc["channels"]


def test_every_schema_reference_resolves() -> None:
    doc = asyncapi_document()
    schemas = doc["components"]["schemas"]
    refs = _refs(doc)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in schemas, ref


def test_the_schema_field_is_named_schema_on_the_wire() -> None:
    schemas = asyncapi_document()["components"]["schemas"]
    assert "schema" in schemas["TelemetryMessage"]["properties"]
    assert "schema_" not in schemas["TelemetryMessage"]["properties"]


def test_cli_prints_the_document(capsys) -> None:
    assert main(["protocol", "asyncapi"]) == 0
    assert json.loads(capsys.readouterr().out)["asyncapi"] == "2.6.0"


def test_the_document_carries_the_wire_size_limits() -> None:
    schemas = asyncapi_document()["components"]["schemas"]
    state = schemas["StateMessage"]["properties"]
    assert state["hardware"]["maxLength"] == 100
    assert state["tags"]["maxItems"] == 64
    assert state["tags"]["items"]["maxLength"] == 100
    alert = schemas["AlertMessage"]["properties"]
    assert alert["message"]["maxLength"] == 2000
    assert alert["evidence"]["maxProperties"] == 256


def test_the_drift_sketch_is_documented_in_both_forms() -> None:
    doc = asyncapi_document()
    schemas = doc["components"]["schemas"]
    sketch = schemas["DriftMessage"]["properties"]["sketch"]
    forms = {ref["$ref"].rsplit("/", 1)[1] for ref in sketch["anyOf"] if "$ref" in ref}
    assert forms == {"CompactSketch", "WindowSketch"}
    compact = schemas["CompactSketch"]
    assert compact["properties"]["v"]["const"] == 2
    assert compact["required"] == ["v", "n", "i"]
    assert compact["oneOf"] == [{"required": ["p"]}, {"required": ["h"]}]
    assert compact["properties"]["h"]["pattern"] == "^[A-Za-z0-9_-]{43}$"
    numeric = schemas["CompactNumeric"]
    assert numeric["type"] == "array"
    assert (numeric["minItems"], numeric["maxItems"]) == (5, 7)
    runs = numeric["prefixItems"][0]
    assert runs["type"] == "string"  # packed: base64 of varints
    assert runs["pattern"] == "^[A-Za-z0-9_-]*$"
    assert runs["maxLength"] == 66_667  # 10,000 bins of at most 5 bytes, in base64
    assert "LEB128" in runs["description"]
    matrix = schemas["CompactClassification"]["properties"]["m"]
    assert matrix["type"] == "string"
    assert "between rows" in matrix["description"]
    assert "compact" in doc["channels"]["edgefleet/v1/devices/{device_id}/drift"]["description"]
