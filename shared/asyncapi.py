"""An AsyncAPI 2.6 document generated from the wire models, for third-party subscribers.

Generated, never hand-written, so it cannot drift from `edgefleet.shared.messages` and
`edgefleet.shared.topics`. ``edgefleet protocol asyncapi`` prints it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from edgefleet.shared import __version__
from edgefleet.shared.messages import CHANNEL_MODELS, AlertMessage, WireModel
from edgefleet.shared.topics import ALERTS_TOPIC, PREFIX, Channel

_CHANNEL_DOC: dict[Channel, tuple[str, int, bool, str]] = {
    # channel: (direction, qos, retained, description)
    Channel.STATE: ("publish", 1, True, "birth; the last will sets online=false"),
    Channel.TELEMETRY: ("publish", 1, False, "periodic health"),
    Channel.DRIFT: (
        "publish",
        1,
        False,
        "one drift window of mergeable sketches; 'sketch' is compact (v 2: bin counts "
        "packed as url-safe base64 of LEB128 varints, 2c for a count c and 2k+1 for k empty "
        "bins, matrices as one such string with the varint 1 between rows; numeric features "
        "as [runs, mean, m2, min, max, missing, infinite]; a SHA-256 profile_id as 'h', its "
        "32 bytes in base64) from current agents, version 1 from older ones, both read by "
        "the fleet",
    ),
    Channel.EVENTS: ("publish", 1, False, "deployment progress"),
    Channel.DESIRED: ("subscribe", 1, True, "the signed desired state for this device"),
    Channel.STORED: (
        "subscribe",
        1,
        True,
        "seq ranges of this device's messages the fleet has stored (end-to-end delivery)",
    ),
}


def _schema(model: type[WireModel]) -> dict[str, Any]:
    return model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI document as a dict (device-side view: publish = device sends)."""
    channels: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for channel, model in CHANNEL_MODELS.items():
        direction, qos, retained, description = _CHANNEL_DOC[channel]
        schema = _schema(model)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        channels[f"{PREFIX}/devices/{{device_id}}/{channel.value}"] = {
            "description": f"{description} (QoS {qos}, {'' if retained else 'not '}retained)",
            "parameters": {"device_id": {"schema": {"type": "string"}}},
            direction: {
                "bindings": {"mqtt": {"qos": qos, "retain": retained}},
                "message": {"payload": {"$ref": f"#/components/schemas/{model.__name__}"}},
            },
        }
    alert = _schema(AlertMessage)
    schemas.update(alert.pop("$defs", {}))
    schemas[AlertMessage.__name__] = alert
    channels[ALERTS_TOPIC] = {
        "description": "drift, health and rollout alerts for third-party subscribers (QoS 1)",
        "subscribe": {
            "bindings": {"mqtt": {"qos": 1, "retain": False}},
            "message": {"payload": {"$ref": f"#/components/schemas/{AlertMessage.__name__}"}},
        },
    }
    return {
        "asyncapi": "2.6.0",
        "info": {
            "title": "edgefleet MQTT protocol",
            "version": __version__,
            "description": "Every payload is JSON with a 'schema' field; readers ignore "
            "unknown fields; device messages carry a per-device, growing 'seq'.",
        },
        "channels": channels,
        "components": {"schemas": schemas},
    }


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``edgefleet protocol asyncapi``."""
    parser = subparsers.add_parser("protocol", help="print the MQTT protocol description")
    commands = parser.add_subparsers(title="protocol commands", metavar="COMMAND")
    asyncapi = commands.add_parser("asyncapi", help="print the AsyncAPI document as JSON")
    asyncapi.set_defaults(handler=_print_asyncapi)


def _print_asyncapi(_args: argparse.Namespace) -> int:
    print(json.dumps(asyncapi_document(), indent=2, sort_keys=True))
    return 0
