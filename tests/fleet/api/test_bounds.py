"""Every number, string and list a client can send the REST API has a documented bound.

Read from the OpenAPI document: each parameter and each field of each request body,
nested models and list items included. A number needs a minimum and a maximum, a string
a maximum length (or an enum, pattern or format), a list a maximum number of items, and
an object with free keys a maximum number of properties.
"""

from __future__ import annotations

from typing import Any

from edgefleet.fleet.api.app import create_app
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.engine import make_engine

Schema = dict[str, Any]


def _unbounded(document: Schema) -> list[str]:
    components: dict[str, Schema] = document.get("components", {}).get("schemas", {})
    found: list[str] = []

    def walk(schema: Schema, where: str, seen: frozenset[str]) -> None:
        ref = schema.get("$ref")
        if ref is not None:
            name = ref.rsplit("/", 1)[-1]
            if name not in seen:
                walk(components[name], where, seen | {name})
            return
        for key in ("anyOf", "oneOf", "allOf"):
            for option in schema.get(key, []):
                walk(option, where, seen)
        kind = schema.get("type")
        if "const" in schema or "enum" in schema:
            return
        if kind in ("integer", "number"):
            low = "minimum" in schema or "exclusiveMinimum" in schema
            high = "maximum" in schema or "exclusiveMaximum" in schema
            if not (low and high):
                found.append(f"{where}: {kind} without a minimum and a maximum")
        elif kind == "string":
            if not {"maxLength", "pattern", "format"} & schema.keys():
                found.append(f"{where}: string without a maximum length")
        elif kind == "array":
            if "maxItems" not in schema:
                found.append(f"{where}: list without a maximum number of items")
            walk(schema.get("items", {}), f"{where}[]", seen)
        for name, field in schema.get("properties", {}).items():
            walk(field, f"{where}.{name}", seen)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            if "maxProperties" not in schema:
                found.append(f"{where}: object without a maximum number of keys")
            walk(extra, f"{where}.*", seen)

    for path, item in document["paths"].items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []):
                where = f"{method.upper()} {path} {parameter['in']} {parameter['name']}"
                walk(parameter["schema"], where, frozenset())
            for media, content in operation.get("requestBody", {}).get("content", {}).items():
                if media == "application/json":
                    walk(content["schema"], f"{method.upper()} {path} body", frozenset())
    return found


def test_every_request_field_is_bounded() -> None:
    app = create_app(FleetSettings(), engine=make_engine("sqlite://"))
    assert _unbounded(app.openapi()) == []


def test_the_check_finds_an_unbounded_field() -> None:
    document: Schema = {
        "paths": {
            "/x": {
                "post": {
                    "parameters": [{"in": "query", "name": "n", "schema": {"type": "integer"}}],
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"tags": {"type": "array", "maxItems": 3}},
                                    "additionalProperties": {"type": "string", "maxLength": 9},
                                }
                            }
                        }
                    },
                }
            }
        }
    }
    assert _unbounded(document) == [
        "POST /x query n: integer without a minimum and a maximum",
        "POST /x body: object without a maximum number of keys",
    ]
